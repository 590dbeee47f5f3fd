"""Loading the config: defaults, presets, files, overrides, unknown keys, renamed keys, safe YAML."""

import pytest

from osum_core.config import CONFIG_DIR, ConfigError, fit_config, load_config


def test_defaults_load_and_overrides_apply():
    cfg = fit_config(overrides=["trainer.max_steps=20", "optim.lr=5e-4", "data.train=[a.jsonl,b.jsonl]"])
    assert cfg["trainer"]["max_steps"] == 20
    assert cfg["optim"]["lr"] == 5e-4
    assert cfg["data"]["train"] == ["a.jsonl", "b.jsonl"]


def test_the_config_is_plain_dicts_and_lists():
    cfg = fit_config()

    def plain(node):
        if isinstance(node, dict):
            return all(isinstance(k, str) and plain(v) for k, v in node.items())
        if isinstance(node, list):
            return all(plain(v) for v in node)
        return node is None or isinstance(node, str | int | float | bool)

    assert type(cfg) is dict and plain(cfg)


def test_without_a_preset_fit_trains_the_demo_and_a_preset_replaces_it():
    demo = fit_config()
    assert demo["model"]["encoder"]["config"]["d_model"] == 192 and demo["model"]["ctc_compression"] is True
    osum = fit_config(presets=["osum-7b"])
    assert osum["model"]["encoder"]["config"] == {} and osum["model"]["ctc_compression"] is False
    assert osum["loss"]["ctc_weight"] == 0.0 and osum["model"]["llm"]["path"] == "Qwen/Qwen2-7B"
    assert load_config()["model"]["ctc_compression"] is False  # the shared defaults have no demo shaping


def test_unknown_keys_are_errors_from_the_command_line_and_from_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate' in command-line overrides"):
        fit_config(overrides=["optim.learning_rate=1"])
    user = tmp_path / "mine.yaml"
    user.write_text("data:\n  n_mel: 128\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'data.n_mel' in {user}"):
        load_config("fit", files=[user])
    with pytest.raises(ConfigError, match="must be key=value"):
        fit_config(overrides=["trainer.max_steps"])
    with pytest.raises(ConfigError, match="no preset 'tiny'"):
        fit_config(presets=["tiny"])


def test_open_sections_take_new_keys():
    cfg = fit_config(overrides=["model.llm.config.rope_theta=10000", "tasks.asr.loss_weight=2"])
    assert cfg["model"]["llm"]["config"]["rope_theta"] == 10000
    assert cfg["tasks"]["asr"]["loss_weight"] == 2


def test_user_file_merges_over_defaults(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("optim:\n  lr: 0.01\n")
    cfg = load_config("fit", files=[user], overrides=["optim.warmup_steps=3"])
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["warmup_steps"] == 3 and cfg["optim"]["schedule"] == "cosine"


def test_moved_keys_keep_working_with_a_warning(tmp_path):
    old_run = tmp_path / "config.yaml"  # as osum wrote run configs before the demo options moved
    old_run.write_text("data:\n  demo:\n    event_positions: [over]\n    content_cues: 0.5\n")
    with pytest.warns(FutureWarning, match="'data.demo.event_positions' is now 'data.demo.options.event_positions'"):
        cfg = load_config("fit", [old_run], ["data.demo.content_cues=0.25"])
    assert cfg["data"]["demo"]["options"] == {"event_positions": ["over"], "content_cues": 0.25}


def test_yaml_is_loaded_safely_and_interpolations_stay_text(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("seed: !!python/object/apply:os.system ['echo pwned > " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("fit", [evil])
    assert not (tmp_path / "pwned").exists()
    cfg = fit_config(overrides=["out=${oc.env:HOME}"])
    assert cfg["out"] == "${oc.env:HOME}"


def test_every_preset_and_stage_is_shipped_with_the_configs():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
    assert {"fit.yaml", "presets/demo.yaml", "presets/osum-7b.yaml", "stages/adapter.yaml"} <= names


def test_the_tasks_section_holds_only_values_that_differ_from_the_tasks_own(registry):
    from osum_core.config.load import default_config

    section = default_config("fit")["tasks"]
    for name, settings in section.items():
        task = registry.tasks[name]
        own = {"loss_weight": task.loss_weight, "label_loss_weight": task.label_loss_weight,
               "sampling_weight": task.sampling_weight, **task.options}
        for key, value in settings.items():
            assert value != own[key], f"configs/fit.yaml tasks.{name}.{key}={value!r} repeats the task's own default"


@pytest.mark.parametrize(("key", "closest"), [("max_step", "max_steps"), ("precison", "precision"),
                                              ("acumulate_grad_batches", "accumulate_grad_batches")])
def test_a_misspelt_trainer_key_names_the_closest_trainer_argument(key, closest):
    from osum_core.config import trainer_arguments

    with pytest.raises(ConfigError) as error:
        trainer_arguments({"max_steps": 5, key: 1})
    assert str(error.value) == (f"unknown config key 'trainer.{key}': not an argument of lightning.Trainer; "
                                f"did you mean 'trainer.{closest}'?")


def test_a_trainer_key_osum_sets_itself_says_so():
    from osum_core.config import trainer_arguments

    with pytest.raises(ConfigError, match="'trainer.logger': set by osum itself"):
        trainer_arguments({"logger": False})
    with pytest.raises(ConfigError, match=r"^unknown config key 'trainer.nothing_like_it': not an argument of "
                                          r"lightning.Trainer$"):
        trainer_arguments({"nothing_like_it": 1})

"""Bad configs are refused with a message naming the key and where it came from, before anything is built:
unknown keys (with the closest known one), values of the wrong kind, paths that do not exist, settings
that contradict each other, YAML that would build Python objects, interpolations that would run."""

import copy
import itertools
import re
from pathlib import Path

import pytest

from osum_core.cli.fit_checks import check_fit_config
from osum_core.config import CONFIG_DIR, ConfigError, fit_config, load_config
from osum_core.config.load import OPEN_SECTIONS, VALUE_TYPES, default_config

OVERRIDES = "command-line overrides"


def problems_of(*overrides: str, **kwargs) -> str:
    """The message check_fit_config raises for the demo preset (or `presets`) with `overrides`."""
    with pytest.raises(ConfigError) as raised:
        check_fit_config(fit_config(overrides=list(overrides), **kwargs))
    return str(raised.value)


def passes(*overrides: str, **kwargs) -> dict:
    cfg = fit_config(overrides=list(overrides), **kwargs)
    check_fit_config(cfg)
    return cfg


# -- unknown keys -----------------------------------------------------------------------------------------

def test_unknown_key_in_overrides_names_the_closest_known_key():
    with pytest.raises(ConfigError, match=re.escape(
            f"unknown config key 'data.max_frame' in {OVERRIDES}; did you mean 'data.max_frames'?")):
        fit_config(overrides=["data.max_frame=100"])


def test_unknown_key_in_a_file_names_the_file_and_the_closest_key(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("optim:\n  warmup_step: 3\n")
    with pytest.raises(ConfigError, match=re.escape(
            f"unknown config key 'optim.warmup_step' in {user}; did you mean 'optim.warmup_steps'?")):
        fit_config(files=[user])


def test_a_key_in_the_wrong_section_is_pointed_to_its_section():
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'max_steps' in command-line overrides; "
                                                    "did you mean 'trainer.max_steps'?")):
        fit_config(overrides=["max_steps=3"])


def test_a_misspelt_section_is_named_with_the_section_meant():
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'optm' in command-line overrides; "
                                                    "did you mean 'optim'?")):
        fit_config(overrides=["optm.lr=1"])


def test_a_dotted_name_in_a_file_is_told_to_nest(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("trainer.max_steps: 5\n")
    with pytest.raises(ConfigError, match="unknown config key 'trainer.max_steps' in .*nest the keys"):
        fit_config(files=[user])


def test_an_unknown_key_with_nothing_close_gets_no_suggestion():
    with pytest.raises(ConfigError) as raised:
        fit_config(overrides=["data.zzzz=1"])
    assert str(raised.value) == f"unknown config key 'data.zzzz' in {OVERRIDES}"


# -- kinds of value ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("data.max_frames=abc", "config key 'data.max_frames' in command-line overrides: expected an integer, got 'abc' (a string)"),
    ("data.max_frames=4000.5", "config key 'data.max_frames' in command-line overrides: expected an integer, got 4000.5 (a number)"),
    ("optim.lr=true", "config key 'optim.lr' in command-line overrides: expected a number, got true (a boolean)"),
    ("model.ctc_head=1", "config key 'model.ctc_head' in command-line overrides: expected a boolean, got 1 (an integer)"),
    ("model.train=adapter", "config key 'model.train' in command-line overrides: expected a list, got 'adapter' (a string)"),
    ("seed=[1,2]", "config key 'seed' in command-line overrides: expected an integer, got [1, 2] (a list)"),
    ("model.encoder.conv_strides=[1,a]", "config key 'model.encoder.conv_strides' in command-line overrides: item 1 should be an integer, got 'a' (a string)"),
    ("data=3", "config key 'data' in command-line overrides: expected a mapping (a section), got 3 (an integer)"),
    ("model.llm.config=3", "config key 'model.llm.config' in command-line overrides: expected a mapping (a section), got 3 (an integer)"),
    ("seed=null", "config key 'seed' in command-line overrides: expected an integer, got null"),
    ("data.train=3", "config key 'data.train' in command-line overrides: expected a string or a list, got 3 (an integer)"),
    ("threads=2.5", "config key 'threads' in command-line overrides: expected an integer, got 2.5 (a number)"),
], ids=["str-for-int", "float-for-int", "bool-for-float", "int-for-bool", "str-for-list", "list-for-int",
        "list-item", "scalar-for-section", "scalar-for-open-section", "null-for-required", "int-for-path-or-list",
        "float-for-optional-int"])
def test_a_value_of_the_wrong_kind_names_key_origin_value_and_kind(override, message):
    with pytest.raises(ConfigError) as raised:
        fit_config(overrides=[override])
    assert str(raised.value) == message


def test_a_wrong_kind_in_a_file_names_the_file_and_explains_yamls_1e_4(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("optim:\n  lr: 1e-4\n")  # YAML 1.1 reads this as the string '1e-4'
    with pytest.raises(ConfigError, match=re.escape(f"config key 'optim.lr' in {user}: expected a number, got '1e-4' "
                                                    "(a string) (text to YAML: write numbers without quotes, and 1e-4 as 1.0e-4)")):
        fit_config(files=[user])


def test_values_of_the_kinds_a_key_takes_are_accepted():
    cfg = fit_config(overrides=[
        "optim.lr=1",                            # an int where a float is expected
        "data.train=a.jsonl", "data.val=[a.jsonl,b.jsonl]",   # a path or a list of paths
        "data.frames_per_token=7.5", "checkpoint.every_n_steps=null", "threads=2",
        "trainer.devices=auto", "trainer.precision=16", "model.llm.config.rope_theta=1e4",  # open sections
        "tasks.asr.loss_weight=2",
    ])
    assert cfg["optim"]["lr"] == 1 and cfg["data"]["val"] == ["a.jsonl", "b.jsonl"]
    assert cfg["trainer"]["devices"] == "auto" and cfg["data"]["frames_per_token"] == 7.5


def test_every_problem_of_one_origin_is_reported_together():
    with pytest.raises(ConfigError) as raised:
        fit_config(overrides=["data.max_frames=abc", "optim.lr=x", "data.zzzz=1"])
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 and all(OVERRIDES in line for line in lines)


def test_every_optional_key_declares_the_kinds_it_takes():
    def null_keys(node, prefix=""):
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key in OPEN_SECTIONS:
                continue
            if isinstance(value, dict):
                yield from null_keys(value, f"{key}.")
            elif value is None:
                yield key

    # A null default says nothing of the value the key takes: VALUE_TYPES must (configs/fit.yaml's and
    # configs/serve.yaml's nulls), and it names no key that is not one of them.
    nulls = set(null_keys(default_config("fit"))) | set(null_keys(default_config("serve")))
    assert nulls <= set(VALUE_TYPES)
    assert set(VALUE_TYPES) - nulls <= {"data.train", "data.val", "data.test"}


# -- paths ------------------------------------------------------------------------------------------------

def test_the_demo_preset_passes_its_data_is_made_by_the_demo():
    cfg = fit_config()
    assert all(cfg["data"][split] is None for split in ("train", "val", "test"))
    check_fit_config(cfg)  # data.train/val/test all null: resolve_demo_data synthesises them


def test_a_missing_data_path_is_named(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    message = problems_of(f"data.train={train}", f"data.val=[{train},{tmp_path / 'dev.jsonl'}]",
                          f"data.test={tmp_path / 'test.jsonl'}")
    assert f"data.val[1]: {tmp_path / 'dev.jsonl'} not found" in message
    assert f"data.test: {tmp_path / 'test.jsonl'} not found" in message
    assert "data.train" not in message and "2 problems" in message


def test_a_data_split_left_null_beside_a_given_one_is_named(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    message = problems_of(f"data.train={train}", f"data.test={train}")
    assert "data.val is not set, but data.train, data.test is" in message and "all null" in message


def test_a_data_file_of_an_unknown_kind_is_named(tmp_path):
    table = tmp_path / "train.csv"
    table.write_text("")
    message = problems_of(*(f"data.{split}={table}" for split in ("train", "val", "test")))
    assert f"data.train: {table}: unknown kind of data file" in message


def test_a_missing_init_directory_is_named(tmp_path):
    message = problems_of(f"init={tmp_path / 'stage1'}")
    assert f"init={tmp_path / 'stage1'}: no such directory" in message


def test_an_init_directory_that_is_no_osum_export_is_named(tmp_path):
    message = problems_of(f"init={tmp_path}")
    assert f"init={tmp_path}: not an osum checkpoint directory (no osum.yaml" in message


def test_a_missing_resume_checkpoint_is_named(tmp_path):
    message = problems_of(f"resume={tmp_path}")
    assert f"resume={tmp_path}: neither a checkpoint (a file, or DeepSpeed's folder) nor a run directory with checkpoints/last.ckpt" in message


def test_given_checkpoint_paths_pass(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "osum.yaml").write_text("{}\n")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    passes(f"init={export}", f"resume={tmp_path / 'run'}")
    passes(f"resume={ckpt}")


@pytest.mark.parametrize(("override", "message"), [
    ("model.encoder.path=/no/such/whisper", "model.encoder.path=/no/such/whisper: no such directory (and not a Hugging Face model id)"),
    ("model.encoder.path=medium.pt", "model.encoder.path=medium.pt: no such file (an OpenAI or WeNet Whisper .pt checkpoint)"),
    ("model.llm.path=./qwen", "model.llm.path=./qwen: no such directory"),
    ("model.llm.tokenizer=models/qwen/tokenizer", "model.llm.tokenizer=models/qwen/tokenizer: no such directory"),
], ids=["absolute-dir", "pt-file", "relative-dir", "nested-dir"])
def test_a_model_path_that_can_only_be_local_must_exist(override, message):
    assert message in problems_of(override, presets=["osum-7b"])


def test_hugging_face_ids_and_existing_model_directories_pass(tmp_path):
    passes(presets=["osum-7b"])  # openai/whisper-medium, Qwen/Qwen2-7B: ids, resolved when the model loads
    passes(f"model.llm.path={tmp_path}", f"model.encoder.path={tmp_path}", presets=["osum-7b"])


# -- contradictions and unknown names --------------------------------------------------------------------

CONTRADICTIONS = [
    # (presets, overrides, a part of the message)
    (["demo"], ["trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
    (["demo"], ["trainer.max_steps=-1", "trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    (["demo"], ["trainer.max_steps=-5"], "trainer.max_steps must be a whole number of steps, or -1"),
    (["osum-7b"], ["loss.ce_start_step=100"], "loss.ce_start_step=100: before that step only the CTC loss trains, and there is none"),
    (["osum-7b"], ["loss.ctc_weight=0.3"], "loss.ctc_weight=0.3 needs the CTC head (model.ctc_head=true)"),
    (["demo"], ["model.ctc_head=false"], "model.ctc_compression needs the CTC head"),
    (["demo"], ["model.ctc_compression=false"], "model.time_embeddings are for CTC compression"),
    (["demo"], ["model.time_embeddings=false", "model.time_embedding_ends=true"],
     "model.time_embedding_ends go with the time embeddings"),
    (["demo"], ["model.ctc_max_run=-4"], "model.ctc_max_run must be 0 (merge whole runs) or more, got -4"),
    (["demo"], ["model.summary_steps=-1"], "model.summary_steps must be 0 (none) or more, got -1"),
    (["demo"], ["loss.ctc_target=labels"], "loss.ctc_target must be transcript or target, got 'labels'"),
    (["demo"], ["model.llm.dtype=fp16"], "model.llm.dtype must be one of float32, bfloat16, float16, got 'fp16'"),
    (["demo"], ["model.encoder.conv_strides=[2,2,2]"], "model.encoder.conv_strides: Whisper's two front-end convolutions"),
    (["demo"], ["data.n_mels=128"], "data.n_mels=128 but the encoder built from model.encoder.config takes num_mel_bins=80"),
    (["demo"], ["model.train=[adapter,projector]"], "model.train: unknown part(s) projector; choose from encoder"),
    (["demo"], ["model.train=[]"], "model.train is empty: nothing would train"),
    (["demo"], ["model.llm.chat_template=true"], "model.llm.chat_template=true needs a tokenizer with a chat template"),
    (["demo"], ["data.num_workers=-1"], "data.num_workers must be 0 (load in the main process) or more, got -1"),
    (["demo"], ["threads=-2"], "threads must be 1 or more"),
    (["demo"], ["data.frames_per_token=-8"], "data.frames_per_token must be a positive number"),
    (["demo"], ["data.buckets=[{max_seconds: 10, batch_size: 4}, {max_seconds: 5, batch_size: 8}]"],
     "data.buckets[1]: max_seconds must rise"),
    (["demo"], ["optim.schedule=linear"], "optim.schedule must be cosine, inverse_sqrt or constant, got 'linear'"),
    (["demo"], ["eval.normalizer=whisper"], "eval.normalizer must be one of basic, whisper_en, got 'whisper'"),
    (["demo"], ["eval.generation.min_new_tokens=60"], "eval.generation.min_new_tokens=60 is above eval.generation.max_new_tokens=48"),
    (["demo"], ["trainer.precision=bf17"], "trainer.precision: unknown value 'bf17'"),
    (["demo"], ["trainer.val_check_interval=0.5"], "trainer.val_check_interval=0.5 is a fraction of an epoch"),
    (["osum-7b"], ["trainer.strategy=fsdp2"], "trainer.strategy=fsdp2 needs trainer.devices as a number, got 'auto'"),
    (["demo"], ["trainer.strategy=deepspeed_zero2", "trainer.precision=16-mixed"], "deepspeed_zero2: use trainer.precision=bf16-mixed"),
    (["demo"], ["checkpoint.every_n_steps=-1"], "checkpoint.every_n_steps must be a number of steps"),
    (["demo"], ["trainer.reload_dataloaders_every_n_epochs=0"], "trainer.reload_dataloaders_every_n_epochs must stay 1"),
    (["demo"], ["trainer.max_steps=-1", "trainer.max_epochs=-1"], "optim.schedule=cosine needs an end to decay to"),
]


@pytest.mark.parametrize(("presets", "overrides", "message"), CONTRADICTIONS,
                         ids=[re.sub(r"\W+", "-", " ".join(o))[:40] for _, o, _ in CONTRADICTIONS])
def test_a_contradiction_or_unknown_name_is_refused_naming_its_keys(presets, overrides, message):
    assert message in problems_of(*overrides, presets=presets)


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    message = problems_of("trainer.max_steps=0", "data.num_workers=-1", "optim.schedule=linear",
                          f"init={tmp_path / 'none'}")
    assert message.startswith("the config has 4 problems:\n")
    assert len([line for line in message.splitlines() if line.startswith("  - ")]) == 4


def test_checking_changes_neither_the_config_nor_the_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = fit_config(overrides=["trainer.max_steps=0"])
    before = copy.deepcopy(cfg)
    with pytest.raises(ConfigError):
        check_fit_config(cfg)
    assert cfg == before and list(tmp_path.iterdir()) == []


PRESETS = sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))
STAGES = [None, *sorted(p.stem for p in (CONFIG_DIR / "stages").glob("*.yaml"))]
STRATEGIES = [None, *sorted(p.stem for p in (CONFIG_DIR / "strategies").glob("*.yaml"))]


def test_every_shipped_preset_stage_and_strategy_passes():
    refused = {}
    for preset, stage, strategy in itertools.product(PRESETS, STAGES, STRATEGIES):
        # The 7B-family presets train on `trainer.devices: auto`; fsdp2 needs the count given (it shards by it).
        devices = ["trainer.devices=8"] if strategy == "fsdp2" else []
        try:
            passes(*devices, presets=[preset], stages=[stage] if stage else [], strategies=[strategy] if strategy else [])
        except ConfigError as error:
            refused[preset, stage, strategy] = str(error)
    assert refused == {}
    assert {"demo", "osum-7b"} <= set(PRESETS) and "adapter" in STAGES and "fsdp2" in STRATEGIES  # found them


def test_demo_all_config_passes():
    passes(files=[Path(__file__).resolve().parents[1] / "configs" / "demo_all.yaml"])


# -- YAML and interpolations: a config is data ----------------------------------------------------------

def test_a_python_tag_in_a_config_file_is_refused_naming_the_file_and_runs_nothing(tmp_path):
    marker = tmp_path / "FILE"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as raised:
        fit_config(files=[evil])
    message = str(raised.value)
    assert message.startswith(f"{evil}: not valid YAML for a config:")
    assert "python/object/apply:os.system" in message and "line 1" in message and "refused" in message
    assert not marker.exists()


def test_a_python_tag_in_an_override_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "FILE"
    override = f'seed=!!python/object/apply:os.system ["touch {marker}"]'
    with pytest.raises(ConfigError, match="bad override .*python/object/apply:os.system.*refused"):
        fit_config(overrides=[override])
    assert not marker.exists()


def test_interpolations_stay_literal_text_and_are_never_resolved(monkeypatch):
    monkeypatch.setenv("OSUM_SECRET", "leaked")
    with pytest.warns(FutureWarning, match="is now 'data.demo.options.event_positions'"):
        cfg = passes("out=${oc.env:OSUM_SECRET}", "data.demo.dir=${eval:1+1}",
                     "data.demo.event_positions=${oc.env:OSUM_SECRET}")  # a renamed key: moved, not resolved
    assert cfg["out"] == "${oc.env:OSUM_SECRET}"
    assert cfg["data"]["demo"]["dir"] == "${eval:1+1}"
    assert cfg["data"]["demo"]["options"]["event_positions"] == "${oc.env:OSUM_SECRET}"
    assert "leaked" not in repr(cfg)
    # One that omegaconf's grammar cannot read is refused as a bad override (never run either way).
    with pytest.raises(ConfigError, match="bad override"):
        fit_config(overrides=["out=${eval:__import__('os').getcwd()}"])


def test_an_interpolation_where_a_number_is_expected_is_a_wrong_kind():
    with pytest.raises(ConfigError, match=re.escape("config key 'optim.lr' in command-line overrides: expected a "
                                                    "number, got '${eval:1+1}' (a string)")):
        fit_config(overrides=["optim.lr=${eval:1+1}"])


def test_an_interpolation_in_a_file_stays_text(tmp_path, monkeypatch):
    monkeypatch.setenv("OSUM_SECRET", "leaked")
    user = tmp_path / "mine.yaml"
    user.write_text("out: ${oc.env:OSUM_SECRET}\n")
    assert load_config("fit", [user])["out"] == "${oc.env:OSUM_SECRET}"


def test_no_code_in_osum_resolves_interpolations():
    root = Path(__file__).resolve().parents[1]
    resolving = re.compile(r"resolve\s*=\s*True|OmegaConf\.resolve|OmegaConf\.to_object|register_new_resolver")
    found = [f"{path}:{n}" for package in ("osum_core", "osum_tasks") for path in (root / package).rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if resolving.search(line)]
    assert found == []


def test_a_run_shorter_than_ce_start_step_is_warned_about_not_refused():
    cfg = fit_config(["demo"], overrides=["trainer.max_steps=100"])
    start = cfg["loss"]["ce_start_step"]  # the demo preset's
    assert start >= 100
    with pytest.warns(UserWarning, match=f"loss.ce_start_step={start} is not below trainer.max_steps=100"):
        check_fit_config(cfg)

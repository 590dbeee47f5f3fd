import pytest

from osum_core.config.load import ConfigError, load_config


def test_defaults_load_and_overrides_apply():
    cfg = load_config("fit", overrides=["trainer.max_steps=20", "optim.lr=5e-4", "data.train=[a.jsonl,b.jsonl]"])
    assert cfg.trainer.max_steps == 20
    assert cfg.optim.lr == 5e-4
    assert list(cfg.data.train) == ["a.jsonl", "b.jsonl"]


def test_unknown_keys_are_errors_from_the_command_line_and_from_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate' in command-line overrides"):
        load_config("fit", overrides=["optim.learning_rate=1"])
    user = tmp_path / "mine.yaml"
    user.write_text("data:\n  n_mel: 128\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'data.n_mel' in {user}"):
        load_config("fit", files=[user])
    with pytest.raises(ConfigError, match="must be key=value"):
        load_config("fit", overrides=["trainer.max_steps"])


def test_open_sections_take_new_keys():
    cfg = load_config("fit", overrides=["model.llm.config.rope_theta=10000", "tasks.asr.loss_weight=2"])
    assert cfg.model.llm.config.rope_theta == 10000
    assert cfg.tasks.asr.loss_weight == 2


def test_user_file_merges_over_defaults(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("optim:\n  lr: 0.01\n")
    cfg = load_config("fit", files=[user], overrides=["optim.warmup_steps=3"])
    assert cfg.optim.lr == 0.01 and cfg.optim.warmup_steps == 3 and cfg.optim.schedule == "cosine"

"""`osum fit --resume`: a run continues from its last checkpoint, as it was configured; what it depends on
cannot change; runs and exports keep out of each other's folders."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, data_args

from osum_core.checkpoints.run_dir import load_run_checkpoint
from osum_core.cli.main import main
from osum_core.config import load_config


def test_resume_continues_a_run_from_its_last_checkpoint(run_dir, tiny_corpus, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(run_dir, run)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    args = ["fit", "--tasks", "asr,ved", "--resume", str(run), "--out", str(run), *data_args(tiny_corpus), *TINY,
            "trainer.max_steps=12", "trainer.val_check_interval=4"]
    assert main(args) == 0
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (before, after["global_step"]) == (8, 12)
    assert "optimizer_states" in after


def test_resume_names_a_missing_checkpoint(tmp_path, tiny_corpus, capsys):
    assert main(["fit", "--tasks", "asr", "--resume", str(tmp_path), *data_args(tiny_corpus), *TINY]) == 2
    assert "last.ckpt" in capsys.readouterr().err


# -- a resume continues the run it names, as it was configured -----------------------------------------
def run_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def own_data_run(run_dir, tiny_corpus, tmp_path) -> Path:
    """A copy of the session's run, trained on the user's own manifests with loss.ce_start_step=0."""
    run = tmp_path / "mine"
    shutil.copytree(run_dir, run)
    return run


def test_resume_as_readme_shows_it_continues_the_run_with_its_own_data_tokenizer_and_settings(own_data_run, tmp_path,
                                                                                               monkeypatch):
    run = own_data_run
    original = load_config("fit", [run / "config.yaml"])
    tokenizer = {k: v for k, v in run_files(run).items() if k.startswith("tokenizer/")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no demo corpus here, and no runs/fit is to appear
    assert main(["fit", "--resume", str(run), "trainer.max_steps=10", "data.log_keys=true"]) == 0
    assert list(elsewhere.iterdir()) == []
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert load_config("fit", [run / "config.yaml"]) == original  # the run's own config stays as it started
    resumed = load_config("fit", [run / "config.resume-1.yaml"])
    assert resumed["trainer"]["max_steps"] == 10 and resumed["loss"]["ce_start_step"] == 0
    assert resumed["data"]["train"] == original["data"]["train"]
    trained = [k for line in (run / "train_keys.jsonl").read_text().splitlines() for k in json.loads(line)["keys"]]
    own = {json.loads(x)["key"] for x in Path(original["data"]["train"]).read_text().splitlines()}
    assert trained and set(trained) <= own  # the run's own data, never a demo corpus
    assert {k: v for k, v in run_files(run).items() if k.startswith("tokenizer/")} == tokenizer  # never retrained
    # osum test and osum export read the latest config
    assert load_run_checkpoint(run).config["trainer"]["max_steps"] == 10


@pytest.mark.parametrize("change,named", [
    (["--tasks", "asr"], "--tasks asr,ved -> asr"),
    (["seed=5"], "seed 777 -> 5"),
    (["data.sort_window=8"], "data.sort_window 500 -> 8"),
    (["trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches 1 -> 2"),
    (["tasks.ved.sampling_weight=3"], "tasks.ved.sampling_weight None -> 3"),
    (["model.llm.config.num_hidden_layers=2"], "model.llm.config.num_hidden_layers 1 -> 2"),
], ids=["tasks", "seed", "sort_window", "accumulation", "task_weight", "model"])
def test_a_resume_that_would_change_the_plan_or_the_model_is_refused_and_touches_nothing(own_data_run, change, named,
                                                                                         capsys):
    run = own_data_run
    before = run_files(run)
    assert main(["fit", "--resume", str(run), "trainer.max_steps=10", *change]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and named in message and message.startswith(f"osum: error: --resume {run}: refused")
    assert run_files(run) == before


def test_a_resume_into_another_folder_is_refused(own_data_run, tmp_path, capsys):
    assert main(["fit", "--resume", str(own_data_run), "--out", str(tmp_path / "other")]) == 2
    assert "continues the run in" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_run_from_before_packing_resumes_with_padded_batches_and_cannot_switch(own_data_run, capsys):
    from omegaconf import OmegaConf

    from osum_core.cli.resume import resume_config

    # config.yaml as an osum before model.packed wrote it: the run's batches were planned padded.
    path = own_data_run / "config.yaml"
    stored = OmegaConf.to_container(OmegaConf.load(path))
    assert stored["model"].pop("packed") is True
    path.write_text(OmegaConf.to_yaml(stored))
    cfg, _ = resume_config(str(own_data_run), None, overrides=["trainer.max_steps=50"])
    assert cfg["model"]["packed"] is False  # the same plan: the position in the epoch stays exact
    assert main(["fit", "--resume", str(own_data_run), "model.packed=true"]) == 2
    assert "model.packed False -> True" in capsys.readouterr().err


def test_a_changed_number_of_ranks_or_workers_is_not_refused(own_data_run):
    from osum_core.cli.resume import resume_config

    cfg, tasks = resume_config(str(own_data_run), None, overrides=["trainer.devices=4", "data.num_workers=3",
                                                                   "optim.lr=1e-4", "trainer.max_steps=50"])
    assert (cfg["trainer"]["devices"], cfg["data"]["num_workers"], tasks) == (4, 3, ["asr", "ved"])


def test_a_config_error_lightning_finds_writes_nothing(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--tasks", "asr", "--out", str(out), *data_args(tiny_corpus), *TINY, "trainer.max_step=5"]) == 2
    assert "unknown config key 'trainer.max_step'" in capsys.readouterr().err
    assert not out.exists()


def test_runs_and_exports_refuse_each_others_folders(run_dir, exported, tmp_path, tiny_corpus, capsys):
    export = tmp_path / "export"
    shutil.copytree(exported, export)
    before = run_files(export)
    assert main(["fit", "--tasks", "asr,ved", "--out", str(export), *data_args(tiny_corpus), *TINY]) == 2
    assert "holds an osum export" in capsys.readouterr().err
    assert main(["fit", "--tasks", "asr,ved", "--out", str(export), "--overwrite", *data_args(tiny_corpus), *TINY]) == 2
    assert run_files(export) == before
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    runs = run_files(run)
    assert main(["export", "--ckpt", str(run), "--out", str(run)]) == 2
    assert "is not an osum checkpoint directory (a training run" in capsys.readouterr().err
    assert run_files(run) == runs
    assert main(["export", "--ckpt", str(run), "--out", str(export)]) == 2
    assert "give --overwrite" in capsys.readouterr().err
    assert main(["export", "--ckpt", str(run), "--out", str(export), "--overwrite"]) == 0


def test_the_original_command_plus_resume_is_not_refused(own_data_run, tiny_corpus, monkeypatch):
    # A requeued job repeats its whole command: relative data paths and task names as first given.
    from osum_core.cli.resume import resume_config

    monkeypatch.chdir(tiny_corpus)
    cfg, tasks = resume_config(str(own_data_run), "ved,asr", overrides=[
        "data.train=train.jsonl", "data.val=dev.jsonl", "data.test=test.jsonl", *TINY])
    assert tasks == ["asr", "ved"] and cfg["data"]["train"] == str(tiny_corpus / "train.jsonl")
    with pytest.raises(ValueError, match=r"--tasks asr,ved -> .*langid"):
        resume_config(str(own_data_run), "all")


def test_a_checkpoint_whose_optimiser_trained_other_tensors_is_refused_with_the_reason(own_data_run, capsys):
    # A run saved before the time embedding trained (2026-12-05) holds an optimiser for two tensors fewer.
    path = own_data_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    dropped = group["params"][-2:]
    group["params"] = group["params"][:-2]
    for index in dropped:
        checkpoint["optimizer_states"][0]["state"].pop(index, None)
    torch.save(checkpoint, path)
    assert main(["fit", "--resume", str(own_data_run), "trainer.max_steps=10"]) == 2
    err = capsys.readouterr().err
    assert "its optimiser state is for" in err and "trained tensors" in err and "--init" in err

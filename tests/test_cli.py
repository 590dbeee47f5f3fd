"""The command line, end to end: `osum tasks`, `osum data synth`, `osum fit` on a tiny corpus."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_process

from osum_core.cli.main import main

TINY_FIT = [
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
    "trainer.max_time=null",
    "data.num_workers=0",
    "eval.generation.max_new_tokens=4",
    "model.encoder.config.encoder_layers=1",
    "model.llm.config.num_hidden_layers=1",
    "loss.ce_start_step=0",
]


def osum(*args: str) -> subprocess.CompletedProcess:
    return run_process([sys.executable, "-m", "osum_core.cli.main", *args])


def test_tasks_json_lists_builtins_with_their_package(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["ved"]["tag"] == "<TRANSCRIBE> <CAPTION>"
    assert rows["ved"]["metric"] == "accuracy"
    assert "throat clearing" in rows["ved"]["labels"]
    assert rows["asr"]["labels"] == [] and rows["asr"]["package"] == "osum"
    assert {"name", "tag", "labels", "metric", "loss_weight", "package"} <= set(rows["asr"])


def test_print_config_shows_overrides(capsys):
    assert main(["fit", "--tasks", "asr", "--print-config", "trainer.max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] == 7


def test_unknown_task_lists_the_installed_ones():
    result = osum("fit", "--tasks", "asr,emotionz")
    assert result.returncode == 2
    assert "unknown task(s) emotionz; installed tasks: " in result.stderr
    installed = result.stderr.split("installed tasks: ")[1].strip().split(", ")
    assert {"asr", "srwt", "ved", "ser", "ssr", "sgc", "sap", "sttc"} <= set(installed)


def test_unknown_config_key_is_an_error():
    result = osum("fit", "--tasks", "asr", "optim.lr_max=1")
    assert result.returncode == 2
    assert "unknown config key 'optim.lr_max'" in result.stderr


def test_bad_manifest_line_is_named(tmp_path, tiny_corpus):
    # data.on_error=raise stops at it (the default, skip, is tests/test_faults.py's corrupted corpus).
    bad = tmp_path / "bad.jsonl"
    lines = (tiny_corpus / "train.jsonl").read_text().splitlines()[:3]
    bad.write_text("\n".join([lines[0], "{oops", lines[2]]) + "\n")
    result = osum("fit", "--tasks", "asr", "--out", str(tmp_path / "run"), f"data.train={bad}",
                  f"data.val={bad}", f"data.test={bad}", "data.on_error=raise", *TINY_FIT)
    assert result.returncode == 2
    assert f"{bad}:2: not valid JSON" in result.stderr


@pytest.mark.slow
def test_fit_writes_a_complete_run_directory(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    data = [f"data.{k}={tiny_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data, *TINY_FIT]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"asr", "ved", "skipped"} and metrics["skipped"] == {}  # nothing bad in the corpus
    assert (run / "skipped.jsonl").read_text() == ""
    assert 0.0 <= metrics["asr"]["wer"] and 0.0 <= metrics["ved"]["accuracy"] <= 1.0
    assert metrics["asr"]["count"] == 6 and metrics["ved"]["count"] == 6
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 6 and config["data"]["train"].endswith("train.jsonl")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    curve = [json.loads(line) for line in (run / "learning_curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [3, 6]
    assert set(curve[-1]["metrics"]) == {"asr", "ved"}
    assert (run / "metrics.csv").is_file()
    predictions = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and {p["task"] for p in predictions} == {"asr", "ved"}
    confusion = json.loads((run / "confusion.json").read_text())
    assert set(confusion) == {"ved"} and confusion["ved"]["label"]["labels"][-1] == "invalid"
    assert sum(map(sum, confusion["ved"]["label"]["counts"])) == 6


@pytest.mark.slow
def test_fit_all_trains_every_installed_task(tmp_path, all_tasks_corpus, registry):
    run = tmp_path / "run"
    data = [f"data.{k}={all_tasks_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    assert main(["fit", "--tasks", "all", "--out", str(run), *data, *TINY_FIT, "data.prompt_language=zh"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {*registry.tasks, "skipped"}
    assert metrics["srwt"]["count"] == 2 and "timestamp_error_ms" in metrics["srwt"]
    assert "reply_exact" in metrics["sttc"] and "age_accuracy" in metrics["asr_age_gender"]
    assert set(json.loads((run / "confusion.json").read_text())["age_gender"]) == {"age", "gender"}


@pytest.mark.slow
def test_fit_with_only_one_task_trains_only_that_task(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    data = [f"data.{k}={tiny_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    assert main(["fit", "--tasks", "ved", "--out", str(run), *data, *TINY_FIT, "tasks.ved.loss_weight=2"]) == 0
    assert set(json.loads((run / "metrics.json").read_text())) == {"ved", "skipped"}


def test_fit_told_not_to_test_trains_saves_and_says_so(tmp_path, tiny_corpus, capsys):
    run = tmp_path / "run"
    data = [f"data.{k}={tiny_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    assert main(["fit", "--tasks", "asr", "--out", str(run), *data, *TINY_FIT, "trainer.limit_test_batches=0"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    assert "not tested: no test batch ran (trainer.limit_test_batches=0)" in capsys.readouterr().out


def test_synth_takes_corpus_settings_as_overrides(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["data", "synth", str(out), "--tasks", "asr,ved", "--workers", "1", "train_per_task=3",
                 "eval_per_task=1", "options.event_positions=[over]"]) == 0
    assert json.loads(capsys.readouterr().out) == {"asr": str(out / "asr"), "ved": str(out / "ved")}
    lines = {split: (out / "ved" / f"{split}.jsonl").read_text().splitlines() for split in ("train", "dev", "test")}
    assert [len(v) for v in lines.values()] == [3, 1, 1]
    assert json.loads((out / "ved" / "corpus.json").read_text())["spec"]["options"] == {"event_positions": ["over"]}
    assert json.loads((out / "asr" / "corpus.json").read_text())["spec"]["options"] == {}
    result = osum("data", "synth", str(tmp_path / "d"), "train_per_tsk=3")
    assert result.returncode == 2 and "unknown config key 'data.demo.train_per_tsk'" in result.stderr
    result = osum("data", "synth", str(tmp_path / "d"), "options.event_position=[over]")
    assert result.returncode == 2 and "'data.demo.options.event_position': no installed demo recipe" in result.stderr


def test_synth_writes_manifests_over_every_task_that_train_on_the_whole_corpus(tmp_path, capsys):
    """The interface of `osum data synth DIR`: DIR/train.jsonl, dev.jsonl, test.jsonl, wav relative to DIR."""
    from osum_core.data.manifest import read_manifest

    out = tmp_path / "c"
    assert main(["data", "synth", str(out), "--tasks", "asr,ved", "--workers", "1", "train_per_task=2",
                 "eval_per_task=1"]) == 0
    for split, count in (("train", 4), ("dev", 2), ("test", 2)):
        raw = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(raw) == count and {line["task"] for line in raw} == {"<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>"}
        assert all(not line["wav"].startswith("/") for line in raw)
        for line in read_manifest(out / f"{split}.jsonl"):
            assert Path(line["wav"]).is_file()


def test_synth_keeps_the_old_option_spelling(tmp_path, capsys):
    out = tmp_path / "c"
    with pytest.warns(FutureWarning, match="data.demo.options.event_positions"):
        assert main(["data", "synth", str(out), "--tasks", "ved", "--workers", "1", "train_per_task=1",
                     "eval_per_task=1", "event_positions=[before]"]) == 0
    assert json.loads((out / "ved" / "corpus.json").read_text())["spec"]["options"] == {"event_positions": ["before"]}


def test_a_label_outside_the_set_is_named_by_file_and_line_with_the_demo_tokenizer(tmp_path, tiny_corpus):
    """The demo tokenizer is trained from the targets; a bad label must still name its manifest line."""
    lines = [json.loads(line) for line in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    ved = next(line for line in lines if line["task"] == "<TRANSCRIBE> <CAPTION>")
    ved["wav"] = str(tiny_corpus / ved["wav"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**ved, "txt": "one two<burp>"}) + "\n")
    result = osum("fit", "--tasks", "ved", "--out", str(tmp_path / "run"), f"data.train={bad}", f"data.val={bad}",
                  f"data.test={bad}", *TINY_FIT)
    assert result.returncode == 2  # skipped, and then no example is left: the message says why
    assert "has no example for the selected tasks" in result.stderr
    assert f"{bad}:1: task ved: label 'burp'" in result.stderr


def test_a_model_id_that_cannot_be_downloaded_names_the_id_and_the_key(tmp_path, tiny_corpus, monkeypatch, capsys):
    import huggingface_hub.constants

    data = [f"data.{k}={tiny_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    # Offline, as HF_HUB_OFFLINE=1 makes a fresh process (huggingface_hub reads it once, when imported).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for key in ("model.llm.path", "model.llm.tokenizer"):
        returncode = main(["fit", "--tasks", "asr", "--out", str(tmp_path / "run"), f"{key}=no-such-org/no-such-model",
                           *data, *TINY_FIT])
        stderr = capsys.readouterr().err
        assert returncode == 2, stderr[-2000:]
        assert f"config key '{key}': 'no-such-org/no-such-model' is not a local directory" in stderr
        assert "Give a local directory holding the model instead" in stderr


def test_tasks_lists_the_demo_recipes_options(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "data.demo.options.<option>=value" in out and "ved: event_positions=['after']" in out
    assert main(["tasks", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["ser"]["demo_options"] == {"content_cues": 1.0} and rows["asr"]["demo_options"] == {}


def test_tasks_shows_the_weights_training_uses_and_where_each_is_set(capsys, registry):
    from osum_core.config import configured_tasks, fit_config

    trained = configured_tasks(registry.tasks, ["ved", "srwt"], fit_config()["tasks"])
    assert main(["tasks", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["ved"]["label_loss_weight"] == trained["ved"].label_loss_weight == 2.0  # the demo trains VED with 2
    assert rows["ved"]["overrides"] == {"label_loss_weight": {"from": "configs/presets/demo.yaml", "task_default": 1.0}}
    assert rows["srwt"]["options"] == dict(trained["srwt"].options) == dict(registry.tasks["srwt"].options)
    assert rows["srwt"]["overrides"] == {} and rows["asr"]["overrides"] == {}  # the tasks' own values
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "tasks.ved.label_loss_weight: from configs/presets/demo.yaml (the task's own: 1)" in out
    assert next(line for line in out.splitlines() if line.startswith("ved ")).split()[5] == "2*"


def test_tasks_shows_the_values_of_a_config_file_and_of_overrides(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("tasks:\n  asr:\n    sampling_weight: 3\n")
    assert main(["tasks", "--json", "--config", str(mine), "tasks.srwt.resolution=0.05",
                 "tasks.ved.label_loss_weight=4"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["asr"]["sampling_weight"] == 3.0
    assert rows["asr"]["overrides"] == {"sampling_weight": {"from": str(mine), "task_default": 1.0}}
    assert rows["srwt"]["options"]["resolution"] == 0.05
    assert rows["srwt"]["overrides"]["resolution"] == {"from": "the command line", "task_default": 0.1}
    assert rows["ved"]["overrides"]["label_loss_weight"]["from"] == "the command line"


def test_tasks_refuses_an_unknown_task_key_with_the_closest_one():
    result = osum("tasks", "tasks.ved.label_los_weight=2")
    assert result.returncode == 2
    assert ("unknown config key 'tasks.ved.label_los_weight'; did you mean 'tasks.ved.label_loss_weight'? "
            "task 'ved' takes") in result.stderr

"""A new user's path with their own data: relative paths follow one rule per place they are written, a run
says at its start what it will train on and what will not happen, osum's warnings are one plain line, and
the end of a run says what to do next."""

import json
from pathlib import Path

from conftest import TINY

from osum_core.cli.fit_checks import fit_config_problems, fit_config_warnings
from osum_core.cli.main import main
from osum_core.config import fit_config, load_config


def test_data_paths_in_a_config_file_resolve_against_the_file_as_a_mixtures_do(tiny_corpus, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.jsonl").write_text((tiny_corpus / f"{split}.jsonl").read_text())
    (folder / "mine.yaml").write_text("data:\n  train: train.jsonl\n  val: [dev.jsonl]\n  test: test.jsonl\n")
    monkeypatch.chdir(tmp_path)  # not the file's folder
    data = fit_config(files=[str(folder / "mine.yaml")])["data"]
    assert (data["train"], data["val"], data["test"]) == (
        str(folder / "train.jsonl"), [str(folder / "dev.jsonl")], str(folder / "test.jsonl"))
    assert fit_config_problems(fit_config(files=[str(folder / "mine.yaml")])) == []
    (folder / "typo.yaml").write_text("data:\n  train: trian.jsonl\n  val: dev.jsonl\n  test: test.jsonl\n")
    problems = fit_config_problems(fit_config(files=[str(folder / "typo.yaml")]))
    assert problems == [f"data.train: {folder / 'trian.jsonl'} not found"]  # the folder searched is in the path
    # On the command line a relative path is the current folder's, and the message says which folder that is.
    problems = fit_config_problems(fit_config(overrides=["data.train=trian.jsonl", f"data.val={folder / 'dev.jsonl'}",
                                                         f"data.test={folder / 'test.jsonl'}"]))
    assert problems == [f"data.train: trian.jsonl not found (a relative path on the command line is taken from the "
                        f"current folder, {tmp_path})"]


def test_a_run_on_own_data_says_what_it_trains_on_what_will_not_happen_and_what_to_do_next(tiny_corpus, tmp_path,
                                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tiny_corpus)
    out = tmp_path / "mine"
    args = ["fit", "--tasks", "asr,ved", "--out", str(out), "data.train=train.jsonl", "data.val=dev.jsonl",
            "data.test=test.jsonl", *TINY, "trainer.max_steps=3", "loss.ce_start_step=5"]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines() + captured.out.splitlines()
    warnings = [line for line in lines if line.startswith("osum: warning:")]
    assert any("loss.ce_start_step=5 is not below trainer.max_steps=3: the LLM's loss never joins" in w for w in warnings)
    assert any("trainer.val_check_interval=8 (training batches) is above the 3 batches of trainer.max_steps=3 x "
               "trainer.accumulate_grad_batches=1: this run never validates" in w for w in warnings)
    assert not any("warnings.warn" in line or "UserWarning" in line for line in lines)  # no source lines
    assert not any("Tip:" in line or "GPU available" in line for line in lines)  # Lightning's notices
    summary = next(line for line in lines if line.startswith("training data (data.train):"))
    assert "48 manifest items" in summary and "(asr 24, ved 24)" in summary
    assert any(line.startswith(f"next: osum export --ckpt {out} --out DIR") for line in lines)
    # The run's config names its data wherever it is read from (a resume from another folder).
    saved = load_config("fit", [out / "config.yaml"])["data"]
    assert saved["train"] == str(tiny_corpus / "train.jsonl") and saved["test"] == str(tiny_corpus / "test.jsonl")
    assert json.loads((out / "tasks.json").read_text()) == ["asr", "ved"]
    report = (out / "report.md").read_text()  # the test's real-time factor is measured, as osum test's is
    assert "| real-time factor | 0.0000" not in report and "s of audio)" in report


def test_fit_without_tasks_or_resume_is_refused_in_one_line(capsys):
    assert main(["fit", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        "osum: error: --tasks is required (comma-separated task names, see `osum tasks`), except with --resume")


def test_the_run_config_keeps_its_paths_as_written(tmp_path):
    # A run's own config (config.yaml) is read as it is: its paths were made absolute when the run started.
    run = Path(tmp_path / "config.yaml")
    run.write_text("data:\n  train: relative/train.jsonl\n")
    assert load_config("fit", [run])["data"]["train"] == "relative/train.jsonl"


def test_the_no_validation_warning_counts_the_batches_of_accumulated_steps():
    # Lightning's val_check_interval counts training batches: 3 steps of 4 batches do reach batch 8.
    def warned(*overrides: str) -> bool:
        cfg = fit_config(overrides=["trainer.max_steps=3", "trainer.val_check_interval=8", *overrides])
        return any("this run never validates" in w for w in fit_config_warnings(cfg))

    assert warned("trainer.accumulate_grad_batches=1")
    assert not warned("trainer.accumulate_grad_batches=4")
    assert not warned("trainer.accumulate_grad_batches=1", "trainer.limit_val_batches=0")

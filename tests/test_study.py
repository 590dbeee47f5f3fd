"""``osum study``: arms x seeds as ordinary ``osum fit`` runs, checked before any starts, resumed where an
interruption left them, and compared (study.json, study.md, study.png); the comparison read from run
directories on its own (`osum_core.inference.study_report`)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from PIL import Image

from osum_core.cli.main import build_parser, main
from osum_core.cli.study import Study, parse_arms, parse_seeds
from osum_core.inference.study_report import log_tail, read_run, record_attempt, study_json, study_markdown

# The smallest study that still validates (twice: a curve, not a point) and tests: TINY's model, 12 training
# utterances per task, validation every 4 of 8 steps.
SMALL = [*TINY, "trainer.val_check_interval=4", "threads=1", "data.demo.train_per_task=12", "data.demo.eval_per_task=4"]
ARMS = ["--arm", "asr_x=", "--arm", "ved_weight1=tasks.ved.label_loss_weight=1"]


def study_args(out: Path, *extra: str) -> list[str]:
    return ["study", "--tasks", "asr,ved", "--out", str(out), "--seeds", "1,2", *ARMS, "--quiet", *SMALL, *extra]


def attempts(run: Path) -> list[dict]:
    return json.loads((run / "study_run.json").read_text())["attempts"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "asr-x"
    assert main(study_args(out)) == 0
    return out


# -- a real study -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_study_runs_every_arm_and_seed_and_compares_them(study):
    report = json.loads((study / "study.json").read_text())
    for arm in ("asr_x", "ved_weight1"):
        for seed in (1, 2):
            run = study / arm / f"seed{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["seed"] == seed
            # Each seed its own corpus, the same for both arms.
            assert all(path.startswith(str(study / "demo_data" / f"seed{seed}")) for path in config["data"]["train"])
            (entry,) = [r for r in report["runs"] if r["arm"] == arm and r["seed"] == seed]
            assert entry["status"] == "finished" and entry["steps"] == 8
            assert entry["metrics"] == metrics(run)  # the numbers are the run's own
            curve = [json.loads(line) for line in (run / "learning_curve.jsonl").read_text().splitlines()]
            assert entry["train_minutes"] == curve[-1]["minutes"] and len(curve) == 2
            assert (run / "learning_curve.png").is_file() and (run / "study.log").stat().st_size > 0
        assert yaml.safe_load((study / arm / "seed1" / "config.yaml").read_text())["tasks"].get("ved", {}).get(
            "label_loss_weight", 2.0) == (1.0 if arm == "ved_weight1" else 2.0)
        summary = report["arms"][arm]
        wers = [metrics(study / arm / f"seed{seed}")["asr"]["wer"] for seed in (1, 2)]
        assert summary["metrics"]["asr"]["wer"] == {"seeds": {"1": wers[0], "2": wers[1]},
                                                     "mean": pytest.approx(sum(wers) / 2), "min": min(wers),
                                                     "max": max(wers)}
        assert set(summary["metrics"]["ved"]) == {"accuracy", "wer"} and summary["finished"] == 2
    assert report["compared"] == ["asr wer", "ved accuracy", "ved wer"]
    markdown = (study / "study.md").read_text()
    assert "| asr_x | 2/2 |" in markdown and "| ved_weight1 | 1 | finished |" in markdown
    assert "![validation curves](study.png)" in markdown
    with Image.open(study / "study.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 600


@pytest.mark.slow
def test_an_interrupted_study_runs_again_only_what_is_missing(study, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(study, out)
    (out / "asr_x" / "seed2" / "metrics.json").unlink()  # stopped after its last checkpoint, before its test
    shutil.rmtree(out / "ved_weight1" / "seed1")  # never started
    assert main(study_args(out)) == 0
    assert [a["resumed"] for a in attempts(out / "asr_x" / "seed2")] == [False, True]
    assert [a["resumed"] for a in attempts(out / "ved_weight1" / "seed1")] == [False]
    for untouched in ("asr_x/seed1", "ved_weight1/seed2"):
        assert attempts(out / untouched) == attempts(study / untouched)
    assert metrics(out / "asr_x" / "seed2")["asr"] == metrics(study / "asr_x" / "seed2")["asr"]  # the same weights
    report = json.loads((out / "study.json").read_text())
    assert [r["status"] for r in report["runs"]] == ["finished"] * 4


def test_a_failed_run_is_reported_with_the_end_of_its_log(tiny_corpus, tmp_path):
    broken = tmp_path / "broken_init"  # passes the checks (an osum.yaml is there) and fails when loaded
    broken.mkdir()
    (broken / "osum.yaml").write_text("model: {}\n")
    out = tmp_path / "study"
    data = [f"data.{k}={tiny_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    assert main(["study", "--tasks", "asr,ved", "--out", str(out), "--arm", f"broken=init={broken}", "--quiet",
                 *SMALL, *data]) == 1
    (run,) = json.loads((out / "study.json").read_text())["runs"]
    assert run["status"] == "failed" and run["returncode"] == 2
    assert any(line.startswith("osum: error:") for line in run["log_tail"])
    markdown = (out / "study.md").read_text()
    assert "| broken | 777 | failed |" in markdown and "## Runs not finished" in markdown
    assert "study.png" not in markdown and not (out / "study.png").exists()  # nothing validated


# -- checked before anything runs ---------------------------------------------------------------------------

def test_a_run_in_the_folder_made_with_other_settings_is_refused_not_counted(study, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(study, out)
    # The same study with another value for one arm: its finished runs are not this arm's.
    other = [*study_args(out)]
    other[other.index("ved_weight1=tasks.ved.label_loss_weight=1")] = "ved_weight1=tasks.ved.label_loss_weight=3"
    assert main([*other, "--dry-run"]) == 2
    assert "arm 'ved_weight1' seed 1" in capsys.readouterr().err
    assert main([*study_args(out), "trainer.max_steps=9", "--dry-run"]) == 2  # a setting of every run
    assert "was run with other settings" in capsys.readouterr().err
    assert main([*study_args(out), "--dry-run"]) == 0  # the same study: its runs count
    capsys.readouterr()
    # A run made before a default changed: the same command, another config.
    stored = out / "asr_x" / "seed1" / "config.yaml"
    config = yaml.safe_load(stored.read_text())
    config["model"]["utterance_embedding"] = not config["model"]["utterance_embedding"]
    stored.write_text(yaml.safe_dump(config))
    assert main([*study_args(out), "--dry-run"]) == 2
    assert re.search(r"asr_x' seed 1: .* than the same command gives now \(model\.utterance_embedding (True|False) -> "
                     r"(True|False): osum's defaults, a preset or a --config file changed since", capsys.readouterr().err)
    # Made before packed steps were the default: the run stored no model.packed, and trained padded.
    del config["model"]["packed"]
    config["model"]["utterance_embedding"] = not config["model"]["utterance_embedding"]
    stored.write_text(yaml.safe_dump(config))
    assert main([*study_args(out), "--dry-run"]) == 2
    assert "(model.packed False -> True:" in capsys.readouterr().err
    # Made before the fused optimiser was the default: it changes rounding only, and the run counts.
    config["model"]["packed"] = True
    del config["optim"]["fused"]
    stored.write_text(yaml.safe_dump(config))
    assert main([*study_args(out), "--dry-run"]) == 0
    (out / "asr_x" / "seed1" / "study_run.json").unlink()  # a run the study did not start
    assert main([*study_args(out), "--dry-run"]) == 2
    assert "holds a run that this study did not start" in capsys.readouterr().err
    assert attempts(out / "asr_x" / "seed2") == attempts(study / "asr_x" / "seed2")  # nothing ran


@pytest.mark.parametrize(("arm", "named"), [
    ("optim.lrr=1", "optim.lrr"),  # an unknown key
    ("tasks.ved.label_los_weight=1", "tasks.ved.label_los_weight"),  # a key the task does not take
    ("trainer.precision=banana", "trainer.precision"),  # the whole-config checks of osum fit
    ("seed=3", "seed"),  # the study sets it
    ("trainer.limit_test_batches=0", "trainer.limit_test_batches"),  # a run without test metrics compares nothing
])
def test_a_bad_override_in_one_arm_is_refused_before_any_run_starts(tmp_path, capsys, arm, named):
    out = tmp_path / "study"
    assert main(["study", "--tasks", "asr,ved", "--out", str(out), "--arm", "good=optim.lr=1e-3",
                 "--arm", f"bad={arm}"]) == 2
    error = capsys.readouterr().err
    assert "arm 'bad'" in error and named in error
    assert not out.exists()


def test_arms_are_name_equals_overrides_with_distinct_names():
    assert parse_arms([]) == {"base": []}
    assert parse_arms(["a=", "b='x.y=1 2' z=3"]) == {"a": [], "b": ["x.y=1 2", "z=3"]}
    with pytest.raises(ValueError, match="two arms"):
        parse_arms(["a=", "a=optim.lr=1"])
    for bad in ("no_equals", "demo_data=", "../up=", "a=not_a_pair"):
        with pytest.raises(ValueError):
            parse_arms([bad])
    assert parse_seeds("1,2", 777) == [1, 2] and parse_seeds(None, 777) == [777]
    with pytest.raises(ValueError):
        parse_seeds("1,1", 777)


def planned(tmp_path: Path, registry, *args: str) -> Study:
    return Study(build_parser().parse_args(["study", "--tasks", "asr", "--out", str(tmp_path), *args]), registry)


def test_each_seed_has_its_own_demo_corpus_shared_by_the_arms_that_keep_its_settings(tmp_path, registry):
    study = planned(tmp_path, registry, "--seeds", "1,2", "--arm", "a=", "--arm", "b=optim.lr=1e-3",
                    "--arm", "small=data.demo.train_per_task=10")
    folders = {(run.arm, run.seed): run.overrides[-1] for run in study.runs}
    assert folders[("a", 1)] == folders[("b", 1)] == f"data.demo.dir={tmp_path / 'demo_data' / 'seed1'}"
    assert folders[("a", 2)] == f"data.demo.dir={tmp_path / 'demo_data' / 'seed2'}"
    assert folders[("small", 2)] == f"data.demo.dir={tmp_path / 'demo_data' / 'small' / 'seed2'}"
    assert [run.overrides[-2] for run in study.runs[:2]] == ["seed=1", "seed=2"]
    shared = planned(tmp_path, registry, "--seeds", "3", "data.demo.dir=corpora")
    assert shared.runs[0].overrides[-1] == f"data.demo.dir={Path('corpora') / 'seed3'}"


def test_runs_given_their_data_read_it(tmp_path, registry, tiny_corpus):
    data = [f"data.{k}={tiny_corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]
    study = planned(tmp_path, registry, *data)
    (run,) = study.runs
    assert not any(item.startswith("data.demo.dir=") for item in run.overrides) and run.action == "start"
    assert study.command(run)[-len(run.overrides):] == run.overrides and "--out" in study.command(run)


# -- the comparison, from run directories -------------------------------------------------------------------

def fake_run(out: Path, arm: str, seed: int, wer: float | None = None, returncode: int | None = 0,
             log: str = "") -> Path:
    """A run directory as `osum fit` and the study leave it: metrics.json and report.json when `wer` is
    given (finished), the curve, the attempt's record (`returncode`) and its log."""
    run = out / arm / f"seed{seed}"
    run.mkdir(parents=True)
    if wer is not None:
        (run / "metrics.json").write_text(json.dumps({"asr": {"wer": wer, "count": 4}, "skipped": {}}))
        (run / "report.json").write_text(json.dumps({"settings": {"step": 8}}))
        curve = [{"step": s, "minutes": s / 10, "train_loss": 1.0, "val_loss": 1.0, "metrics": {"asr": {"wer": wer}}}
                 for s in (4, 8)]
        (run / "learning_curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    record_attempt(run, {"command": ["osum", "fit"], "resumed": False, "returncode": returncode, "seconds": 30.0})
    (run / "study.log").write_text(log)
    return run


def test_the_comparison_takes_each_arm_s_mean_and_range_over_its_finished_seeds(tmp_path):
    fake_run(tmp_path, "a", 1, wer=0.2)
    fake_run(tmp_path, "a", 2, wer=0.4)
    fake_run(tmp_path, "b", 1, wer=0.1)
    fake_run(tmp_path, "b", 2, returncode=2, log="=== osum study, first: osum fit\nold\n"
                                                "=== osum study, again: osum fit\nstep 1\rstep 2\rstep 3\nosum: error: x\n")
    results = [read_run(tmp_path, arm, seed) for arm in "ab" for seed in (1, 2)]
    assert [r.status for r in results] == ["finished", "finished", "finished", "failed"]
    assert results[3].log_tail == ["=== osum study, again: osum fit", "step 3", "osum: error: x"]  # its last attempt
    assert results[0].wall_minutes == 0.5 and results[0].train_minutes == 0.8 and results[0].steps == 8
    report = study_json(results, {"tasks": ["asr"], "seeds": [1, 2], "arms": {"a": [], "b": ["x=1"]}}, {"asr": "wer"})
    a, b = report["arms"]["a"]["metrics"]["asr"]["wer"], report["arms"]["b"]["metrics"]["asr"]["wer"]
    assert a == {"seeds": {"1": 0.2, "2": 0.4}, "mean": pytest.approx(0.3), "min": 0.2, "max": 0.4}
    assert b == {"seeds": {"1": 0.1}, "mean": 0.1, "min": 0.1, "max": 0.1}  # the failed seed is not averaged in
    assert report["arms"]["b"]["finished"] == 1 and report["arms"]["b"]["runs"] == 2
    markdown = study_markdown(report)
    assert "| a | 2/2 | 0.300 (0.200–0.400) |" in markdown and "| b | 1/2 | 0.100 |" in markdown
    assert "### b seed 2: failed (exit status 2" in markdown and "osum: error: x" in markdown


def test_a_run_stopped_by_a_signal_or_never_started_is_not_failed(tmp_path):
    fake_run(tmp_path, "a", 1, returncode=0)  # osum fit exits 0 when a signal stops it after its checkpoint
    run = fake_run(tmp_path, "a", 2, returncode=1)
    record_attempt(run, {"command": ["osum", "fit"], "returncode": 1, "interrupted": True}, replace_last=True)
    assert [read_run(tmp_path, "a", seed).status for seed in (1, 2)] == ["stopped", "stopped"]
    assert read_run(tmp_path, "a", 3).status == "not run"
    assert log_tail(tmp_path / "missing.log") == []


def test_readme_s_study_commands_pass_the_checks(tmp_path, monkeypatch, capsys):
    """Each `osum study` README shows, as a dry run: every arm's config checked, each run's command printed."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    commands = [re.sub(r"\s+#\s.*$", "", line.strip())[len("osum "):] for line in lines
                if line.strip().startswith("osum study ")]
    assert len(commands) >= 2
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)
        assert main([*argv, *([] if "--dry-run" in argv else ["--dry-run"])]) == 0
        planned = capsys.readouterr().err.splitlines()
        assert planned and all(": start: " in line and " fit --tasks " in line for line in planned)
    assert not list(tmp_path.iterdir())  # a dry run writes nothing

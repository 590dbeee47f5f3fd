"""`osum test` and `osum predict` on the export and the run directory of one tiny `osum fit` run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stereo_44k

from osum_core.checkpoints.directory import load_checkpoint
from osum_core.cli.main import main
from osum_core.config import load_config
from osum_core.inference.predict import Request, predict
from osum_core.model.speech_llm import GenerationSettings


def generation(**changes) -> GenerationSettings:
    """The configured decoding settings (configs/fit.yaml), with `changes`."""
    return GenerationSettings(**{**load_config()["eval"]["generation"], **changes})


def test_osum_test_reproduces_the_runs_test_metrics_and_writes_a_report(exported, run_dir, tiny_corpus, tmp_path):
    out = tmp_path / "report"
    args = ["test", "--ckpt", str(exported), "--tasks", "asr,ved", "--out", str(out), "--batch-size", "5",
            f"data.test={tiny_corpus / 'test.jsonl'}"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Same prompts, same greedy decoding, same metrics as the Lightning test at the end of `osum fit`.
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained.pop("skipped") == {} and metrics == trained
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["checkpoint_sha256"] == json.loads((exported / "export.json").read_text())["sha256"]
    assert report["settings"]["normalizer"] == "basic" and report["settings"]["generation"]["num_beams"] == 1
    assert report["prompts"]["asr"] and report["decoding"]["utterances"] == 12
    markdown = (out / "report.md").read_text()
    assert "## Worst examples" in markdown and report["prompts"]["ved"] in markdown
    assert (out / "confusion" / "ved.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("wer" in r for r in rows)
    assert all(isinstance(r["correct"], bool) for r in rows if r["task"] == "ved")


def test_osum_test_reads_a_run_directory_too(run_dir, tiny_corpus, tmp_path):
    out = tmp_path / "report"
    assert main(["test", "--ckpt", str(run_dir), "--tasks", "asr", "--out", str(out),
                 f"data.test={tiny_corpus / 'test.jsonl'}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["asr"] == json.loads((run_dir / "metrics.json").read_text())["asr"]


def test_predict_cli_writes_json_lines_in_input_order(exported, tiny_corpus, tmp_path):
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    files = [str(tiny_corpus / line["wav"]) for line in lines if line["task"] == "<TRANSCRIBE> <CAPTION>"][:4]
    files.append(str(stereo_44k(Path(files[0]), tmp_path / "stereo.flac")))
    batched, single = tmp_path / "batched.jsonl", tmp_path / "single.jsonl"
    assert main(["predict", "--ckpt", str(exported), "--task", "ved", "--batch-size", "5", "--output", str(batched), *files]) == 0
    assert main(["predict", "--ckpt", str(exported), "--task", "ved", "--batch-size", "1", "--output", str(single), *files]) == 0
    rows = [json.loads(line) for line in batched.read_text().splitlines()]
    assert [r["file"] for r in rows] == files
    assert all(r["task"] == "ved" and "transcript" in r and r["prompt"] and isinstance(r["valid"], bool) for r in rows)
    # A padded batch of mixed lengths answers exactly as one utterance at a time.
    assert [r["text"] for r in rows] == [json.loads(line)["text"] for line in single.read_text().splitlines()]
    assert rows[-1]["duration"] == pytest.approx(rows[0]["duration"], abs=1e-3)


def test_predict_takes_a_free_form_prompt_and_reports_the_real_time_factor(exported, tiny_corpus):
    wav = next(str(tiny_corpus / json.loads(line)["wav"]) for line in (tiny_corpus / "test.jsonl").read_text().splitlines())
    result = subprocess.run(
        [sys.executable, "-m", "osum_core.cli.main", "predict", "--ckpt", str(exported), "--prompt", "What is said?", wav],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["task"] is None and row["prompt"] == "What is said?" and "text" in row and "label" not in row
    assert "real-time factor" in result.stderr


def test_predict_without_task_or_prompt_is_a_clear_error(exported, capsys):
    assert main(["predict", "--ckpt", str(exported), "x.wav"]) == 2
    assert "--task" in capsys.readouterr().err


def test_predict_names_a_missing_audio_file(exported, capsys):
    assert main(["predict", "--ckpt", str(exported), "--task", "asr", "/nonexistent/a.wav"]) == 2
    assert "/nonexistent/a.wav" in capsys.readouterr().err


def test_batching_does_not_change_answers_in_the_library_call(exported, tiny_corpus):
    loaded = load_checkpoint(exported)
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    requests = [Request(x["key"], str(tiny_corpus / x["wav"]), None, "Transcribe the audio.") for x in lines]
    settings = generation(max_new_tokens=6)
    together = predict(loaded.model, loaded.tokenizer, requests, settings, n_mels=80, batch_size=len(requests))
    alone = predict(loaded.model, loaded.tokenizer, requests, settings, n_mels=80, batch_size=1)
    assert [a.text for a in together] == [a.text for a in alone]

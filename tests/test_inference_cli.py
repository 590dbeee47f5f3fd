"""`osum test` and `osum predict` on the export and the run directory of one tiny `osum fit` run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import stereo_44k, wav_bytes

from osum_core.checkpoints.loading import load_checkpoint
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
    # Same prompts, same greedy decoding, same metrics as the Lightning test at the end of `osum fit`; the
    # same schema too, bad items skipped included (none: osum test stops at the first).
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == trained and metrics["skipped"] == {}
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["checkpoint_sha256"] == json.loads((exported / "export.json").read_text())["sha256"]
    assert report["settings"]["normalizer"] == "basic" and report["settings"]["generation"]["num_beams"] == 1
    assert report["prompts"]["asr"] and report["decoding"]["utterances"] == 12
    markdown = (out / "report.md").read_text()
    assert "## Worst examples" in markdown and report["prompts"]["ved"] in markdown
    assert (out / "confusion" / "ved.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("wer" in r for r in rows)
    # Decoded sorted by length, listed in the manifest's order.
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [line["key"] for line in lines]
    assert [r["file"] for r in rows] == [str(tiny_corpus / line["wav"]) for line in lines]
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
    error = capsys.readouterr().err
    assert "--task" in error and "this checkpoint's tasks: asr, ved" in error


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
    # Dataloader workers read the audio; the answers and their order stay.
    read_by_workers = predict(loaded.model, loaded.tokenizer, requests, settings, n_mels=80, batch_size=5, workers=2)
    assert [(a.request, a.text) for a in read_by_workers] == [(a.request, a.text) for a in alone]


def manifest_with(tiny_corpus, folder, extra):
    """The tiny corpus's first two ASR test lines (absolute paths), then `extra` (key, wav, txt, task)."""
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    rows = [{**x, "wav": str(tiny_corpus / x["wav"])} for x in lines if x["task"] == "<TRANSCRIBE>"][:2]
    manifest = folder / "test.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in [*rows, *extra]))
    return manifest


def test_a_too_long_utterance_stops_osum_test_and_predict_unless_cropped(exported, tiny_corpus, tmp_path, capsys):
    # The demo preset's encoder takes 30 s (750 positions, strides 2 and 2); data.too_long says what to do beyond.
    long = tmp_path / "long.wav"
    long.write_bytes(wav_bytes(31.0))
    manifest = manifest_with(tiny_corpus, tmp_path, [{"key": "long", "wav": str(long), "txt": "one two",
                                                            "task": "<TRANSCRIBE>"}])
    test = ["test", "--ckpt", str(exported), "--tasks", "asr", f"data.test={manifest}"]
    assert main([*test, "--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert f"{manifest}:3: key long: the audio is 31.0 s, longer than the model's 30.0 s" in error
    assert "data.too_long=crop" in error and not (tmp_path / "refused").exists()
    assert main([*test, "--out", str(tmp_path / "cropped"), "data.too_long=crop"]) == 0
    assert json.loads((tmp_path / "cropped" / "metrics.json").read_text())["asr"]["count"] == 3
    assert main(["predict", "--ckpt", str(exported), "--task", "asr", str(long)]) == 2
    assert "input 1: key long: the audio is 31.0 s" in capsys.readouterr().err


def test_predict_calls_a_zero_byte_file_empty_as_data_check_does(exported, registry, tmp_path, capsys):
    from osum_core.data.check import check_data

    empty = tmp_path / "empty.wav"
    empty.touch()
    assert main(["predict", "--ckpt", str(exported), "--task", "asr", str(empty)]) == 2
    said = f"audio file {empty} is empty (0 bytes)"
    assert said in capsys.readouterr().err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"key": "e", "wav": str(empty), "txt": "one"}) + "\n")
    assert check_data(manifest, [registry.tasks["asr"]]).errors == [f"{manifest}:1: {said}"]


def test_osum_test_reads_with_dataloader_workers_and_names_a_bad_item_they_meet(exported, run_dir, tiny_corpus,
                                                                               tmp_path, capsys):
    out = tmp_path / "report"
    test = ["test", "--ckpt", str(exported), "--tasks", "asr,ved", "data.num_workers=2"]
    assert main([*test, "--out", str(out), f"data.test={tiny_corpus / 'test.jsonl'}"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((run_dir / "metrics.json").read_text())
    capsys.readouterr()
    # A worker meets the silence (the file's header is fine): the run stops, naming it, without a traceback.
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    manifest = manifest_with(tiny_corpus, tmp_path, [{"key": "quiet", "wav": str(silent), "txt": "one two",
                                                            "task": "<TRANSCRIBE>"}])
    assert main([*test, "--out", str(tmp_path / "stopped"), f"data.test={manifest}"]) == 2
    error = capsys.readouterr().err
    assert f"osum: error: {silent}: audio is all zeros" in error and "Traceback" not in error

"""The benchmark scripts keep running: one quick pass of each, and the figures they compute from configs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)


def test_memory_budget_counts_osum_7b_as_osum_does():
    result = run("bench/memory_budget.py", "--presets", "osum-7b")
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[2].strip(): line for line in result.stdout.splitlines() if line.startswith("| osum-7b")}
    assert set(rows) == {"adapter", "adapter-encoder", "adapter-encoder-lora", "inference"}
    # Parameter counts OSUM.md gives for the released model: encoder ~307M, LoRA ~15.1M, Qwen2-7B 7.62B.
    assert "| 307M |" in rows["inference"] and "| 15.1M |" in rows["inference"] and "| 7.62B |" in rows["inference"]


@pytest.mark.slow
def test_suite_prints_one_line_per_benchmark_ending_in_a_ratio(tmp_path):
    result = run("bench/suite.py", "--sizes", "tiny", "--only", "generate,features", "--warmup", "0",
                 "--repeats", "1", "--new-tokens", "3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["generate", "features"]
    assert all(re.search(r" ratio=\d+\.\d\d$", line) for line in lines)
    saved = json.loads((tmp_path / "generate-tiny.json").read_text())
    # Both systems generated exactly the requested tokens for each of the 8 utterances.
    assert saved["osum"]["generated"] == saved["qwen2_audio"]["generated"] == 8 * 3
    assert saved["machine"]["torch"] and saved["size"] == "tiny"


@pytest.mark.slow
def test_the_corrupted_corpus_bench_finds_exactly_the_items_it_broke(tiny_corpus, tmp_path):
    from conftest import TINY

    result = run("bench/corrupted_corpus.py", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "runs"),
                 "--share", "0.3", "--results", str(tmp_path / "result.json"), *TINY, "trainer.max_steps=4",
                 "trainer.val_check_interval=2")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["exact"] and sum(saved["expected_skipped"].values()) == round(0.3 * 48) + round(0.3 * 12)
    assert set(saved["corrupted"]) == set(saved["clean_minus_those"]) == {"asr", "ved"}


def test_the_speaker_probe_finds_gender_in_the_input_and_scores_each_stage(run_dir, tiny_corpus, tmp_path):
    out = tmp_path / "probe.json"
    result = run("bench/speaker_probe.py", "--ckpt", str(run_dir), "--train", str(tiny_corpus / "train.jsonl"),
                 "--test", str(tiny_corpus / "test.jsonl"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["classes"] == ["female", "male"] and saved["utterances"] == {"train": 48, "test": 12}
    assert list(saved["stages"]) == ["input", "encoder", "speech_steps"]
    # Held-out voices differ from the training ones in pitch and formants: the averaged log-mel input alone
    # tells their gender (a probe that could not would be broken, not the model).
    assert saved["stages"]["input"]["test"] > saved["majority_test"]
    assert saved["stages"]["input"]["width"] == 80  # the log-mel bins


def test_timestamp_errors_are_told_by_the_boundarys_place(tmp_path):
    predictions = tmp_path / "test_predictions.jsonl"
    rows = [
        {"task": "srwt", "text": "<0.0>one<0.3><0.3> two<0.9>", "reference": "<0.0>one<0.3><0.3>two<0.6>"},
        {"task": "srwt", "text": "<0.1>one<0.4><0.4>six<0.6>", "reference": "<0.0>one<0.4><0.4>two<0.6>"},  # wrong word
        {"task": "asr", "text": "one", "reference": "one"},
    ]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("bench/timestamp_errors.py", str(predictions))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "1 of 2 srwt answers with the reference's words" in lines[0]
    by_place = {line.split()[0] + " " + line.split()[1]: line for line in lines[1:-1]}
    assert "mean error  300.0 ms" in by_place["end last"] and "mean error    0.0 ms" in by_place["start first"]
    assert lines[-1].endswith("+0: 3, +0.3: 1")

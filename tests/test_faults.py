"""Faults during a run (issue 13): NaN or infinite steps, a corrupted corpus, a run directory that holds
a run. (SIGTERM and a kill while saving: tests/test_exact_resume.py and tests/test_atomic_save.py.)"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import TINY, data_args

from osum_core.cli.main import main
from osum_core.train.module import SpeechLLMModule, TrainingDiverged


def finite_checkpoints(run: Path) -> list[str]:
    names = []
    for path in sorted((run / "checkpoints").glob("*.ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, value in state["state_dict"].items():
            assert bool(value.isfinite().all()), f"{path}: {name} is not finite"
        for group in state["optimizer_states"][0]["state"].values():
            for value in group.values():
                assert bool(torch.as_tensor(value).isfinite().all()), f"{path}: optimiser state is not finite"
        names.append(path.name)
    return names


def poison(monkeypatch, calls: set[int] | None = None, after: int | None = None) -> list[int]:
    """Make the training loss NaN at the given training calls (1-based), or at every call after `after`."""
    seen: list[int] = []
    original = SpeechLLMModule.batch_loss

    def batch_loss(self, batch):
        loss, parts = original(self, batch)
        if self.training:
            seen.append(len(seen) + 1)
            if (calls and seen[-1] in calls) or (after is not None and seen[-1] > after):
                loss = loss * math.nan
        return loss, parts

    monkeypatch.setattr(SpeechLLMModule, "batch_loss", batch_loss)
    return seen


def test_nan_steps_are_skipped_and_counted(monkeypatch, tiny_corpus, tmp_path, capsys):
    calls = poison(monkeypatch, calls={3, 4})
    run = tmp_path / "run"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY]) == 0
    assert len(calls) == 8  # a skipped step still counts as one of max_steps (Lightning counts attempts)
    out = capsys.readouterr()
    assert "step 3: NaN or infinite loss or gradient; step skipped (1 in a row, 1 in all)" in out.err
    assert "optimiser steps skipped for a NaN or infinite loss or gradient: 2" in out.out
    assert finite_checkpoints(run) == ["last.ckpt"]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 8 and checkpoint["skipped_steps"] == 2


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(monkeypatch, tiny_corpus, tmp_path, capsys):
    poison(monkeypatch, after=5)
    run = tmp_path / "run"
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY,
            "optim.max_nonfinite_steps=3", "checkpoint.every_n_steps=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "osum: error: steps 6 to 8: 3 in a row had a NaN or infinite loss or gradient" in err
    assert "optim.max_nonfinite_steps=3" in err
    # The step-6 checkpoint came after a skipped step: it holds step 5's weights, all finite.
    assert finite_checkpoints(run) == ["last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_checkpoint_with_nan_weights_is_never_written():
    module = SpeechLLMModule(torch.nn.Linear(2, 2), {}, None, {}, ctc_weight=0.0, generation=None, total_steps=1,
                             ce_start_step=0)
    with pytest.raises(TrainingDiverged, match=r"not saving a checkpoint .*model.weight"):
        module.on_save_checkpoint({"state_dict": {"model.weight": torch.tensor([1.0, math.nan])}})


def test_an_out_that_holds_a_run_is_refused_unless_resumed_or_overwritten(run_dir, tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "notes.txt").write_text("mine")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY, "trainer.max_steps=2"]
    assert main(args) == 2
    assert f"out={run} holds a run (config.yaml" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing was touched
    assert main([*args, "--overwrite"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files were removed


# -- a corrupted corpus, end to end ---------------------------------------------------------------------
def corrupted_copy(corpus: Path, out: Path) -> dict[str, int]:
    """A copy of `corpus` with bad items of varied kinds; returns the expected skip counts by reason.
    Training lines break in ways planning finds; validation lines in ways only loading finds (every
    validation item is loaded, so all of them are met, by a dataloader worker)."""
    shutil.copytree(corpus, out)
    train = (out / "train.jsonl").read_text().splitlines()
    first = json.loads(train[0])
    train[1] = "{this is not json"
    train[2] = json.dumps({**json.loads(train[2]), "task": "<NOT A TASK>"})
    train[3] = json.dumps({**json.loads(train[3]), "wav": "nowhere/gone.wav"})
    train[4] = json.dumps({**json.loads(train[4]), "key": first["key"]})
    train[5] = json.dumps({**json.loads(train[5]), "txt": 7})
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    dev = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
    nan = np.full(8000, 0.1, dtype=np.float32)
    nan[100] = math.nan
    soundfile.write(out / "nan.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(out / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    whole = (out / dev[2]["wav"]).read_bytes()
    (out / "cut.wav").write_bytes(whole[: len(whole) // 2])
    dev[0]["wav"], dev[1]["wav"], dev[2]["wav"] = "nan.wav", "silent.wav", "cut.wav"
    (out / "dev.jsonl").write_text("".join(json.dumps(x) + "\n" for x in dev))
    return {"not_json": 1, "unknown_task": 1, "audio_missing": 1, "duplicate_key": 1, "wrong_type": 1,
            "audio_not_finite": 1, "audio_silent": 1, "audio_unreadable": 1}


def test_a_corrupted_corpus_trains_with_exact_skip_counts(tiny_corpus, tmp_path):
    expected = corrupted_copy(tiny_corpus, tmp_path / "corpus")
    run = tmp_path / "run"
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tmp_path / "corpus"), *TINY,
            "data.num_workers=1", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped"] == dict(sorted(expected.items()))
    rows = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rows) == sorted(expected)
    by_reason = {r["reason"]: r for r in rows}
    assert by_reason["not_json"]["source"] == f"{tmp_path / 'corpus' / 'train.jsonl'}:2"
    assert by_reason["audio_silent"]["source"] == f"{tmp_path / 'corpus' / 'dev.jsonl'}:2"
    assert by_reason["audio_unreadable"]["message"].endswith("missing)")
    # Validation scored what was left: 12 dev items, 3 skipped.
    curve = [json.loads(line) for line in (run / "learning_curve.jsonl").read_text().splitlines()]
    assert sum(m["count"] for m in curve[-1]["metrics"].values()) == 9

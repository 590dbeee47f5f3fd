"""Faults during a run (issue 13): NaN or infinite steps, a corrupted corpus, a run directory that holds
a run, too many skipped items. (SIGTERM and a kill while saving: tests/test_exact_resume.py and
tests/test_atomic_save.py.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
from conftest import TINY, data_args, run_process

from osum_core.cli.fit_checks import fit_config_problems
from osum_core.cli.main import main
from osum_core.config import load_config
from osum_core.data.bad_items import BadItem, SkipLog
from osum_core.train.module import SpeechLLMModule, TrainingDiverged
from osum_core.train.skipped_items import SkipCeiling, SkippedItems, TooManySkipped


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


def test_bf16_mixed_precision_clips_and_skips_with_the_fused_optimiser(monkeypatch, tiny_corpus, tmp_path, capsys):
    # Lightning's mixed precision refuses to clip for an optimiser that offers to unscale gradients itself,
    # as torch's fused AdamW (optim.fused, the default) does unless told otherwise.
    calls = poison(monkeypatch, calls={3})
    run = tmp_path / "run"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY,
                 "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5", "optim.fused=true"]) == 0
    assert len(calls) == 8
    assert "step 3: NaN or infinite loss or gradient; step skipped" in capsys.readouterr().err
    assert finite_checkpoints(run) == ["last.ckpt"]


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


def test_the_finiteness_check_takes_empty_gradient_shards():
    # fsdp2 over 3+ ranks gives some rank an empty shard of a parameter of 2 rows (the speech markers).
    module = SpeechLLMModule(torch.nn.Linear(2, 2), {}, None, {}, ctc_weight=0.0, generation=None, total_steps=1,
                             ce_start_step=0)
    module.model.register_parameter("shard", torch.nn.Parameter(torch.zeros(0, 4)))
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)
    assert module.gradients_finite(torch.tensor(1.0))
    module.model.weight.grad[0, 0] = math.inf
    assert not module.gradients_finite(torch.tensor(1.0))


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


# -- the ceiling on skipped items (data.max_skipped_fraction) --------------------------------------------
class Keyed(L.LightningModule):
    """One weight, trained on batches shaped as osum's loader gives them (keys, skipped rows, a tensor)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def skipping_batches(count: int, kept: int, skipped: int) -> list[dict]:
    """`count` batches of `kept` items and `skipped` bad ones each, as `collate_examples` gives them."""
    return [{"x": torch.ones(1), "keys": [f"k{b}.{i}" for i in range(kept)],
             "skipped": [BadItem(f"train.jsonl:{b}.{i}: audio is all zeros", "audio_silent").to_json()
                         for i in range(skipped)]} for b in range(count)]


def fit_skipping(root: Path, batches: list[dict], *callbacks: L.Callback, ckpt_path: str | None = None) -> L.Trainer:
    trainer = L.Trainer(max_steps=len(batches), callbacks=list(callbacks), logger=False, default_root_dir=root,
                        accelerator="cpu", enable_model_summary=False, enable_progress_bar=False)
    trainer.fit(Keyed(), torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    return trainer


def test_too_many_skipped_items_stop_training_with_counts_and_examples(tmp_path):
    skips = SkipLog(tmp_path / "skipped.jsonl")
    callback = SkippedItems(skips, SkipCeiling(max_fraction=0.05, min_items=6))
    trainer = L.Trainer(max_steps=5, callbacks=[callback], logger=False, default_root_dir=tmp_path, accelerator="cpu",
                        enable_model_summary=False, enable_progress_bar=False)
    with pytest.raises(TooManySkipped) as stopped:  # 3 items a batch, 1 of them bad: judged at the 2nd batch
        trainer.fit(Keyed(), torch.utils.data.DataLoader(skipping_batches(5, 2, 1), batch_size=None))
    assert trainer.global_step == 1
    assert str(stopped.value) == (
        "2 of the 6 training items read so far were skipped (33.3%), more than data.max_skipped_fraction=0.05: the "
        f"run stopped. The run's bad items by reason: {{'audio_silent': 2}} (all listed in {tmp_path / 'skipped.jsonl'}); "
        "the first skipped in training: train.jsonl:0.0: audio is all zeros; train.jsonl:1.0: audio is all zeros")
    assert len((tmp_path / "skipped.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("batches", [skipping_batches(10, 39, 1), skipping_batches(1, 0, 5)],
                         ids=["a share under the ceiling", "fewer items than min_items"])
def test_skipped_items_under_the_ceiling_train_on(batches, tmp_path):
    callback = SkippedItems(SkipLog(), SkipCeiling(max_fraction=0.05, min_items=6))
    assert fit_skipping(tmp_path, batches, callback).global_step == len(batches)
    assert callback.skipped == sum(len(b["skipped"]) for b in batches)


def test_the_skipped_items_count_goes_on_across_a_resume(tmp_path):
    ceiling = SkipCeiling(max_fraction=0.05, min_items=9)  # 3 items a batch, 1 of them bad: judged at the 3rd
    first = fit_skipping(tmp_path, skipping_batches(2, 2, 1), SkippedItems(SkipLog(), ceiling))
    resumed = SkippedItems(SkipLog(), ceiling)
    with pytest.raises(TooManySkipped, match=r"^3 of the 9 training items read so far"):
        fit_skipping(tmp_path, skipping_batches(4, 2, 1), resumed, ckpt_path=first.checkpoint_callback.best_model_path)
    assert resumed.local == [3, 1]  # stopped at its own first batch


@pytest.mark.parametrize(("override", "message"), [
    ("data.max_skipped_fraction=1.5", "data.max_skipped_fraction must be a share from 0 to 1"),
    ("data.min_items_before_skip_check=0", "data.min_items_before_skip_check must be 1 or more"),
])
def test_the_skipped_items_ceiling_is_checked_before_the_run(override, message):
    problems = fit_config_problems(load_config(overrides=[override]))
    assert [p for p in problems if p.startswith(message)] and not fit_config_problems(load_config())


def test_a_corpus_whose_every_item_fails_to_load_stops_early_on_one_line(tiny_corpus, tmp_path, capsys):
    """Needs osum fit to pass the ceiling to `SkippedItems` (`SkipCeiling` from the two data keys)."""
    shutil.copytree(tiny_corpus, tmp_path / "corpus")
    soundfile.write(tmp_path / "corpus" / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    train = [json.loads(line) for line in (tmp_path / "corpus" / "train.jsonl").read_text().splitlines()]
    (tmp_path / "corpus" / "train.jsonl").write_text("".join(json.dumps({**x, "wav": "silent.wav"}) + "\n" for x in train))
    run = tmp_path / "run"
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tmp_path / "corpus"), *TINY,
            "data.min_items_before_skip_check=10", "trainer.max_steps=40"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "training items read so far were skipped (100.0%), more than data.max_skipped_fraction=0.05" in err[-1]
    assert "'audio_silent': " in err[-1] and "silent.wav" in err[-1]
    assert not (run / "checkpoints" / "last.ckpt").exists()  # stopped within the first epoch, before any save


DDP_CEILING = """
import sys
import time
import lightning as L
import torch
sys.path.insert(0, sys.argv[1])
from test_faults import Keyed, skipping_batches
from osum_core.data.bad_items import SkipLog
from osum_core.train.skipped_items import SkipCeiling, SkippedItems, TooManySkipped

class RankData(Keyed):
    def train_dataloader(self):  # rank 1 reads only bad items, rank 0 none
        batches = skipping_batches(6, 0, 3) if self.global_rank else skipping_batches(6, 3, 0)
        return torch.utils.data.DataLoader(batches, batch_size=None)

trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=6, use_distributed_sampler=False,
                    callbacks=[SkippedItems(SkipLog(), SkipCeiling(max_fraction=0.05, min_items=12))], logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=sys.argv[2])
try:
    trainer.fit(RankData())
except TooManySkipped as error:  # one file a rank: two processes' prints can interleave on a shared pipe
    with open(f"{sys.argv[2]}/rank{trainer.global_rank}.stop", "w") as out:
        out.write(f"rank {trainer.global_rank} stopped at step {trainer.global_step}: {error}")
"""


def two_rank_script(tmp_path: Path, text: str):
    """Run `text` (a script of Lightning's ddp on 2 CPU ranks, given this folder and `tmp_path`) as a user would."""
    script = tmp_path / "two_ranks.py"
    script.write_text(text)
    return run_process([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path)], timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_every_rank_stops_at_the_same_step_when_one_rank_skips_too_many(tmp_path):
    done = two_rank_script(tmp_path, DDP_CEILING)
    said = [path.read_text() for path in sorted(tmp_path.glob("rank*.stop"))]
    # 3 items a batch on each rank: 12 read by the 2nd batch, 6 of them skipped (all on rank 1)
    assert [line.split(":")[0] for line in said] == ["rank 0 stopped at step 1", "rank 1 stopped at step 1"], \
        done.stdout + done.stderr[-3000:]
    assert all("6 of the 12 training items read so far were skipped (50.0%)" in line for line in said)


RANK0_FAILS = """
import sys
import time
import lightning as L
import torch
sys.path.insert(0, sys.argv[1])
from test_faults import Keyed, skipping_batches
from osum_core.train.trainer import stop_started_ranks

class Rank0Fails(Keyed):
    def training_step(self, batch, batch_idx):
        if self.global_rank == 0 and batch_idx == 2:
            raise OSError("rank 0 alone: the disk is full")  # rank 1 goes on into the gradients' all-reduce
        return super().training_step(batch, batch_idx)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(skipping_batches(6, 3, 0), batch_size=None)

trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=6, use_distributed_sampler=False,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=sys.argv[2])
try:
    trainer.fit(Rank0Fails())
except OSError:
    stop_started_ranks(trainer, grace=3)
    print(f"rank 1 stopped: {[p.poll() for p in trainer.strategy.launcher.procs]}", flush=True)
"""


@pytest.mark.slow
def test_when_the_first_process_fails_alone_the_ranks_it_started_are_stopped(tmp_path):
    # The first process stays alive here (as when its exit is held up), so rank 1 waits in the all-reduce:
    # it is given 3 s, then killed, and the run's process group ends.
    done = two_rank_script(tmp_path, RANK0_FAILS)
    assert "rank 1 stopped: [-9]" in done.stdout, done.stdout + done.stderr[-3000:]


STUCK_WORKER = """
import multiprocessing, sys, time
from osum_core.data.loader import ignore_stop_signals, kill_workers_at_exit_registered

def stuck_worker():
    ignore_stop_signals(0)  # as osum's dataloader workers do
    time.sleep(3600)

if __name__ == "__main__":
    kill_workers_at_exit_registered()  # what a PlanLoader with workers does
    multiprocessing.get_context("fork").Process(target=stuck_worker, daemon=True).start()
    print("main done", flush=True)
"""


def test_a_stuck_dataloader_worker_does_not_keep_its_process_from_exiting(tmp_path):
    # multiprocessing's exit handler ends a daemonic worker with SIGTERM, which osum's workers ignore, then
    # waits for it without end (checked: such a process still ran after 40 s without the hook, a rank that
    # never exits); the hook kills it after its 10 s of grace.
    script = tmp_path / "stuck_worker.py"
    script.write_text(STUCK_WORKER)
    done = run_process([sys.executable, str(script)], timeout=120)
    assert done.returncode == 0 and "main done" in done.stdout, done.stderr[-3000:]


KILLED_RANK = """
import os, signal, sys
import torch
from torch.utils.data import DataLoader, Dataset
from osum_core.data.loader import worker_settings

class Numbers(Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, index):
        return torch.tensor([index, os.getpid(), os.getppid()])

if __name__ == "__main__":
    loader = DataLoader(Numbers(), batch_size=4, num_workers=2, persistent_workers=True, **worker_settings(2))
    batches = iter(loader)
    rows = torch.cat([next(batches) for _ in range(4)])
    parents = {int(pid) for pid in rows[:, 2]}
    print("workers", *sorted({int(pid) for pid in rows[:, 1]}), flush=True)
    print("forked by the rank" if os.getpid() in parents else "forked by another process", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer ends a rank: no exit handler runs
"""


def test_the_dataloader_workers_of_a_rank_killed_outright_exit(tmp_path):
    # Workers are forked by a forkserver, not by the rank, so torch's own check (is my parent alive?) does not
    # see the rank die; each worker watches the rank itself.
    script = tmp_path / "killed_rank.py"
    script.write_text(KILLED_RANK)
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as process:
        line = process.stdout.readline()
        assert line.startswith("workers"), line
        workers = [int(pid) for pid in line.split()[1:]]
        assert len(workers) == 2
        # A worker forked from a rank with threads (gloo's, Lightning's) can hang on a lock one of them held.
        assert process.stdout.readline().strip() == "forked by another process"
        assert process.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in process_state(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} still alive 30 s after their rank was killed"
        time.sleep(0.2)


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"

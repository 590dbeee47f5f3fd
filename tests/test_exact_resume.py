"""Exact resume: an `osum fit` killed with SIGKILL in the middle of an epoch and continued with --resume
trains the same keys at every step and ends with the same weights as a run never interrupted, for
manifests and for shards, with two dataloader workers."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import RUN_ENV, TINY, data_args, run_process, stop_group

from osum_core.cli.main import main

pytestmark = pytest.mark.slow

STEPS = 10
RESUMABLE = [
    *[a for a in TINY if not a.startswith(("trainer.max_steps", "data.num_workers", "trainer.val_check_interval"))],
    f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000", "trainer.limit_val_batches=0",
    "data.num_workers=2", "data.max_frames=900", "checkpoint.every_n_steps=4", "data.log_keys=true",
    "threads=1",
]


def fit_command(out: Path, train: str, corpus: Path, *extra: str) -> list[str]:
    args = [a if not a.startswith("data.train=") else f"data.train={train}" for a in data_args(corpus)]
    return [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(out),
            *args, *RESUMABLE, *extra]


def key_log(run: Path) -> dict[int, list[str]]:
    lines = [json.loads(x) for x in (run / "train_keys.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines]
    assert steps == sorted(set(steps)), "each step is logged once, in order"
    return {x["step"]: x["keys"] for x in lines}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def reached(log: Path, step: int) -> bool:
    return log.is_file() and any(json.loads(x)["step"] >= step for x in log.read_text().splitlines() if x.strip())


@contextlib.contextmanager
def started_until_step(command: list[str], run: Path, step: int) -> Iterator[subprocess.Popen]:
    """Start `command` (in a session of its own, its stderr in a file beside the run) and yield it once its key
    log holds `step`; on leaving, every process of it still running is killed."""
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f"{run.name}.stderr", "w+b") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   env={**os.environ, **RUN_ENV})
        try:
            deadline = time.monotonic() + 300
            log = run / "train_keys.jsonl"
            while time.monotonic() < deadline and process.poll() is None and not reached(log, step):
                time.sleep(0.05)
            if not reached(log, step):
                stderr.seek(0)
                state = "still running" if process.poll() is None else f"ended ({process.returncode})"
                raise AssertionError(f"the run did not reach step {step} ({state}): {stderr.read().decode()[-3000:]}")
            process.stderr_file = stderr  # type: ignore[attr-defined]  # what it printed, for the caller
            yield process
        finally:
            stop_group(process)


def kill_after_step(command: list[str], run: Path, step: int) -> None:
    """Start `command` and SIGKILL it once the key log holds `step` (past the step-4 checkpoint)."""
    with started_until_step(command, run, step) as process:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def group_alive(group: int) -> bool:
    """Whether a process of process group `group` still runs (a zombie waiting to be reaped does not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue  # ended while being read
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def stderr_at_end(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for `process` (from `started_until_step`) and every process it started (other ranks, workers) to
    end; what it wrote to stderr."""
    deadline = time.monotonic() + timeout
    process.wait(timeout=timeout)
    while group_alive(process.pid):
        assert time.monotonic() < deadline, "processes the run started still run after it ended"
        time.sleep(0.1)
    file = process.stderr_file  # type: ignore[attr-defined]
    file.seek(0)
    return file.read().decode(errors="replace")


def assert_same_training(run: Path, whole: Path) -> None:
    """`run` trained the keys of `whole` at every step and rank, to the same weights."""
    assert key_log(run) == key_log(whole)
    a, b = weights(whole), weights(run)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def whole(tiny_corpus, tmp_path_factory) -> Path:
    """The uninterrupted run on the manifest, which every test here that stops a run on the manifest is compared
    with (trained once: the same command trains the same keys to the same weights whatever its --out)."""
    run = tmp_path_factory.mktemp("whole") / "whole"
    done = run_process(fit_command(run, str(tiny_corpus / "train.jsonl"), tiny_corpus))
    assert done.returncode == 0, done.stderr[-4000:]
    return run


@pytest.mark.parametrize("kind", ["manifest", "shards"])
def test_a_killed_run_resumes_exactly(kind, tiny_corpus, tmp_path, request):
    train = str(tiny_corpus / "train.jsonl")
    killed = tmp_path / "killed"
    if kind == "shards":
        assert main(["data", "shard", train, str(tmp_path / "shards"), "--per-shard", "6", "--quiet"]) == 0
        train = str(tmp_path / "shards" / "shards.list")
        whole = tmp_path / "whole"
        done = run_process(fit_command(whole, train, tiny_corpus))
        assert done.returncode == 0, done.stderr[-4000:]
    else:
        whole = request.getfixturevalue("whole")

    kill_after_step(fit_command(killed, train, tiny_corpus), killed, step=6)
    checkpoint = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    fit_loop = checkpoint["loops"]["fit_loop"]
    assert not fit_loop["epoch_loop.batch_progress"]["is_last_batch"]  # killed in the middle of the epoch
    position = checkpoint["SpeechDataModule"]["train_position"]  # the data position is saved
    assert position == {"epoch": 0, "segments": [{"world_size": 1, "workers": 2, "accumulate": 1, "batches": 4}],
                        "finished": False}
    resumed = run_process(fit_command(killed, train, tiny_corpus, "--resume", str(killed)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = key_log(whole), key_log(killed)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert got == expected  # no item skipped or repeated at any step
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR1"])
def test_a_scheduler_signal_saves_stops_cleanly_and_resumes_exactly(signal_name, whole, tiny_corpus, tmp_path):
    # As SLURM does, the signal goes to every process of the job (dataloader workers included).
    train = str(tiny_corpus / "train.jsonl")
    stopped = tmp_path / "stopped"
    with started_until_step(fit_command(stopped, train, tiny_corpus, "checkpoint.every_n_steps=null"), stopped,
                            5) as process:
        os.killpg(process.pid, getattr(signal, signal_name))
        stderr = stderr_at_end(process)
    assert process.returncode == 0, stderr[-3000:]
    checkpoint = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    step = checkpoint["global_step"]
    assert 5 <= step < STEPS, stderr[-2000:]  # saved where it stopped, in the middle of the run
    assert f"stopped by {signal_name} after step {step}; resumable checkpoint" in stderr
    assert not (stopped / "metrics.json").exists()  # it stopped: no test
    resumed = run_process(fit_command(stopped, train, tiny_corpus, "--resume", str(stopped)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(stopped, whole)


def test_a_scheduler_signal_during_a_long_accumulated_step_still_saves(tiny_corpus, tmp_path):
    # The rest of the step needs more batches than the workers had read ahead (2 per worker): the workers,
    # and the forkserver they came from, must have outlived the signal the whole job got.
    train = str(tiny_corpus / "train.jsonl")
    stopped = tmp_path / "stopped"
    command = fit_command(stopped, train, tiny_corpus, "checkpoint.every_n_steps=null", "trainer.accumulate_grad_batches=6")
    with started_until_step(command, stopped, 1) as process:
        os.killpg(process.pid, signal.SIGTERM)
        stderr = stderr_at_end(process)
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by SIGTERM after step" in stderr and "exited unexpectedly" not in stderr


KILL_INSIDE_SAVE = """
import os, sys
import torch
from osum_core.cli.main import main

saves, real_save = [], torch.save

def save(obj, target, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:  # the step-8 checkpoint: half of it written, then the process dies
        real_save(obj, target, *args, **kwargs)
        target.flush()
        target.truncate(target.tell() // 2)
        os._exit(9)
    return real_save(obj, target, *args, **kwargs)

torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_inside_a_checkpoint_save_resumes_from_the_previous_one(whole, tiny_corpus, tmp_path):
    train = str(tiny_corpus / "train.jsonl")
    killed = tmp_path / "killed"
    command = fit_command(killed, train, tiny_corpus)
    died = run_process([sys.executable, "-c", KILL_INSIDE_SAVE, *command[3:]])
    assert died.returncode == 9, died.stderr[-2000:]
    checkpoints = sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints == ["last.ckpt"]
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # the complete one
    resumed = run_process(fit_command(killed, train, tiny_corpus, "--resume", str(killed)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(killed, whole)

"""Stopping cleanly when a scheduler says so: SIGTERM (what schedulers send before they kill a job) and
SIGUSR1 (what SLURM sends ahead of its time limit with ``#SBATCH --signal=USR1@120``).

The signal only raises a flag. At the end of the next optimiser step, the ranks agree on it (one small
all-reduce per step under data parallelism, so every rank stops at the same step), save the run's
resumable checkpoint (``checkpoints/last.ckpt``: weights, optimiser, schedule, loop and loader position,
random generators) and stop with `Preempted`, which ``osum fit`` turns into a clean exit. ``osum fit
--resume RUN_DIR`` then continues exactly where the run stopped.

Lightning's own SIGTERM handling is replaced while training runs: it would kill the other ranks at once
(before anything is saved) and, in one process, only stop at the epoch's end."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):  # noqa: N818 - not an error: the run saved and stopped on request
    """The run stopped on a signal after saving `checkpoint` at `step`."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal_name} after step {step}; resumable checkpoint {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class PreemptionCheckpoint(L.Callback):
    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.received: str | None = None
        self._step = -1

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        print(f"osum: received {self.received}: saving at the end of this step, then stopping", file=sys.stderr)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._step = trainer.global_step
        for name in SIGNALS:
            if hasattr(signal, name):
                try:
                    signal.signal(getattr(signal, name), self._handler)
                except ValueError:  # not the main thread (e.g. a notebook's worker): no signals to take
                    return

    def requested(self, trainer: L.Trainer) -> bool:
        flag = self.received is not None
        if trainer.world_size > 1:
            value = torch.tensor(1.0 if flag else 0.0, device=trainer.strategy.root_device)
            flag = float(trainer.strategy.reduce(value, reduce_op="sum")) > 0
        return flag

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step:  # inside an accumulation: not a step boundary
            return
        self._step = trainer.global_step
        if not self.requested(trainer):
            return
        trainer.save_checkpoint(self.checkpoint)
        raise Preempted(self.received or "a signal on another rank", trainer.global_step, self.checkpoint)

"""``data.log_keys``: the keys each rank trained at each optimiser step, in ``RUN_DIR/train_keys.jsonl``.

One line per step and rank, ``{"step": 17, "rank": 0, "keys": [...]}``, where step counts optimiser steps
from 1 and holds every micro-batch of that step. Each line is one appending write, so ranks can share the
file. A resumed run first drops the lines of steps after its checkpoint (they are trained again), so the
log always tells what the weights have seen."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L


class KeyLog(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.step: int | None = None
        self.keys: list[str] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            if trainer.global_step == 0:
                self.path.unlink(missing_ok=True)
            elif self.path.is_file():
                kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line)["step"] <= trainer.global_step]
                partial = self.path.with_name(self.path.name + ".partial")
                partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
                partial.replace(self.path)
        trainer.strategy.barrier("key log ready")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.step = trainer.global_step + 1
        self.keys.extend(batch["keys"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.step is not None and trainer.global_step >= self.step:  # the optimiser stepped
            line = json.dumps({"step": self.step, "rank": trainer.global_rank, "keys": self.keys}, ensure_ascii=False)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, (line + "\n").encode("utf-8"))
            finally:
                os.close(descriptor)
            self.keys = []

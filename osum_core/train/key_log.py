"""``data.log_keys``: the keys each rank trained at each optimiser step, in ``RUN_DIR/train_keys.jsonl``.

One line per step and rank, ``{"step": 17, "rank": 0, "keys": [...]}``, where step counts optimiser steps
from 1 and holds every micro-batch of that step; lines come in step order, then rank order. Only global
rank 0 writes: at each step it gathers every rank's keys (one collective per step, and only when this log
is on), since appends from several nodes to one shared file are not reliably atomic. A resumed run first
drops the lines of steps after its checkpoint (they are trained again), so the log always tells what the
weights have seen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


def gathered_keys(keys: list[str]) -> list[list[str]]:
    """Every rank's `keys`, by rank (all ranks call this together); one process's own, without a collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [keys]
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, keys)
    return ranks


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
        if self.step is not None and trainer.global_step >= self.step:  # the optimiser stepped (on every rank)
            ranks = gathered_keys(self.keys)
            self.keys = []
            if trainer.is_global_zero:
                lines = [json.dumps({"step": self.step, "rank": rank, "keys": keys}, ensure_ascii=False) + "\n"
                         for rank, keys in enumerate(ranks)]
                with self.path.open("a", encoding="utf-8") as out:
                    out.write("".join(lines))

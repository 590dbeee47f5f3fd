"""Counting the items a run passed over (``data.on_error: skip``) as training goes.

Planning records its bad items in the run's `SkipLog` directly (it runs in the main process of each
rank). Dataloader workers cannot: an item that fails to load comes back inside its batch
(``batch["skipped"]``, `collate_examples`), and this callback records it. At each epoch's end the ranks
share what they found, so every rank holds the same counts, rank 0 writes them to ``skipped.jsonl``,
and the counts are logged (``skipped/<reason>``)."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L

from osum_core.data.bad_items import SkipLog


class SkippedItems(L.Callback):
    def __init__(self, skips: SkipLog) -> None:
        self.skips = skips
        self._reported = sum(skips.counts.values())

    def record(self, batch: Any) -> None:
        if isinstance(batch, dict):
            self.skips.add_rows(batch.get("skipped", ()))

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.record(batch)

    def on_validation_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self.record(batch)

    def on_test_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self.record(batch)

    def share(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        pending = self.skips.take_pending()
        if trainer.world_size > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, pending)
            for rows in gathered:
                self.skips.add_rows(rows)
            self.skips.take_pending()
        total = sum(self.skips.counts.values())
        if trainer.is_global_zero and total > self._reported:
            print(f"osum: {stage} (epoch {trainer.current_epoch}): {total - self._reported} more bad item(s) skipped; "
                  f"so far {self.skips.summary()} (listed in {self.skips.path})", file=sys.stderr)
        self._reported = total
        if stage == "train":
            for reason, count in self.skips.summary().items():
                module.log(f"skipped/{reason}", float(count))

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.share(trainer, module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.share(trainer, module, "validation")

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.share(trainer, module, "test")

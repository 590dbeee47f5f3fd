"""Counting the items a run passed over (``data.on_error: skip``) as training goes, and stopping it when
too many are.

Planning records its bad items in the run's `SkipLog` directly (it runs in the main process of each
rank). Dataloader workers cannot: an item that fails to load comes back inside its batch
(``batch["skipped"]``, `collate_examples`), and this callback records it. At each epoch's end the ranks
share what they found, so every rank holds the same counts, rank 0 writes them to ``skipped.jsonl``,
and the counts are logged (``skipped/<reason>``).

**The ceiling** (`SkipCeiling`, ``data.max_skipped_fraction`` and ``data.min_items_before_skip_check``):
of the training items the loader has handed over in the run (kept and skipped, over every rank, counted
each time they are read), no more than that share may have been skipped, judged once that many have been
read. The ranks add up their counts at every training batch (one small all-reduce, the same on every
rank), so all of them stop at the same batch, with a `TooManySkipped` error that gives the counts by
reason and the first bad items. The counts go on across a resume (they are saved in the checkpoint).

Bad items found while planning are not in that share: planning finds a manifest's (and a shard index's)
bad items all at once, before the items around them are read, so against the items read by then a few
dozen bad lines of a large corpus would look like a collapse. (A manifest split without any usable line
already stops the run when it is planned.)"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from osum_core.data.bad_items import SkipLog

EXAMPLES = 3  # bad items the error quotes


class TooManySkipped(ValueError):
    """More than ``data.max_skipped_fraction`` of the training items read were skipped."""


@dataclass(frozen=True)
class SkipCeiling:
    max_fraction: float  # data.max_skipped_fraction
    min_items: int  # data.min_items_before_skip_check


def everyone(trainer: L.Trainer, mine: Any) -> list[Any]:
    """Every rank's `mine`, in rank order (a collective: every rank calls it together)."""
    if trainer.world_size == 1:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


class SkippedItems(L.Callback):
    """Records the bad items of each batch in `skips`; with a `ceiling` (``osum fit`` passes the config's),
    stops training when too many training items are skipped."""

    def __init__(self, skips: SkipLog, ceiling: SkipCeiling | None = None) -> None:
        self.skips = skips
        self.ceiling = ceiling
        self._reported = sum(skips.counts.values())
        self.local = [0, 0]  # training items this process's loader handed over: [read, skipped]
        self.earlier = [0, 0]  # the same, over every rank, before this process (from the checkpoint)
        self.total = [0, 0]  # over every rank and the whole run, as of the last batch
        self.examples: list[dict[str, Any]] = []  # the first training items this process's loader skipped

    @property
    def skipped(self) -> int:
        """Training items skipped so far in the run, over every rank."""
        return self.total[1]

    def record(self, batch: Any) -> None:
        if isinstance(batch, dict):
            self.skips.add_rows(batch.get("skipped", ()))

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.record(batch)
        if isinstance(batch, dict):
            skipped = batch.get("skipped", [])
            self.local[0] += len(batch.get("keys", ())) + len(skipped)
            self.local[1] += len(skipped)
            self.examples += skipped[: EXAMPLES - len(self.examples)]
        counts = torch.tensor(self.local, dtype=torch.long)
        if trainer.world_size > 1:  # every rank, every batch: all take this collective together
            counts = trainer.strategy.reduce(counts.to(module.device), reduce_op="sum").cpu()
        self.total = [before + int(now) for before, now in zip(self.earlier, counts, strict=True)]
        read, skipped = self.total
        if self.ceiling and read >= self.ceiling.min_items and skipped > self.ceiling.max_fraction * read:
            self.stop(trainer, self.ceiling)

    def stop(self, trainer: L.Trainer, ceiling: SkipCeiling) -> None:
        """Raise `TooManySkipped` on every rank, after sharing the ranks' bad items (skipped.jsonl lists them)."""
        shared = everyone(trainer, (self.skips.take_pending(), self.examples))
        self.skips.add_rows(row for rows, _ in shared for row in rows)
        self.skips.take_pending()
        examples = [row for _, rows in shared for row in rows][:EXAMPLES]
        first = "; ".join(row["message"] if str(row["message"]).startswith(str(row["source"]))
                          else f"{row['source']}: {row['message']}" for row in examples)
        read, skipped = self.total
        listed = f" (all listed in {self.skips.path})" if self.skips.path is not None else ""
        raise TooManySkipped(
            f"{skipped} of the {read} training items read so far were skipped ({skipped / read:.1%}), more than "
            f"data.max_skipped_fraction={ceiling.max_fraction}: the run stopped. The run's bad items by reason: "
            f"{self.skips.summary()}{listed}; the first skipped in training: {first}")

    def on_validation_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self.record(batch)

    def on_test_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self.record(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"read": self.total[0], "skipped": self.total[1]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier = [int(state_dict["read"]), int(state_dict["skipped"])]
        self.total = list(self.earlier)

    def share(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        for rows in everyone(trainer, self.skips.take_pending()):
            self.skips.add_rows(rows)  # this rank's own again too: recorded already, so passed over
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

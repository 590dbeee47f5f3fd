"""The resumable loader: an epoch's plan as batches of tensors, with dataloader workers.

torchdata's `StatefulDataLoader` is the loader. Its ``state_dict()`` (which Lightning stores in every
checkpoint, because the object ``train_dataloader()`` returns has one) records how many batches of the
epoch were yielded; on resume it skips that many batches of the batch sampler, which recomputes the same
plan from metadata (no audio is read for skipped batches). The epoch itself comes back through Lightning,
which calls ``set_epoch`` on ``loader.batch_sampler.sampler``. The loader has a length (the plan's batch
count), so Lightning does not prefetch a batch whose position would then be lost."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from osum_core.data.collate import collate_examples
from osum_core.data.dataset import PlanItem
from osum_core.data.epoch_plan import EpochPlan

# torchdata 0.11 calls a torch API that torch 2.14 deprecates, on every loader; nothing for users to act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


class EpochCounter:
    """The epoch a batch sampler is in. Lightning calls ``set_epoch`` only on ``loader.sampler`` and
    ``loader.batch_sampler.sampler`` (never on the batch sampler itself), so `PlanBatchSampler` keeps its
    epoch here, as its ``sampler``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class PlanBatchSampler(Sampler[list[PlanItem]]):
    """This rank's batches of each epoch, from an `EpochPlan`."""

    def __init__(self, plan: EpochPlan, rank: int = 0, world_size: int = 1, workers: int = 1) -> None:
        self.plan, self.rank, self.world_size, self.workers = plan, rank, world_size, max(workers, 1)
        self.sampler = EpochCounter()
        self._lengths: dict[int, int] = {}

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[PlanItem]]:
        return self.plan.batches(self.epoch, self.rank, self.world_size, self.workers)

    def __len__(self) -> int:
        if self.epoch not in self._lengths:
            self._lengths[self.epoch] = sum(1 for _ in self.plan.batches(self.epoch, self.rank, self.world_size, self.workers))
        return self._lengths[self.epoch]


def plan_loader(dataset: Any, sampler: PlanBatchSampler, workers: int, persistent: bool) -> StatefulDataLoader:
    return StatefulDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_examples,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
    )

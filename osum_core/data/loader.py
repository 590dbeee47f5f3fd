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
from dataclasses import replace
from itertools import islice
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


def target_tokens(item: PlanItem) -> int:
    return len(item.example.body_ids) + len(item.example.suffix_ids) + 1  # + end-of-text


def agreed_length(batches: int, items: int) -> int:
    """The batch count every rank yields this epoch (all ranks call this together): the largest rank's
    count, unless some rank has fewer items than that, then the smallest item count. A single process
    keeps its own count."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return batches
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = torch.tensor([batches, -items], dtype=torch.long, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return min(int(counts[0]), -int(counts[1]))


class PlanBatchSampler(Sampler[list[PlanItem]]):
    """This rank's batches of each epoch, from an `EpochPlan`.

    Under data parallelism every rank yields the same number of training batches, or a rank would wait forever at
    an epoch's end for a collective the others never join. The ranks agree on the largest rank's count
    (`agreed_length`), and a rank with fewer batches splits its last batches of two or more items in two
    until it has as many: every item is still trained once per epoch, and no batch grows. (Only a rank
    with fewer items than that count drops its last batches instead.)

    For training, each item also carries the target-token and example counts of the optimiser step its
    batch belongs to (`accumulate` consecutive batches from the epoch's start, as Lightning accumulates
    them), so that the loss is normalised by the step's global token count (`SpeechLLMModule.batch_loss`)."""

    def __init__(self, plan: EpochPlan, rank: int = 0, world_size: int = 1, workers: int = 1,
                 accumulate: int = 1) -> None:
        self.plan, self.rank, self.world_size, self.workers = plan, rank, world_size, max(workers, 1)
        self.accumulate = max(accumulate, 1)
        self.sampler = EpochCounter()
        self._lengths: dict[int, tuple[int, set[int]]] = {}  # epoch -> (batches, indices of batches to split)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def planned(self) -> Iterator[list[PlanItem]]:
        return self.plan.batches(self.epoch, self.rank, self.world_size, self.workers)

    def layout(self) -> tuple[int, set[int]]:
        """(batches this epoch, which of the plan's batches to split in two): one pass over the plan."""
        if self.epoch not in self._lengths:
            sizes = [len(batch) for batch in self.planned()]
            # Evaluation has no collective per batch: each rank evaluates all of its items, however many.
            training = self.plan.training and self.world_size > 1
            length = agreed_length(len(sizes), sum(sizes)) if training else len(sizes)
            splittable = [i for i, size in enumerate(sizes) if size > 1]
            deficit = max(length - len(sizes), 0)
            self._lengths[self.epoch] = (length, set(splittable[len(splittable) - deficit :] if deficit else ()))
        return self._lengths[self.epoch]

    def rank_batches(self) -> Iterator[list[PlanItem]]:
        length, split = self.layout()
        produced = 0
        for index, batch in enumerate(self.planned()):
            parts = [batch[: len(batch) // 2], batch[len(batch) // 2 :]] if index in split else [batch]
            for part in parts:
                if produced >= length:
                    return
                produced += 1
                yield part

    def __iter__(self) -> Iterator[list[PlanItem]]:
        batches = self.rank_batches()
        if not self.plan.training:
            yield from batches
            return
        while group := list(islice(batches, self.accumulate)):
            tokens = sum(target_tokens(item) for batch in group for item in batch)
            items = sum(len(batch) for batch in group)
            for batch in group:
                yield [replace(item, step_tokens=tokens, step_items=items) for item in batch]

    def __len__(self) -> int:
        return self.layout()[0]


def ignore_stop_signals(worker_id: int) -> None:
    """In a dataloader worker: let SIGTERM and SIGUSR1 pass. A scheduler sends them to every process of the
    job; the main process saves and stops (`osum_core.train.preemption`) and needs its workers until then."""
    import signal

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def plan_loader(dataset: Any, sampler: PlanBatchSampler, workers: int, persistent: bool) -> StatefulDataLoader:
    return StatefulDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_examples,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )

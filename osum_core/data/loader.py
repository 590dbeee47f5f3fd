"""The resumable loader: an epoch's plan as batches of tensors, with dataloader workers, and where an
epoch stands (which of its batches each rank has trained) so that a resumed run continues it exactly.

**Position.** An epoch's position is its number and, per *layout* (world size, dataloader workers,
accumulation) the epoch was trained under, how many batches each rank yielded (`EpochPosition`). It is a
few integers: the batches themselves are recomputed from the plan, which is a pure function of the seed,
the epoch and the data (no audio is read for batches passed over). `SpeechDataModule.state_dict` puts
the train loader's position into every checkpoint, and a resumed run hands it to the batch sampler of
the *same* epoch only: a checkpoint written at an epoch's last step does not cut into the next epoch.

**A changed layout** (a node lost or added, another worker count): the items the old layout has not yet
trained are those after each old rank's trained batches; they are interleaved over the old ranks and dealt,
batch by batch, to the new ranks, so the epoch ends with every item trained exactly once. The next epoch is
planned for the new layout. (Replaying the old layout reads the whole epoch's metadata once.)

**Equal counts.** Under data parallelism every rank yields the same number of training batches, or a rank
would wait forever at an epoch's end for a collective the others never join. The ranks agree on the largest
rank's count (`agreed_count`), and a rank with fewer batches splits its last batches of two or more items
in two until it has as many: every item is still trained once per epoch, and no batch grows. (Only a rank
with fewer items than that count drops its last batches instead.) Evaluation ranks also yield the largest
rank's count, ending with empty batches (`padded`), so that a rank with no item still evaluates, and
gathers the answers with the others at the end.

**Step normaliser.** In training, each item also carries the target-token and example counts of the
optimiser step its batch belongs to (`accumulate` consecutive batches from the epoch's start, as Lightning
accumulates them), so that the loss is normalised by the step's global token count
(`SpeechLLMModule.batch_loss`).

Lightning calls ``set_epoch`` only on ``loader.sampler`` and ``loader.batch_sampler.sampler`` (never on
the batch sampler itself), so `PlanBatchSampler` keeps its epoch in an `EpochCounter`, as its
``sampler``. The loader has a length (the epoch's batch count), so Lightning does not prefetch a batch
whose position would then be lost; the datamodule rebuilds it every epoch (``reload_dataloaders_every_n_epochs:
1``), because epochs differ in length and Lightning reads the length only when it builds the loader."""

from __future__ import annotations

import atexit
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from osum_core.data.collate import collate_examples
from osum_core.data.dataset import PlanItem
from osum_core.data.epoch_plan import EpochPlan, interleaved

Batches = list[list[PlanItem]]


@dataclass(frozen=True)
class Layout:
    """How an epoch's batches are spread: over ranks, over each rank's dataloader workers (the plan's
    streams), and into optimiser steps of `accumulate` batches."""

    world_size: int = 1
    workers: int = 1
    accumulate: int = 1


@dataclass(frozen=True)
class Segment:
    layout: Layout
    batches: int  # batches each rank yielded (and trained) under this layout


@dataclass(frozen=True)
class EpochPosition:
    """How far an epoch has been trained: by each layout in turn, so many batches per rank."""

    epoch: int
    segments: tuple[Segment, ...] = ()
    finished: bool = False  # the loader ran out of the epoch's batches (Lightning may stop before it asks)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "segments": [{**asdict(s.layout), "batches": s.batches} for s in self.segments],
                "finished": self.finished}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> EpochPosition:
        segments = tuple(Segment(Layout(s["world_size"], s["workers"], s["accumulate"]), int(s["batches"]))
                         for s in state["segments"])
        return cls(int(state["epoch"]), segments, bool(state.get("finished", False)))

    @property
    def trained(self) -> int:
        """Batches each rank has trained this epoch (Lightning's count of the epoch's batches)."""
        return sum(s.batches for s in self.segments)


class EpochCounter:
    """The epoch a batch sampler is in (see the module's docstring)."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def agreed_count(counts: Sequence[tuple[int, int]]) -> int:
    """The batch count every rank yields, from each rank's (batches, items): the largest rank's count,
    unless some rank has fewer items than that, then the smallest item count."""
    return min(max(b for b, _ in counts), min(i for _, i in counts))


def padded(batches: Iterator[list[PlanItem]], length: int) -> Iterator[list[PlanItem]]:
    """An evaluation rank's batches, then empty ones up to `length` (the most any rank has). Lightning refuses
    a rank with no batch at all (a dev set with fewer items than ranks: "within local rank has zero length"),
    every rank must join the epoch-end gather of the answers, and a sharded model's evaluation batch is a
    collective (`SpeechLLMModule.whole_model`)."""
    count = 0
    for batch in batches:
        count += 1
        yield batch
    yield from ([] for _ in range(length - count))


def agreed_length(batches: int, items: int | None = None) -> int:
    """`agreed_count` over the ranks of the running job (all ranks call this together; one process keeps
    its own count); without `items`, the largest rank's batch count."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return batches
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = torch.tensor([batches, -(items if items is not None else batches)], dtype=torch.long, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return int(counts[0]) if items is None else min(int(counts[0]), -int(counts[1]))


def splits(sizes: Sequence[int], length: int) -> dict[int, int]:
    """Into how many parts to cut which of a rank's planned batches (of `sizes` items) to yield `length`
    batches: the last batches of two or more items in two, and again while more are needed (a rank with at
    least `length` items always gets there)."""
    parts: dict[int, int] = {}
    deficit = max(length - len(sizes), 0)
    while deficit:
        splittable = [i for i, size in enumerate(sizes) if size > parts.get(i, 1)]
        if not splittable:
            break
        for index in splittable[max(len(splittable) - deficit, 0) :]:
            parts[index] = parts.get(index, 1) + 1
            deficit -= 1
    return parts


def evened(batches: Iterator[list[PlanItem]], length: int, split: dict[int, int]) -> Iterator[list[PlanItem]]:
    """`length` batches: the planned ones, those in `split` cut into that many parts."""
    produced = 0
    for index, batch in enumerate(batches):
        count = split.get(index, 1)
        for part in range(count):
            if produced >= length:
                return
            produced += 1
            yield batch[part * len(batch) // count : (part + 1) * len(batch) // count]


@dataclass
class EpochBatches:
    """The training batches of one epoch under each layout it has been trained with: what each rank
    yields (`rank_batches`) and what is left after a position (`left_after`)."""

    plan: EpochPlan
    epoch: int
    _sizes: dict[tuple, list[list[int]]] = field(default_factory=dict)  # (history, layout) -> sizes per rank

    def planned(self, rank: int, layout: Layout, history: tuple[Segment, ...]) -> Iterator[list[PlanItem]]:
        """`rank`'s batches before evening out: the plan's own for a fresh epoch, else its share of what
        `history` left (batch j of it goes to rank j mod world size)."""
        if not history:
            return self.plan.batches(self.epoch, rank, layout.world_size, layout.workers)
        return islice(self.left_after(history), rank, None, layout.world_size)

    def even_layout(self, rank: int, layout: Layout, history: tuple[Segment, ...],
                    agree: Callable[[int, int], int] | None) -> tuple[int, dict[int, int]]:
        """(batches `rank` yields, which planned batches it splits). `agree` is the running job's
        collective (each rank counts only itself); without it every rank's counts are computed here."""
        if layout.world_size == 1:
            return sum(1 for _ in self.planned(rank, layout, history)), {}
        if agree is not None:
            sizes = [len(batch) for batch in self.planned(rank, layout, history)]
            length = agree(len(sizes), sum(sizes))
        else:
            key = (history, layout)
            if key not in self._sizes:
                self._sizes[key] = self.sizes_by_rank(layout, history)
            every = self._sizes[key]
            sizes = every[rank]
            length = agreed_count([(len(s), sum(s)) for s in every])
        return length, splits(sizes, length)

    def sizes_by_rank(self, layout: Layout, history: tuple[Segment, ...]) -> list[list[int]]:
        """Every rank's planned batch sizes under `layout` (one pass over what `history` left)."""
        if not history:
            return [[len(b) for b in self.planned(r, layout, history)] for r in range(layout.world_size)]
        sizes: list[list[int]] = [[] for _ in range(layout.world_size)]
        for index, batch in enumerate(self.left_after(history)):
            sizes[index % layout.world_size].append(len(batch))
        return sizes

    def rank_batches(self, rank: int, layout: Layout, history: tuple[Segment, ...],
                     agree: Callable[[int, int], int] | None = None,
                     even: tuple[int, dict[int, int]] | None = None) -> Iterator[list[PlanItem]]:
        length, split = even or self.even_layout(rank, layout, history, agree)
        return evened(self.planned(rank, layout, history), length, split)

    def left_after(self, segments: tuple[Segment, ...]) -> Iterator[list[PlanItem]]:
        """The batches no rank had trained at the end of `segments`, interleaved over that layout's ranks."""
        *history, last = segments
        ranks = [islice(self.rank_batches(r, last.layout, tuple(history)), last.batches, None)
                 for r in range(last.layout.world_size)]
        return interleaved(ranks)


class PlanBatchSampler(Sampler[list[PlanItem]]):
    """This rank's batches of each epoch, from an `EpochPlan` (see the module's docstring). `resumed`
    is the position a checkpoint recorded in epoch `epoch`: the batches it trained are not yielded again."""

    def __init__(self, plan: EpochPlan, rank: int = 0, world_size: int = 1, workers: int = 1,
                 accumulate: int = 1, epoch: int = 0, resumed: EpochPosition | None = None) -> None:
        self.plan, self.rank = plan, rank
        self.layout = Layout(world_size, max(workers, 1), max(accumulate, 1) if plan.training else 1)
        self.sampler = EpochCounter(epoch)
        self.resumed = resumed
        self._epochs: dict[int, EpochBatches] = {}
        self._lengths: dict[int, tuple[int, dict[int, int]]] = {}

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def resumed_here(self) -> tuple[tuple[Segment, ...], int]:
        """(earlier layouts' segments, batches already trained under this layout) for this epoch."""
        position = self.resumed
        if position is None or position.epoch != self.epoch or not self.plan.training:
            return (), 0
        *history, last = position.segments
        if last.layout == self.layout:
            return tuple(history), last.batches
        return position.segments, 0

    def epoch_batches(self) -> EpochBatches:
        if self.epoch not in self._epochs:
            self._epochs = {self.epoch: EpochBatches(self.plan, self.epoch)}
        return self._epochs[self.epoch]

    def layout_here(self) -> tuple[int, dict[int, int]]:
        """(batches this rank yields this epoch under its layout, which planned batches it splits)."""
        # Evaluation reads the same batches every time: counted (and agreed) once, not at each validation.
        key = self.epoch if self.plan.training else 0
        if key not in self._lengths:
            history, _ = self.resumed_here()
            if not self.plan.training:
                # Each rank evaluates all of its items, in as many batches as the rank with the most (`padded`).
                count = sum(1 for _ in self.plan.batches(self.epoch, self.rank, self.world_size))
                self._lengths[key] = (count if self.world_size == 1 else agreed_length(count), {})
            else:
                # The running layout agrees by a collective; a replayed one is computed here alike on every rank.
                agree = agreed_length if not history else None
                self._lengths[key] = self.epoch_batches().even_layout(self.rank, self.layout, history, agree)
        return self._lengths[key]

    def batches_here(self) -> Iterator[list[PlanItem]]:
        if not self.plan.training:
            return padded(self.plan.batches(self.epoch, self.rank, self.world_size), self.layout_here()[0])
        history, _ = self.resumed_here()
        return self.epoch_batches().rank_batches(self.rank, self.layout, history, even=self.layout_here())

    def __iter__(self) -> Iterator[list[PlanItem]]:
        batches = self.batches_here()
        if not self.plan.training:
            yield from batches
            return
        _, done = self.resumed_here()
        produced = 0
        while group := list(islice(batches, self.layout.accumulate)):
            tokens = sum(item.example.target_length for batch in group for item in batch)
            items = sum(len(batch) for batch in group)
            for batch in group:
                produced += 1
                if produced > done:  # trained before the checkpoint: replayed for its step's counts only
                    yield [replace(item, step_tokens=tokens, step_items=items) for item in batch]

    def __len__(self) -> int:
        """The epoch's batch count as Lightning counts it: those trained before a resume included."""
        history, _ = self.resumed_here()
        return sum(s.batches for s in history) + self.layout_here()[0]

    def position(self, yielded: int, finished: bool = False) -> EpochPosition:
        """Where this epoch stands after the loader has yielded `yielded` of this sampler's batches."""
        history, done = self.resumed_here()
        return EpochPosition(self.epoch, (*history, Segment(self.layout, done + yielded)), finished)


def ignore_stop_signals(worker_id: int) -> None:
    """In a dataloader worker: let SIGTERM and SIGUSR1 pass. A scheduler sends them to every process of the
    job; the main process saves and stops (`osum_core.train.preemption`) and needs its workers until then."""
    import signal

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


RANK_POLL_SECONDS = 5.0


def exit_with_rank(rank_pid: int) -> None:
    """In a dataloader worker: exit as soon as the rank that started it has gone, even killed outright
    (SIGKILL, the OOM killer). torch's workers watch their parent, which is the forkserver here (it outlives
    the rank while workers hold its pipe), so without this a killed rank would leave its workers behind."""
    import select
    import threading

    def wait_and_exit() -> None:
        try:
            try:  # Linux: a process's pidfd is readable once it has exited
                select.select([os.pidfd_open(rank_pid)], [], [])
            except (AttributeError, OSError) as error:  # no pidfd here: ask every few seconds
                if isinstance(error, ProcessLookupError):
                    raise
                while True:
                    os.kill(rank_pid, 0)
                    time.sleep(RANK_POLL_SECONDS)
        except ProcessLookupError:  # gone
            pass
        os._exit(1)

    threading.Thread(target=wait_and_exit, name="osum-exit-with-rank", daemon=True).start()


def worker_started(rank_pid: int, worker_id: int) -> None:
    """Every dataloader worker's `worker_init_fn`."""
    ignore_stop_signals(worker_id)
    exit_with_rank(rank_pid)


WORKER_EXIT_GRACE_SECONDS = 10


def kill_workers_left_at_exit() -> None:
    """At the main process's exit: a dataloader worker still alive after `WORKER_EXIT_GRACE_SECONDS` is killed.
    Workers ignore SIGTERM (above), which is how torch and multiprocessing end a worker that does not stop when
    told; without this, a stuck worker would keep its rank from ever exiting (and the job's other ranks
    waiting for it)."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.join(WORKER_EXIT_GRACE_SECONDS)
        if child.is_alive():
            child.kill()
            child.join()


@functools.cache
def kill_workers_at_exit_registered() -> None:
    # Registered after multiprocessing is imported (torch imports it), so it runs before multiprocessing's own
    # exit handler, which would wait for such a worker without end.
    atexit.register(kill_workers_left_at_exit)


# The first module makes the forkserver ignore scheduler signals; the others spare each worker their imports.
WORKER_PRELOAD = ["osum_core.data.worker_signals", "osum_core.data.dataset", "osum_core.data.collate"]


@functools.cache
def worker_context() -> Any:
    """Workers start from a forkserver, not by forking the rank. A rank has threads (gloo's, Lightning's,
    torch's); a child forked while one of them holds a lock (malloc's, logging's) waits on that lock forever,
    and its rank with it, which hung two-rank runs in the test stage. The forkserver is one clean process,
    started once per rank with torch and the dataset's modules imported, so each worker still starts in a
    fraction of a second. (Python 3.14 made forkserver the default for the same reason.)"""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def worker_settings(workers: int) -> dict[str, Any]:
    """How osum's dataloaders start their `workers` processes (none: no settings)."""
    if workers == 0:
        return {}
    kill_workers_at_exit_registered()
    return {"multiprocessing_context": worker_context(), "worker_init_fn": functools.partial(worker_started, os.getpid())}


class PlanLoader(DataLoader):
    """torch's DataLoader over a `PlanBatchSampler`, counting the batches it has handed out this epoch
    (the main process's count: workers read ahead, the training loop does not)."""

    batch_sampler: PlanBatchSampler

    def __init__(self, dataset: Any, sampler: PlanBatchSampler, workers: int, persistent: bool, seed: int = 0) -> None:
        # Its own generator: the workers' base seed is not drawn from torch's global one, which dropout uses
        # and a checkpoint restores (the loader is rebuilt every epoch, also right after a resume).
        super().__init__(dataset, batch_sampler=sampler, collate_fn=collate_examples, num_workers=workers,
                         persistent_workers=persistent and workers > 0, **worker_settings(workers),
                         generator=torch.Generator().manual_seed(seed + sampler.epoch))
        self.yielded, self.finished = 0, False

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self.yielded, self.finished = 0, False
        for batch in super().__iter__():
            self.yielded += 1
            yield batch
        self.finished = True

    def position(self) -> EpochPosition:
        return self.batch_sampler.position(self.yielded, self.finished)


def plan_loader(dataset: Any, sampler: PlanBatchSampler, workers: int, persistent: bool, seed: int = 0) -> PlanLoader:
    return PlanLoader(dataset, sampler, workers, persistent, seed)

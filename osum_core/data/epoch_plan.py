"""One epoch's batches, planned from metadata alone (labels, lengths: never audio).

The plan is a pure function of the seed, the epoch and the data, so any process can recompute it: a
resumed run skips the batches it already trained by replaying the plan (cheap: no audio is read), and
the batch count of an epoch is known before it starts.

**Streams.** A training epoch is split into ``world_size * workers`` streams, one per (rank, dataloader
worker). Each source's pieces (a manifest's examples, or one tar shard) are shuffled from the seed and
the epoch and dealt to the streams, so each stream reads its own shards; a source with fewer pieces than
streams is split item by item instead (every stream reads it and keeps every S-th item). A rank's batch
sampler interleaves its workers' streams round-robin, the order in which the DataLoader hands batches to
its workers, so each worker reads only its own stream's shards.

**Mixing.** With N items in a stream, source s (weight w_s) contributes

    n_s = N * w_s / sum(w)        (sum over the sources that have items in this stream)

items per epoch, split over its tasks by their sampling weights: n_st = n_s * v_t / sum(v) (sum over the
tasks present in that source). A group (source, task) with fewer items than n_st is read again, in a new
order, until it has given n_st; one with more gives a random n_st of them. Items of all groups are
interleaved at random, then pass through a shuffle buffer (per group) and a sort window (all groups):
each window of ``sort_window`` items is cut into duration batches, shuffled within the window.

Evaluation reads every item once, in order, one stream per rank.

**Bad items.** Planning reads shard indexes and prepares each example (target, tokens, length); an item
that cannot be used there goes to `on_error` (`osum_core.data.bad_items`) and is left out, the same way
in every process and on every pass, so the plan stays a pure function of the data.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osum_core.data.bad_items import BadItem
from osum_core.data.batching import bucketed_batches
from osum_core.data.dataset import ExamplePreparer, PlanItem, PreparedExample, assign_task
from osum_core.data.length_index import NO_KEYS, index_keys, shard_entries
from osum_core.task import Task

Keep = Callable[[int], bool]
OnError = Callable[[BadItem], None] | None


def keep_all(index: int) -> bool:
    return True


@dataclass
class Piece:
    """The unit dealt to a stream: the prepared examples of one manifest, or one tar shard (read lazily
    through its length index)."""

    name: str
    examples: list[PreparedExample] | None = None
    shard_list: Path | None = None
    shard: Path | None = None
    repeats: Container[str] = NO_KEYS  # keys an earlier manifest line or shard of the split has (`repeated_keys`)

    def records(self, keep: Keep, on_error: OnError = None) -> Iterator[dict[str, Any]]:
        assert self.shard_list is not None and self.shard is not None
        for index, entry in enumerate(shard_entries(self.shard_list, self.shard, on_error, self.repeats)):
            if keep(index):
                yield entry.record(self.shard)


@dataclass
class PlanSource:
    name: str
    weight: float
    pieces: list[Piece] = field(default_factory=list)


@dataclass
class EpochPlan:
    """The batches of one split. `task_weights` None means evaluation (every item once, in order)."""

    sources: list[PlanSource]
    preparer: ExamplePreparer  # records -> examples: the selected tasks, the tokenizer, the longest input
    length: Callable[[PreparedExample], int]  # LLM sequence length of an example (the token budget)
    budget: Mapping[str, Any]  # max_frames, max_tokens, sort_window, buckets
    shuffle_buffer: int
    task_weights: Mapping[str, float] | None
    seed: int
    on_error: OnError = None  # where bad items go; None raises them

    @property
    def training(self) -> bool:
        return self.task_weights is not None

    @property
    def tasks(self) -> Sequence[Task]:
        return self.preparer.tasks

    def summary(self) -> str:
        """One line on what the split holds, from what planning has read: the manifests' examples per task
        and their hours, and the shards' usable items (from their indexes; per task: ``osum data check``)."""
        tasks: Counter[str] = Counter()
        frames = shard_items = shards = 0
        for source in self.sources:
            for piece in source.pieces:
                if piece.examples is not None:
                    tasks.update(e.task for e in piece.examples)
                    frames += sum(e.frames for e in piece.examples)
                elif piece.shard_list is not None and piece.shard is not None:
                    shards += 1
                    shard_items += len(index_keys(piece.shard_list, piece.shard))
        parts = []
        if tasks:
            by_task = ", ".join(f"{name} {count}" for name, count in sorted(tasks.items()))
            parts.append(f"{sum(tasks.values())} manifest items, {frames / 100 / 3600:.2f} h ({by_task})")
        if shards:
            parts.append(f"{shard_items} items in {shards} shards")
        return "; ".join(parts)

    # -- reading a piece ------------------------------------------------------------------------------
    def read(self, piece: Piece, keep: Keep, task: str | None, order_seed: str | None) -> Iterator[PreparedExample]:
        """The piece's examples (of `task`, or all) that `keep` keeps; a manifest's in a random order
        when `order_seed` is given (a shard's stay in tar order: the shuffle buffer mixes them)."""
        if piece.examples is not None:
            indices = list(range(len(piece.examples)))
            if order_seed is not None:
                random.Random(order_seed).shuffle(indices)
            for index in indices:
                example = piece.examples[index]
                if keep(index) and (task is None or example.task == task):
                    yield example
            return
        for record in piece.records(keep, self.on_error):
            chosen = assign_task(record, self.tasks)
            if task is not None and (chosen is None or chosen.name != task):
                continue
            try:
                example = self.preparer.prepare(record, chosen)
            except BadItem as error:
                self.handle(error)
                continue
            if example is not None:
                yield example

    def handle(self, error: BadItem) -> None:
        if self.on_error is None:
            raise error
        self.on_error(error)

    def task_counts(self, piece: Piece, keep: Keep) -> Counter[str]:
        if piece.examples is not None:
            return Counter(e.task for i, e in enumerate(piece.examples) if keep(i))
        counts: Counter[str] = Counter()
        for record in piece.records(keep, self.on_error):
            try:
                task = self.preparer.select(record)  # an unknown tag is reported here, once per pass
            except BadItem as error:
                self.handle(error)
                continue
            if task is not None:
                counts[task.name] += 1
        return counts

    # -- streams --------------------------------------------------------------------------------------
    def assigned(self, source: PlanSource, epoch: int, stream: int, streams: int) -> list[tuple[Piece, Keep]]:
        """The pieces of `source` that `stream` (of `streams`) reads this epoch, each with its item filter."""
        pieces = list(source.pieces)
        if self.training:
            random.Random(f"{self.seed}:{epoch}:{source.name}:pieces").shuffle(pieces)
        if streams == 1:
            return [(p, keep_all) for p in pieces]

        def keeper(offset: int) -> Keep:
            return lambda index: (index + offset) % streams == stream

        # Shards, when there are enough, are dealt whole (each stream reads its own files); a manifest's examples
        # are in memory already and are dealt item by item, so manifests of any sizes give streams of equal size.
        whole = sum(p.examples is None for p in pieces) >= streams
        dealt, shards, split = [], 0, 0
        for piece in pieces:
            if piece.examples is None and whole:
                if shards % streams == stream:
                    dealt.append((piece, keep_all))
                shards += 1
            else:
                dealt.append((piece, keeper(split)))
                split += 1
        return dealt

    def shuffled(self, items: Iterator[PreparedExample], rng: random.Random) -> Iterator[PreparedExample]:
        """A shuffle buffer of ``shuffle_buffer`` items (OSUM's is 1500)."""
        buffer: list[PreparedExample] = []
        for item in items:
            buffer.append(item)
            if len(buffer) >= self.shuffle_buffer:
                position = rng.randrange(len(buffer))
                buffer[position], buffer[-1] = buffer[-1], buffer[position]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def group(self, source: PlanSource, pieces: list[tuple[Piece, Keep]], task: str, wanted: int,
              tag: str) -> Iterator[PreparedExample]:
        """`wanted` examples of `task` from `pieces`, read again in a new order as often as needed."""
        given = 0
        for cycle in range(1 << 30):
            rng = random.Random(f"{tag}:{source.name}:{task}:{cycle}")
            order = list(pieces)
            if cycle:
                rng.shuffle(order)
            produced = 0
            examples = (e for p, keep in order for e in self.read(p, keep, task, f"{rng.random()}"))
            for example in self.shuffled(examples, rng):
                yield example
                produced += 1
                given += 1
                if given >= wanted:
                    return
            if not produced:
                return

    def training_stream(self, epoch: int, stream: int, streams: int) -> Iterator[PreparedExample]:
        tag = f"{self.seed}:{epoch}:{stream}/{streams}"
        assert self.task_weights is not None
        assignments = [self.assigned(source, epoch, stream, streams) for source in self.sources]
        counts = []
        for pieces in assignments:
            total: Counter[str] = Counter()
            for piece, keep in pieces:
                total.update(self.task_counts(piece, keep))
            counts.append(total)
        items = sum(sum(c.values()) for c in counts)
        present = [(s, c) for s, c in zip(self.sources, counts, strict=True) if sum(c.values()) and s.weight > 0]
        source_weight = sum(s.weight for s, _ in present)
        wanted: dict[tuple[int, str], int] = {}
        for index, (source, count) in enumerate(zip(self.sources, counts, strict=True)):
            task_weight = sum(self.task_weights.get(t, 0.0) for t in count)
            if not count or source.weight <= 0 or task_weight <= 0:
                continue
            for task in sorted(count):
                share = source.weight / source_weight * self.task_weights.get(task, 0.0) / task_weight
                if round(items * share):
                    wanted[index, task] = round(items * share)
        if items and not wanted:
            raise ValueError(f"every task and source has sampling weight 0: tasks {dict(self.task_weights)}")
        groups = {
            (i, t): self.group(self.sources[i], assignments[i], t, n, tag) for (i, t), n in sorted(wanted.items())
        }
        remaining = dict(sorted(wanted.items()))
        rng = random.Random(f"{tag}:draws")
        keys = list(remaining)
        while keys:
            chosen = rng.choices(keys, weights=[remaining[k] for k in keys])[0]
            example = next(groups[chosen], None)
            if example is None:
                remaining[chosen] = 0
            else:
                remaining[chosen] -= 1
                yield example
            if not remaining[chosen]:
                keys.remove(chosen)

    def evaluation_stream(self, stream: int, streams: int) -> Iterator[PreparedExample]:
        for source in self.sources:
            for piece, keep in self.assigned(source, 0, stream, streams):
                yield from self.read(piece, keep, None, None)

    def stream_batches(self, epoch: int, stream: int, streams: int) -> Iterator[list[PlanItem]]:
        """The batches of one stream: its examples, cut into duration batches window by window."""
        if self.training:
            examples = self.training_stream(epoch, stream, streams)
        else:
            examples = self.evaluation_stream(stream, streams)
        rng = random.Random(f"{self.seed}:{epoch}:{stream}/{streams}:batches")
        window_size = max(self.budget["sort_window"], 1)
        drawn = 0
        window: list[PlanItem] = []
        lengths: list[int] = []

        def cut() -> Iterator[list[PlanItem]]:
            batches = bucketed_batches(
                [item.example.frames for item in window], lengths, self.budget,
                seed=rng.randrange(1 << 30) if self.training else None,
            )
            for batch in batches:
                yield [window[i] for i in batch]

        for example in examples:
            window.append(PlanItem(example, epoch, f"{stream}/{streams}:{drawn}"))
            lengths.append(self.length(example))
            drawn += 1
            if len(window) >= window_size:
                yield from cut()
                window, lengths = [], []
        if window:
            yield from cut()

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1, workers: int = 1) -> Iterator[list[PlanItem]]:
        """This rank's batches of the epoch, its workers' streams interleaved round-robin."""
        if not self.training:
            yield from self.stream_batches(epoch, rank, world_size)
            return
        workers = max(workers, 1)
        yield from interleaved([self.stream_batches(epoch, rank * workers + w, world_size * workers)
                                for w in range(workers)])


def interleaved(sequences: list[Iterator[list[PlanItem]]]) -> Iterator[list[PlanItem]]:
    """One batch of each sequence in turn, until all are exhausted (a rank's workers' streams, in the order
    the DataLoader hands batches to its workers; the ranks' leftovers of an epoch, when dealt anew)."""
    while sequences:
        for sequence in list(sequences):
            batch = next(sequence, None)
            if batch is None:
                sequences.remove(sequence)
            else:
                yield batch

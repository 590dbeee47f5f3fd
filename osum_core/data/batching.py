"""Dynamic batching by duration: each batch holds as many utterances as fit a budget of frames and LLM
tokens (OSUM: 3900 frames / 1900 tokens), instead of a fixed count. A budget counts what a step computes:
padded sizes (the longest member times the batch size) for a padded batch, the sum of the members'
sizes for a packed one (``model.packed``), which then grows to use what padding would have wasted.

With buckets (``data.buckets``), utterances are first grouped by duration, and each bucket has its own
budget or a fixed batch size (what ``osum data batch-sizes`` measures on the device): a list of
``{max_seconds: s, batch_size: n}`` or ``{max_seconds: s, max_frames: f, max_tokens: t}``, in rising
``max_seconds``; an utterance goes to the first bucket it fits, and a longer one to the last."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

FRAMES_PER_SECOND = 100  # log-mel frames (10 ms hop)


def duration_batches(
    frames: Sequence[int],
    tokens: Sequence[int],
    max_frames: int,
    max_tokens: int,
    order: Sequence[int] | None = None,
    sort_window: int = 500,
    seed: int | None = None,
    max_items: int | None = None,
    packed: bool = False,
) -> list[list[int]]:
    """Group example indices into batches whose size stays within both budgets.

    Size is the longest member times the batch size (padded), or with `packed` the sum of the members'
    sizes, for frames and for tokens alike. `order` is
    the sequence of example indices to batch (default: all, in order; repeats allowed). Within windows of
    `sort_window` consecutive indices, examples are sorted by length so that batches waste little padding;
    with a `seed`, the batch order is shuffled (a training epoch), otherwise it is kept (evaluation). An
    example larger than a budget on its own gets a batch of its own rather than being dropped. `max_items`
    caps the number of examples in a batch as well."""
    order = list(range(len(frames))) if order is None else list(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), max(sort_window, 1)):
        window = sorted(order[start : start + sort_window], key=lambda i: (frames[i], tokens[i]))
        batch: list[int] = []
        longest_frames = longest_tokens = sum_frames = sum_tokens = 0
        for index in window:
            grown_frames = max(longest_frames, frames[index])
            grown_tokens = max(longest_tokens, tokens[index])
            size = len(batch) + 1
            if packed:
                cost_frames, cost_tokens = sum_frames + frames[index], sum_tokens + tokens[index]
            else:
                cost_frames, cost_tokens = grown_frames * size, grown_tokens * size
            full = max_items is not None and size > max_items
            if batch and (full or cost_frames > max_frames or cost_tokens > max_tokens):
                batches.append(batch)
                batch, grown_frames, grown_tokens, sum_frames, sum_tokens = [], frames[index], tokens[index], 0, 0
            batch.append(index)
            longest_frames, longest_tokens = grown_frames, grown_tokens
            sum_frames, sum_tokens = sum_frames + frames[index], sum_tokens + tokens[index]
        if batch:
            batches.append(batch)
    if seed is not None:
        random.Random(seed).shuffle(batches)
    return batches


def bucket_of(frames: int, buckets: Sequence[Mapping[str, Any]]) -> int:
    """The index of the first bucket whose ``max_seconds`` holds `frames` (10 ms each); the last otherwise."""
    for index, bucket in enumerate(buckets):
        if frames <= float(bucket["max_seconds"]) * FRAMES_PER_SECOND:
            return index
    return len(buckets) - 1


def bucketed_batches(
    frames: Sequence[int],
    tokens: Sequence[int],
    budget: Mapping[str, Any],
    seed: int | None = None,
) -> list[list[int]]:
    """`duration_batches` per duration bucket of ``budget["buckets"]`` (or one budget when there are none);
    with a `seed` the batches of all buckets are shuffled together. ``budget["packed"]``: sizes are sums."""
    buckets = budget.get("buckets") or []
    packed = bool(budget.get("packed"))
    if not buckets:
        return duration_batches(frames, tokens, budget["max_frames"], budget["max_tokens"], sort_window=len(frames) or 1,
                                seed=seed, packed=packed)
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(frames):
        groups.setdefault(bucket_of(length, buckets), []).append(index)
    batches: list[list[int]] = []
    for number in sorted(groups):
        bucket = buckets[number]
        batches += duration_batches(
            frames, tokens,
            int(bucket.get("max_frames") or budget["max_frames"]), int(bucket.get("max_tokens") or budget["max_tokens"]),
            order=groups[number], sort_window=len(groups[number]), max_items=bucket.get("batch_size"), packed=packed,
        )
    if seed is not None:
        random.Random(seed).shuffle(batches)
    return batches


def check_buckets(buckets: Any, key: str = "data.buckets") -> None:
    """Reject a bucket list that is not in rising ``max_seconds`` or names unknown keys."""
    if not buckets:
        return
    if not isinstance(buckets, list):
        raise ValueError(f"{key}: a list of {{max_seconds: s, batch_size: n}} or {{max_seconds, max_frames, max_tokens}}")
    previous = 0.0
    for number, bucket in enumerate(buckets):
        where = f"{key}[{number}]"
        if not isinstance(bucket, Mapping) or "max_seconds" not in bucket:
            raise ValueError(f"{where}: needs max_seconds")
        unknown = set(bucket) - {"max_seconds", "batch_size", "max_frames", "max_tokens"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: max_seconds, batch_size, "
                             "max_frames, max_tokens")
        if float(bucket["max_seconds"]) <= previous:
            raise ValueError(f"{where}: max_seconds must rise from bucket to bucket")
        if bucket.get("batch_size") is not None and int(bucket["batch_size"]) < 1:
            raise ValueError(f"{where}: batch_size must be at least 1")
        previous = float(bucket["max_seconds"])

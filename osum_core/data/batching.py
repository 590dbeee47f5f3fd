"""Dynamic batching by duration: each batch holds as many utterances as fit a budget of padded frames and
padded tokens (OSUM: 3900 frames / 1900 tokens), instead of a fixed count."""

from __future__ import annotations

import random
from collections.abc import Sequence


def duration_batches(
    frames: Sequence[int],
    tokens: Sequence[int],
    max_frames: int,
    max_tokens: int,
    order: Sequence[int] | None = None,
    sort_window: int = 500,
    seed: int | None = None,
) -> list[list[int]]:
    """Group example indices into batches whose padded size stays within both budgets.

    Padded size is the longest member times the batch size, for frames and for tokens alike. `order` is
    the sequence of example indices to batch (default: all, in order; repeats allowed). Within windows of
    `sort_window` consecutive indices, examples are sorted by length so that batches waste little padding;
    with a `seed`, the batch order is shuffled (a training epoch), otherwise it is kept (evaluation). An
    example larger than a budget on its own gets a batch of its own rather than being dropped."""
    order = list(range(len(frames))) if order is None else list(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), max(sort_window, 1)):
        window = sorted(order[start : start + sort_window], key=lambda i: (frames[i], tokens[i]))
        batch: list[int] = []
        longest_frames = longest_tokens = 0
        for index in window:
            grown_frames = max(longest_frames, frames[index])
            grown_tokens = max(longest_tokens, tokens[index])
            size = len(batch) + 1
            if batch and (grown_frames * size > max_frames or grown_tokens * size > max_tokens):
                batches.append(batch)
                batch, grown_frames, grown_tokens = [], frames[index], tokens[index]
            batch.append(index)
            longest_frames, longest_tokens = grown_frames, grown_tokens
        if batch:
            batches.append(batch)
    if seed is not None:
        random.Random(seed).shuffle(batches)
    return batches

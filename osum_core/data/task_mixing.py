"""Mixing tasks in a training epoch by their sampling weights."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def mix_tasks(example_tasks: Sequence[str], weights: Mapping[str, float], seed: int) -> list[int]:
    """Example indices for one epoch, drawn so that each task's share follows its sampling weight.

    With N examples in all and weights w_t, task t contributes n_t = round(N * w_t / sum(w)) examples,
    drawn from its own examples without replacement (reshuffled and drawn again when n_t exceeds its
    pool). A task with weight 0 is left out. Equal weights therefore give equal shares, whatever the
    corpus sizes; the order returned is shuffled."""
    pools: dict[str, list[int]] = {}
    for index, task in enumerate(example_tasks):
        pools.setdefault(task, []).append(index)
    total_weight = sum(weights.get(task, 0.0) for task in pools)
    if total_weight <= 0:
        raise ValueError(f"every task has sampling weight 0: {dict(weights)}")
    rng = random.Random(seed)
    chosen: list[int] = []
    for task in sorted(pools):
        pool = pools[task]
        wanted = round(len(example_tasks) * weights.get(task, 0.0) / total_weight)
        while wanted > 0:
            draw = rng.sample(pool, len(pool))
            chosen.extend(draw[:wanted])
            wanted -= len(draw)
    rng.shuffle(chosen)
    return chosen

"""Learning-rate schedules as multipliers of the base rate, for `torch.optim.lr_scheduler.LambdaLR`.

Not transformers' helpers (`get_cosine_with_min_lr_schedule_with_warmup`, `get_inverse_sqrt_schedule`): their
warm-up starts at 0 (step / warmup: the first step does not train), their inverse square root is one step
behind OSUM/WeNet's WarmupLR, and their cosine climbs again past its last step (an epoch-based run's length
is an estimate from its first epoch)."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(kind: str, warmup_steps: int, total_steps: float, min_ratio: float) -> Callable[[int], float]:
    """``cosine``: linear warm-up, then cosine decay to `min_ratio` at `total_steps` (the run's optimiser
    steps; ``math.inf``, a run without end, keeps the peak), flat after it.
    ``inverse_sqrt``: OSUM/WeNet WarmupLR, linear warm-up then decay as sqrt(warmup / step).
    ``constant``: linear warm-up, then flat."""
    warmup_steps = max(warmup_steps, 0)

    def warm(step: int) -> float | None:
        return (step + 1) / warmup_steps if step < warmup_steps else None

    if kind == "cosine":
        span = max(total_steps - warmup_steps, 1)

        def cosine(step: int) -> float:
            w = warm(step)
            if w is not None:
                return w
            progress = min((step - warmup_steps) / span, 1.0)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return cosine
    if kind == "inverse_sqrt":
        return lambda step: warm(step) or math.sqrt(max(warmup_steps, 1) / (step + 1))
    if kind == "constant":
        return lambda step: warm(step) or 1.0
    raise ValueError(f"optim.schedule must be cosine, inverse_sqrt or constant, got {kind!r}")

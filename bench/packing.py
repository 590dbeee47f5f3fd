"""The pieces of issue 20's speed-up, each timed side by side in one process (medians; BENCHMARKS.md, "Packed
steps and the fused optimiser", and "Per-example attention on a CPU"): the packed against the padded training
step of the suite's models, packed attention example by example against in slots (one attention, and the
long batch's whole step), and torch's fused AdamW against its per-tensor loop.

    python bench/packing.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import suite  # noqa: E402

from osum_core.model import packing  # noqa: E402
from osum_core.model.packing import PackedSequences  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def training_steps(size: str, kind: str, repeats: int) -> str:
    waves = suite.make_waves(kind)
    ours, _ = suite.make_batches(waves, size, suite.LENGTHS[kind]["target"], "cpu")
    steps = {system: suite.train_step_fn("osum", suite.osum_model(size, "cpu", system), ours, "cpu")
             for system in ("osum_padded", "osum")}
    times = suite.interleaved(steps, 1, repeats, "cpu")
    padded, packed = (statistics.median(times[s]) * 1000 for s in ("osum_padded", "osum"))
    return f"train step {size} {kind}: padded {padded:.0f} ms, packed {packed:.0f} ms"


def attention(lengths: list[int], heads: int, causal: bool, repeats: int) -> str:
    sequences = PackedSequences.of(lengths, "cpu")
    query = torch.randn(1, heads, sequences.total, 64, requires_grad=True)
    module = torch.nn.Module()
    module.is_causal = causal

    def step(per_example: bool):
        def run():
            packing.CPU_LOOP_WASTE, packing.CPU_SLOT_MAX_ROWS = (-1.0, 0) if per_example else (2.0, 10**9)
            out, _ = packing.packed_attention(module, query, query, query, None, packing=sequences)
            out.sum().backward()
        return run

    saved = packing.CPU_LOOP_WASTE, packing.CPU_SLOT_MAX_ROWS
    try:
        slots, loop = median_ms(step(False), repeats), median_ms(step(True), repeats)
    finally:
        packing.CPU_LOOP_WASTE, packing.CPU_SLOT_MAX_ROWS = saved
    return (f"attention {len(lengths)} x {min(lengths)}-{max(lengths)} rows, {heads} heads, causal={causal}: "
            f"slots {slots:.1f} ms, per example {loop:.1f} ms (slot waste {sequences.slot_waste:.2f})")


def long_attention_rule(size: str, repeats: int) -> str:
    """The long batch's training step with the long examples attended in slots (the rule before
    CPU_SLOT_MAX_ROWS) and per example (now), alternately in one process."""
    ours, _ = suite.make_batches(suite.make_waves("long"), size, suite.LENGTHS["long"]["target"], "cpu")
    rules = {"slots": 10**9, "per example": packing.CPU_SLOT_MAX_ROWS}
    models = {name: suite.train_step_fn("osum", suite.osum_model(size, "cpu"), ours, "cpu") for name in rules}

    def under(name: str):
        def run():
            packing.CPU_SLOT_MAX_ROWS = rules[name]
            models[name]()
        return run

    saved = packing.CPU_SLOT_MAX_ROWS
    try:
        times = suite.interleaved({name: under(name) for name in rules}, 1, repeats, "cpu")
    finally:
        packing.CPU_SLOT_MAX_ROWS = saved
    slots, each = (statistics.median(times[name]) * 1000 for name in rules)
    return f"train step {size} long, long examples attended: in slots {slots:.0f} ms, per example {each:.0f} ms"


def optimiser(size: str, repeats: int) -> str:
    params = list(suite.osum_model(size, "cpu").parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    times = {}
    for name, options in (("per-tensor", {"foreach": False}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(params, lr=1e-5, **options)
        times[name] = median_ms(optimizer.step, repeats)
    count = sum(p.numel() for p in params) / 1e6
    return f"AdamW step, {size} model ({count:.1f} M parameters): " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    short = [int(len(w) / 160) // 2 for w in suite.make_waves("short")]  # Whisper-base steps of the short batch
    lines = [
        training_steps("tiny", "short", args.repeats), training_steps("base", "short", max(args.repeats // 3, 3)),
        attention(short, 8, False, args.repeats), attention([49] * 20, 4, False, args.repeats),
        attention([44, 39, 52, 47, 41, 45, 48, 50, 38, 43] * 2, 4, True, args.repeats),
        # When a CPU attends per example although the slots hold no padding (CPU_SLOT_MAX_ROWS).
        attention([60] * 20, 4, True, args.repeats), attention([65] * 20, 4, False, args.repeats),
        attention([80] * 20, 4, False, args.repeats), attention([100] * 16, 4, False, args.repeats),
        attention([300] * 8, 4, False, args.repeats),
        attention([1422, 1379], 4, False, args.repeats),  # the tiny encoder's rows of the long batch
        attention([1422, 1379], 8, False, args.repeats),  # the base encoder's (8 heads)
        attention([416, 405], 8, True, args.repeats),  # the base LLM's, causal (keys = queries: no grouped heads)
        long_attention_rule("tiny", args.repeats), long_attention_rule("base", max(args.repeats // 3, 3)),
        optimiser("tiny", args.repeats), optimiser("base", args.repeats),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

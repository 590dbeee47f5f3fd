"""osum's training step in float32 against bf16 autocast (what ``trainer.precision=bf16-mixed`` runs) on this
machine's CPU, side by side in one process: the suite's models and batches (bench/suite.py), each step timed
alternately, medians; and how far the bf16 forward's loss is from the float32 one on the same (initial)
weights, which says nothing about a whole run trained in bf16.

    python bench/precision.py [--sizes tiny,base] [--repeats 5]

On a CPU with AVX512-BF16 or AMX, bf16 matrix products run at about twice the float32 rate; without them
they are emulated and slower. The script prints the CPU's flags that matter, so a figure says where it ran.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import suite  # noqa: E402


def cpu_bf16_flags() -> list[str]:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return sorted({flag for flag in flags.split() if flag in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")})


def step_loss(model, batch, bf16: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch)
        return float(out["token_loss"].sum() / out["token_count"].sum())


def compare(size: str, kind: str, repeats: int) -> str:
    ours, _ = suite.make_batches(suite.make_waves(kind), size, suite.LENGTHS[kind]["target"], "cpu")
    model = suite.osum_model(size, "cpu")
    losses = {bf16: step_loss(model, ours, bf16) for bf16 in (False, True)}  # the same weights, before any step
    # One model per precision, each with its own optimiser, so that both step from the same start.
    steps = {name: suite.train_step_fn("osum", suite.osum_model(size, "cpu"), ours, "cpu", bf16)
             for name, bf16 in (("fp32", False), ("bf16", True))}
    times = suite.interleaved(steps, 1, repeats, "cpu")
    fp32, bf16 = (statistics.median(times[name]) for name in ("fp32", "bf16"))
    return (f"{size} {kind}: step fp32 {fp32 * 1000:.0f} ms, bf16 autocast {bf16 * 1000:.0f} ms, {fp32 / bf16:.2f}x; "
            f"loss {losses[False]:.5f} / {losses[True]:.5f} (relative difference "
            f"{abs(losses[True] - losses[False]) / losses[False]:.1e})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"cpu flags: {', '.join(cpu_bf16_flags()) or 'none of avx512f, avx512_bf16, amx'}; "
          f"threads {torch.get_num_threads()}", flush=True)
    for size in args.sizes.split(","):
        for kind in ("short", "long"):
            print(compare(size, kind, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model-FLOPs utilisation of an osum training step on a GPU: the `osum-7b` encoder (whisper-medium shape) and
adapter (OSUM's: causal convs 1/2/2 + 4 Transformer layers) with a smaller LLM (Qwen2.5-0.5B shape), random
weights, everything trained, bf16 autocast, no gradient checkpointing (so no recomputed FLOPs).

FLOPs of one step (forward + backward) are counted by `torch.utils.flop_counter.FlopCounterMode`; the step
time is the median of --repeats optimiser steps; MFU = FLOPs / time / the GPU's dense bf16 peak (--peak-tflops,
989 for an H100 or H200 SXM).

    python bench/training_mfu.py --batch 16 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_budget import build, resolved_config  # noqa: E402


def counted_flops(model_cfg: dict, batch: dict) -> int:
    """FLOPs of one forward + backward, counted on a twin with eager attention (the counter cannot read
    grouped-query SDPA calls); the arithmetic is the same."""
    twin_cfg = dict(model_cfg, llm=dict(model_cfg["llm"], attention="eager"))
    twin, _, _ = build(twin_cfg, "cuda")
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast("cuda", dtype=torch.bfloat16):
        out = twin(**batch)
        (out["token_loss"].sum() / out["token_count"].sum()).backward()
    del twin
    torch.cuda.empty_cache()
    return counter.get_total_flops()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="Qwen/Qwen2.5-0.5B")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--target-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--json")
    args = parser.parse_args()

    cfg = resolved_config("osum-7b", None)
    model_cfg = cfg["model"]
    model_cfg["llm"].update(path=args.llm, dtype="float32")
    model_cfg["llm"]["lora"]["enabled"] = False
    model_cfg["encoder"]["dtype"] = "float32"
    model_cfg.update(gradient_checkpointing=False, train=["encoder", "adapter", "speech_markers", "llm"])
    model, trained, vocab = build(model_cfg, "cuda")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    b, frames, prompt, target = args.batch, int(args.seconds * 100), 20, args.target_tokens
    batch = dict(
        features=torch.randn(b, frames, 80, device="cuda"), feature_lengths=torch.full((b,), frames, device="cuda"),
        prompt_ids=torch.randint(2, vocab, (b, prompt), device="cuda"), prompt_lengths=torch.full((b,), prompt, device="cuda"),
        target_ids=torch.randint(2, vocab, (b, target), device="cuda"), target_lengths=torch.full((b,), target, device="cuda"),
        target_weights=torch.ones(b, target, device="cuda"),
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**batch)
        (out["token_loss"].sum() / out["token_count"].sum()).backward()
        optimizer.step()

    flops = counted_flops(model_cfg, batch)
    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        began = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    median = statistics.median(times)
    mfu = flops / median / (args.peak_tflops * 1e12)
    row = {"gpu": torch.cuda.get_device_name(), "llm": args.llm, "batch": b, "seconds_per_utterance": args.seconds,
           "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad), "flops_per_step": flops,
           "step_seconds": times, "median": median, "tflops": flops / median / 1e12, "mfu": mfu,
           "audio_seconds_per_second": b * args.seconds / median,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(f"training_mfu gpu={row['gpu']!r} batch={b}x{args.seconds:g}s step={median * 1000:.1f} ms "
          f"{row['tflops']:.1f} TFLOP/s mfu={mfu:.3f} audio_s/s={row['audio_seconds_per_second']:.0f} "
          f"peak={row['peak_gib']:.1f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

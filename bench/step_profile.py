"""Where the suite's osum spends its time (BENCHMARKS.md, "How far each ratio can go"), in one process:

- the training step under torch.profiler: the share of its time in the operations that bench/suite.py's FLOP
  count covers (matrix products, convolutions, attention) and in everything else;
- single float32 matrix products at the step's shapes, the rate these cores reach on them;
- batched generation split into the encoder, the LLM's prefill and the rest (the decoding steps).

    python bench/step_profile.py [--size base] [--repeats 5]
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

from osum_core.config import load_config  # noqa: E402
from osum_core.model.layout import build_layout  # noqa: E402
from osum_core.model.speech_llm import GenerationSettings  # noqa: E402

COUNTED = ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward",
           "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(suite.timed(fn, 1, repeats, "cpu"))


def counted_share(size: str, kind: str) -> str:
    ours, _ = suite.make_batches(suite.make_waves(kind), size, suite.LENGTHS[kind]["target"], "cpu")
    step = suite.train_step_fn("osum", suite.osum_model(size, "cpu"), ours, "cpu")
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    events = profile.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    counted = sum(event.self_cpu_time_total for event in events if event.key in COUNTED)
    return f"train step {size} {kind}: {counted / total:.1%} of the time in counted operations"


def matmul_rates(repeats: int) -> str:
    rates = []
    for m, k, n in ((2844, 512, 2048), (2844, 2048, 512), (832, 512, 1536), (1380, 512, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates.append(f"{m}x{k}x{n} {2 * m * k * n / median_seconds(lambda: a @ b, repeats) / 1e9:.0f}")
    return "torch.mm float32, GFLOP/s: " + ", ".join(rates)


def generation_parts(size: str, repeats: int) -> str:
    ours, _ = suite.make_batches(suite.make_waves("short"), size, 1, "cpu")
    model = suite.osum_model(size, "cpu").eval()
    settings = GenerationSettings(**{**load_config()["eval"]["generation"], "max_new_tokens": 16, "min_new_tokens": 16})

    def encode():
        return model.encode_speech(ours["features"], ours["feature_lengths"], packed=model.packed)

    def prefill():
        speech = encode()
        layout = build_layout(model.embed_tokens(ours["prompt_ids"]), ours["prompt_lengths"], speech["speech"],
                              speech["speech_lengths"], model.speech_markers, pad_left=True)
        model.causal_lm(inputs_embeds=layout.embeds, attention_mask=layout.attention_mask,
                        position_ids=layout.position_ids, use_cache=True, logits_to_keep=1)

    with torch.no_grad():
        parts = [median_seconds(fn, repeats) for fn in (encode, prefill, lambda: model.generate(settings=settings, **ours))]
    encoder, to_prefill, whole = parts
    return (f"generate {size}, 8 utterances x 16 tokens: {whole:.2f} s; encoder {encoder:.2f} s, prefill "
            f"{to_prefill - encoder:.2f} s, the 15 further steps and the rest {whole - to_prefill:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for line in (counted_share(args.size, "short"), counted_share(args.size, "long"), matmul_rates(args.repeats),
                 generation_parts(args.size, args.repeats)):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batched vs one-at-a-time decoding throughput, measured in one run (OSUM decodes one utterance at a time).

Two modes:
  --ckpt DIR --manifest FILE   a trained checkpoint on real audio (the demo model on the demo test set, CPU);
                               also checks that every batch size gives the same answers
  --preset NAME                a preset's shapes with random weights on synthetic 10 s utterances (GPU);
                               random weights rarely emit end-of-text, so every utterance decodes the full
                               --max-new-tokens and the batch sizes do the same work

    python bench/decode_throughput.py --ckpt runs/demo --manifest data/demo/asr/test.jsonl --batch-sizes 1,4,16
    python bench/decode_throughput.py --preset osum-7b --batch-sizes 1,8,32 --utterances 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osum_core.config import load_config  # noqa: E402
from osum_core.model.speech_llm import GenerationSettings  # noqa: E402


def checkpoint_rows(args) -> list[dict]:
    from osum_core.checkpoints.loading import load_checkpoint
    from osum_core.data.manifest import read_manifest
    from osum_core.inference.predict import DecodeStats, Request, predict

    loaded = load_checkpoint(args.ckpt, device=args.device)
    cfg = loaded.config
    lines = read_manifest(args.manifest)[: args.utterances]
    requests = [Request(str(x["key"]), str(x["wav"]), None, args.prompt) for x in lines]
    settings = GenerationSettings(**{**cfg["eval"]["generation"], "max_new_tokens": args.max_new_tokens})
    rows, reference = [], None
    for size in args.batch_sizes:
        stats = DecodeStats()
        texts = [a.text for a in predict(loaded.model, loaded.tokenizer, requests, settings,
                                         n_mels=cfg["data"]["n_mels"], batch_size=size, device=args.device, stats=stats)]
        reference = reference or texts
        rows.append({"batch_size": size, "utterances": len(texts), "seconds": stats.decode_seconds,
                     "audio_seconds": stats.audio_seconds, "same_answers_as_first": texts == reference})
    return rows


def preset_rows(args) -> list[dict]:
    from memory_budget import build, resolved_config

    cfg = resolved_config(args.preset, None)
    cfg["model"]["encoder"]["dtype"] = "bfloat16"
    model, _, vocab = build(cfg["model"], args.device)
    model = model.to(torch.bfloat16).eval()
    frames, count = 1000, args.utterances
    g = torch.Generator(device=args.device).manual_seed(0)
    features = torch.randn(count, frames, 80, device=args.device, generator=g)
    prompt = torch.randint(2, vocab, (count, 20), device=args.device, generator=g)
    settings = GenerationSettings(**{**load_config()["eval"]["generation"], "max_new_tokens": args.max_new_tokens})
    rows = []
    for size in args.batch_sizes:
        model.generate(features[:size], torch.full((size,), frames, device=args.device), prompt[:size],
                       torch.full((size,), 20, device=args.device), settings)  # warm-up
        if args.device == "cuda":
            torch.cuda.synchronize()
        began, tokens = time.perf_counter(), 0
        for start in range(0, count, size):
            n = min(size, count - start)
            ids = model.generate(features[start : start + n], torch.full((n,), frames, device=args.device),
                                 prompt[start : start + n], torch.full((n,), 20, device=args.device), settings)
            tokens += sum(len(i) for i in ids)
        if args.device == "cuda":
            torch.cuda.synchronize()
        rows.append({"batch_size": size, "utterances": count, "seconds": time.perf_counter() - began,
                     "audio_seconds": count * frames / 100, "generated_tokens": tokens})
    return rows


def markdown(rows: list[dict]) -> str:
    base = rows[0]["seconds"] / rows[0]["utterances"]
    lines = ["| batch size | utterances | seconds | utterances/s | real-time factor | speed-up vs first row |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        per = r["seconds"] / r["utterances"]
        lines.append(f"| {r['batch_size']} | {r['utterances']} | {r['seconds']:.2f} | {1 / per:.2f} | "
                     f"{r['seconds'] / r['audio_seconds']:.4f} | {base / per:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt")
    parser.add_argument("--manifest")
    parser.add_argument("--preset")
    parser.add_argument("--prompt", default="Transcribe the audio.")
    parser.add_argument("--batch-sizes", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = checkpoint_rows(args) if args.ckpt else preset_rows(args)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

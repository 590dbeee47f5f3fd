"""Parameter counts and GPU memory budgets of the model presets, per training stage and for inference.

Computed: each preset and stage is resolved from configs/ exactly as `osum fit --preset P --stage S` resolves
it, and the model is built on the meta device by osum's own build code (no weights, no download) from the
published sizes of the checkpoints the presets name (ARCHITECTURES below, copied from their config.json).
Parameters are counted per part, in the dtype each part gets; memory is

    weights        sum over parameters of their dtype's bytes (frozen parts in bf16, trained parts fp32)
    gradients      4 bytes per trained parameter
    optimiser      8 bytes per trained parameter (AdamW's two fp32 moments)
    activations    an estimate for one micro-batch of the preset's budget (data.max_tokens LLM tokens,
                   data.max_frames mel frames) with gradient checkpointing: every LLM layer keeps its bf16
                   input (tokens x hidden x 2 B), one layer is recomputed at a time (tokens x (6 hidden +
                   4 ffn) x 2 B), the logits of the target tokens (a third of the tokens) cost 10 B per
                   vocabulary entry (bf16, fp32 copy, gradient), and a trained encoder keeps its fp32 layer
                   inputs (frames/2 x width x 4 B per layer) plus one layer's working set

Checkpoint sizes (a second table): what ``last.ckpt`` holds per preset and stage, computed from the same
models (tied tensors once, persistent buffers included; Lightning's other keys are tens of KB):

    before         every weight in its dtype + AdamW's two moments (in the trained parameter's dtype, fp32)
    now            every weight except the frozen parameters of a part read from a source, which
                   osum_core.checkpoints.frozen_parts leaves out (the LLM: model.llm.path; the encoder is kept,
                   since it does not record its source), + AdamW's two moments
    ZeRO-2         the folder DeepSpeed writes under bf16: "module" with every weight in bf16, the frozen ones
                   again as "frozen_param_fragments", and per trained parameter its fp32 master copy and two fp32
                   moments (12 B); with exclude_frozen_parameters=True, the trained weights in bf16 + 12 B each

Lightning's bf16-mixed keeps no master copy: the trained weights are fp32 themselves.

Measured (`--measure`, needs a CUDA GPU): the same models materialised with random weights on the GPU, one
optimiser step on a synthetic micro-batch at the budget (4 utterances of 975 mel frames, 20 prompt and 300
target tokens each: 1,776 LLM tokens), peak `torch.cuda.max_memory_allocated`; and for inference, bf16
batched greedy decoding of 8 utterances of 10 s with 64 new tokens.

    python bench/memory_budget.py                 # the computed table (markdown)
    python bench/memory_budget.py --measure       # also measured peaks (GPU)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osum_core.checkpoints.frozen_parts import frozen_keys  # noqa: E402
from osum_core.config import load_config, preset_files  # noqa: E402
from osum_core.model.build import build_speech_llm  # noqa: E402
from osum_core.model.freezing import set_trainable  # noqa: E402
from osum_core.model.speech_llm import GenerationSettings  # noqa: E402

# From each checkpoint's config.json on the Hugging Face Hub.
ARCHITECTURES = {
    "openai/whisper-medium": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096,
                                  num_mel_bins=80, max_source_positions=1500),
    "openai/whisper-small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072,
                                 num_mel_bins=80, max_source_positions=1500),
    "Qwen/Qwen2-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "Qwen/Qwen2.5-7B-Instruct": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                     tie_word_embeddings=False),
    "Qwen/Qwen2.5-0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                              num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
PRESETS = ["osum-7b", "osum-7b-instruct", "small-1.5b", "small-0.5b"]
STAGES = ["adapter", "adapter-encoder", "adapter-encoder-lora"]
GIB = 1024**3


def resolved_config(preset: str, stage: str | None) -> dict:
    return load_config("fit", preset_files([preset], [stage] if stage else []))


def offline_model_config(model_cfg: dict) -> dict:
    """The model section with the named checkpoints replaced by their sizes (random init, no download)."""
    cfg = copy.deepcopy(model_cfg)
    encoder, llm = cfg["encoder"], cfg["llm"]
    encoder["config"] = dict(ARCHITECTURES[encoder["path"]], dropout=0.0)
    llm["config"] = {k: v for k, v in ARCHITECTURES[llm["path"]].items() if k != "vocab_size"}
    llm["model_type"] = "qwen2"
    encoder["path"] = llm["path"] = None
    return cfg


def build(model_cfg: dict, device: str):
    vocab = ARCHITECTURES[model_cfg["llm"]["path"]]["vocab_size"]
    cfg = offline_model_config(model_cfg)
    with torch.device(device):
        model = build_speech_llm(cfg, vocab, eos_token_id=0, pad_token_id=1)
    trained = set_trainable(model, cfg["train"])
    return model, trained, vocab


def parts(model) -> dict[str, int]:
    llm = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    return {
        "encoder": sum(p.numel() for p in model.encoder.parameters()),
        "adapter": sum(p.numel() for p in model.adapter.parameters()),
        "llm": llm,
        "lora": lora,
    }


def activation_estimate(cfg: dict, vocab: int, train_encoder: bool) -> int:
    tokens, frames = cfg["data"]["max_tokens"], cfg["data"]["max_frames"]
    llm = ARCHITECTURES[cfg["model"]["llm"]["path"]]
    enc = ARCHITECTURES[cfg["model"]["encoder"]["path"]]
    h, f, layers = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    total = layers * tokens * h * 2 + tokens * (6 * h + 4 * f) * 2 + (tokens // 3) * vocab * 10
    if train_encoder:
        steps, d = frames // 2, enc["d_model"]
        total += enc["encoder_layers"] * steps * d * 4 + steps * (6 * d + 4 * enc["encoder_ffn_dim"]) * 4
    return total


def budget(preset: str, stage: str | None) -> dict:
    cfg = resolved_config(preset, stage)
    model, trained, vocab = build(cfg["model"], "meta")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row = {
        "preset": preset,
        "stage": stage or "inference",
        "params": parts(model),
        "trained": trained_count,
        "weights_gib": weights / GIB,
    }
    if stage is None:
        # bf16 inference: the trained fp32 parts are cast too; KV cache for 8 x (10 s speech + 100 tokens).
        llm = ARCHITECTURES[cfg["model"]["llm"]["path"]]
        head = llm["hidden_size"] // llm["num_attention_heads"]
        kv = 2 * llm["num_hidden_layers"] * llm["num_key_value_heads"] * head * 2 * 8 * (125 + 120)
        row["total_gib"] = (sum(p.numel() for p in model.parameters()) * 2 + kv) / GIB
        return row
    state = trained_count * (4 + 8)
    act = activation_estimate(cfg, vocab, "encoder" in cfg["model"]["train"])
    row.update(optimiser_and_grads_gib=state / GIB, activations_gib=act / GIB, total_gib=(weights + state + act) / GIB,
               checkpoint_gib=checkpoint_sizes(model, cfg["model"]))
    return row


def checkpoint_sizes(model, model_cfg: dict) -> dict[str, float]:
    """last.ckpt before and now, and DeepSpeed's ZeRO-2 folder (bf16) without and with exclude_frozen_parameters,
    in GiB (module docstring)."""
    # The presets' paths; the encoder does not record its source, so a frozen encoder stays in checkpoints.
    sources = {"encoder": model_cfg["encoder"]["path"], "llm": model_cfg["llm"]["path"]}
    left_out = {key for keys in frozen_keys(model, sources).values() for key in keys}
    params = dict(model.named_parameters())  # tied tensors once, as torch.save stores them
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    buffers = sum(t.numel() * t.element_size() for name, t in model.state_dict().items() if name not in names)  # persistent
    size = {name: p.numel() * p.element_size() for name, p in params.items()}
    trained = [name for name, p in params.items() if p.requires_grad]
    moments = sum(2 * size[name] for name in trained)
    trained_count = sum(params[name].numel() for name in trained)
    frozen_count = sum(p.numel() for p in params.values() if not p.requires_grad)
    return {
        "before": (sum(size.values()) + buffers + moments) / GIB,
        "now": (sum(v for name, v in size.items() if name not in left_out) + buffers + moments) / GIB,
        "zero2": (2 * (trained_count + 2 * frozen_count) + 12 * trained_count) / GIB,
        "zero2_excluded": 14 * trained_count / GIB,
    }


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    if device != "cuda":
        return 0.0  # a dry run of the code path on CPU
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GIB


def measure_training(preset: str, stage: str, device: str = "cuda") -> float:
    cfg = resolved_config(preset, stage)
    reset_peak(device)
    model, _, vocab = build(cfg["model"], device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator(device=device).manual_seed(0)
    b, frames, prompt, target = 4, 975, 20, 300
    batch = dict(
        features=torch.randn(b, frames, 80, device=device, generator=g), feature_lengths=torch.full((b,), frames, device=device),
        prompt_ids=torch.randint(2, vocab, (b, prompt), device=device, generator=g), prompt_lengths=torch.full((b,), prompt, device=device),
        target_ids=torch.randint(2, vocab, (b, target), device=device, generator=g), target_lengths=torch.full((b,), target, device=device),
        target_weights=torch.ones(b, target, device=device),
    )
    for _ in range(2):  # the second step has the optimiser state allocated
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(**batch)
        loss = out["token_loss"].sum() / out["token_count"].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = peak_gib(device)
    del model, optimizer, out, loss
    return peak


def measure_inference(preset: str, device: str = "cuda") -> tuple[float, float]:
    cfg = resolved_config(preset, None)
    cfg["model"]["encoder"]["dtype"] = "bfloat16"
    reset_peak(device)
    model, _, vocab = build(cfg["model"], device)
    model = model.to(torch.bfloat16).eval()
    b, frames = 8, 1000
    args = (torch.randn(b, frames, 80, device=device), torch.full((b,), frames, device=device),
            torch.randint(2, vocab, (b, 20), device=device), torch.full((b,), 20, device=device))
    began = time.perf_counter()
    model.generate(*args, GenerationSettings(**{**load_config()["eval"]["generation"], "max_new_tokens": 64}))
    peak = peak_gib(device)
    seconds = time.perf_counter() - began
    del model
    return peak, seconds


def markdown(rows: list[dict]) -> str:
    lines = [
        "| preset | stage | encoder | adapter | LLM | LoRA | trained | weights | grads + AdamW | activations (est.) | total |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["params"]
        cells = [r["preset"], r["stage"], f"{p['encoder'] / 1e6:.0f}M", f"{p['adapter'] / 1e6:.1f}M",
                 f"{p['llm'] / 1e9:.2f}B", f"{p['lora'] / 1e6:.1f}M", f"{r['trained'] / 1e6:.1f}M",
                 f"{r['weights_gib']:.1f} GiB", f"{r.get('optimiser_and_grads_gib', 0):.1f} GiB",
                 f"{r.get('activations_gib', 0):.1f} GiB", f"**{r['total_gib']:.1f} GiB**"]
        if "measured_gib" in r:
            cells[-1] += f" (measured {r['measured_gib']:.1f})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkpoint_markdown(rows: list[dict]) -> str:
    lines = ["| preset | stage | trained | last.ckpt before | last.ckpt now | DeepSpeed ZeRO-2 folder (bf16) | "
             "with exclude_frozen_parameters |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "checkpoint_gib" in r:
            c = r["checkpoint_gib"]
            lines.append(f"| {r['preset']} | {r['stage']} | {r['trained'] / 1e6:.1f}M | {c['before']:.1f} GiB | "
                         f"**{c['now']:.2f} GiB** | {c['zero2']:.1f} GiB | {c['zero2_excluded']:.2f} GiB |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure peaks on the GPU too")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for preset in args.presets.split(","):
        for stage in [*STAGES, None]:
            row = budget(preset, stage)
            if args.measure:
                if stage is None:
                    row["measured_gib"], row["decode_seconds"] = measure_inference(preset)
                else:
                    row["measured_gib"] = measure_training(preset, stage)
                print(f"{preset} {row['stage']}: computed {row['total_gib']:.2f} GiB, measured {row['measured_gib']:.2f} GiB",
                      file=sys.stderr, flush=True)
            rows.append(row)
    print(markdown(rows))
    print()
    print(checkpoint_markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check (issue 20): one unattended run on one NVIDIA GPU, under 5 minutes, that writes one JSON file.

    bench/gpu_check.sh [OUT.json] [--only PART,...]   # OUT.json: bench/results/gpu_check.json by default
    bench/gpu_check.sh OUT.json --smoke               # the same code paths on CPU at tiny sizes (or GPU_CHECK_SMOKE=1)

Parts, in this order, each in processes of its own with its own time limit (the whole stays within
--budget-seconds). A part that fails or runs out of time writes its error into the JSON and the next part
runs; the JSON is rewritten after every part, so it exists whatever happens:

  mfu_qwen05b      MFU of a training step (bf16 autocast, packed) of osum-7b's encoder (whisper-medium shape)
                   and adapter (OSUM's) with a Qwen2.5-0.5B-shaped LLM, random weights, everything trained, no
                   gradient checkpointing, on one micro-batch at the osum-7b preset's budget
                   (data.max_frames / data.max_tokens, counted as the loader counts a packed batch: sums of
                   real frames and tokens)
  mfu_osum7b_lora  the same for osum-7b's stage adapter-encoder-lora: a Qwen2-7B-shaped LLM in bf16 with LoRA;
                   encoder, adapter, speech markers and LoRA trained; gradient checkpointing as the preset says
  vs_qwen2_audio   bench/suite.py's train_short and generate at the base size: osum's ratios to Qwen2-Audio
  fit_ddp          `osum fit --tasks asr --strategy ddp trainer.devices=1` on tar shards of a small demo corpus
                   (`osum data synth` + `osum data shard`, made in the background while the MFU parts run),
                   then `osum fit --resume` to twice the steps
  fit_deepspeed    the same with --strategy deepspeed_zero2, after `pip install deepspeed` (60 s at most, in
                   the background from the start) when deepspeed is not installed

An MFU step is the model's forward, backward and fused AdamW step, timed without Lightning (no gradient
clipping, no finite-gradient check): median of REPEATS steps after WARMUP. Model FLOPs are `model_flops`
below, whose docstring states the formula (it goes into the JSON as ``flop_formula``); each MFU part also
counts one step with torch's FlopCounterMode (recomputation switched off) as a cross-check.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import inspect
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = 989.0  # dense bf16 of an H100 / H200 SXM (--peak-tflops for other GPUs)
PARTS = ("mfu_qwen05b", "mfu_osum7b_lora", "vs_qwen2_audio", "fit_ddp", "fit_deepspeed")


# -- model FLOPs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One utterance of a batch, by its real sizes."""

    frames: int  # mel frames (10 ms)
    prompt_tokens: int
    target_tokens: int


@dataclass(frozen=True)
class Shapes:
    """The sizes `model_flops` reads; `shapes_of` takes them from a built `SpeechLLM`."""

    mels: int
    encoder_width: int
    encoder_layers: int
    encoder_ffn: int
    encoder_strides: tuple[int, ...]
    adapter_strides: tuple[int, ...]
    adapter_layers: int
    adapter_ffn: int
    llm_width: int
    llm_layers: int
    llm_query_width: int  # attention heads x head size
    llm_kv_width: int  # key/value heads x head size
    llm_ffn: int
    vocab: int
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    turn_tokens: int = 0  # a chat template's turn markers around prompt and speech


def model_flops(shapes: Shapes, examples: Sequence[Example], trained: Collection[str]) -> dict[str, Any]:
    """Model FLOPs of one training step (forward + backward) over the REAL rows of `examples`.

    A product of an [n, a] and an [a, b] matrix is 2·n·a·b FLOPs. Per example: T mel frames, P prompt and Y
    target tokens; E encoder steps (Whisper's convolutions, kernel 3, padding 1: t -> (t-1)//s + 1 per stride,
    T1 after the first), S speech steps (the adapter's causal convolutions: t -> ceil(t/s) per stride, S_k
    after the k-th), L = P + 2 + S + Y LLM tokens (+ a chat template's turn tokens); d = encoder width,
    h = LLM width, q / kv = the LLM's query / key-value widths, f = FFN widths, V = vocabulary, r = LoRA rank.

    Forward:
      encoder  2·3·mels·d·T1 + 2·3·d²·E                                     the two convolutions
               + layers · (2·(4·d² + 2·d·f_enc)·E + 4·d·E²)                 projections, FFN; QKᵀ and AV
      adapter  Σ_k 2·3·d²·S_k + 2·d²·S                                      convolutions, input layer
               + layers · (2·(4·d² + 2·d·f_ad)·S + 4·d·S²) + 2·d·h·S        Transformer layers, projection
      llm      layers · (2·(2·h·q + 2·h·kv + 3·h·f)·L + 4·q·L²) + 2·h·V·Y   logits at target positions only
      lora     layers · 2·r·Σ_targets(in + out)·L
    Attention counts the whole L x L score matrix, causal or not (as PaLM's MFU does).

    Backward, per part (encoder, adapter, LLM): the gradient of a product's input costs its forward again
    when that input depends on a trained parameter, which is every product downstream of the first trained
    one; never the mel features, so never the encoder's first convolution, and not the first products of a
    part whose input needs no gradient. Attention's two products have two such inputs each: twice their
    forward. The gradient of a weight costs its forward again only when that weight trains. LoRA's
    backward is twice its forward when it trains (input and weight gradients). Not counted: recomputation
    under gradient checkpointing (model FLOPs, not hardware FLOPs), elementwise work (norms, activations,
    softmax, embeddings' lookups) and the optimiser; padding (a batch padded to its longest member, the
    adapter's padded rows) computes more than this.

    MFU = model FLOPs of the step / step time / the GPU's peak dense bf16 FLOP/s.
    `trained`: the parts of ``model.train`` (encoder, adapter, speech_markers, llm, lora)."""
    s, trained = shapes, set(trained)
    d, h, q, kv, f = s.encoder_width, s.llm_width, s.llm_query_width, s.llm_kv_width, s.llm_ffn
    widths = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, f),
              "up_proj": (h, f), "down_proj": (f, h)}
    lora_width = sum(sum(widths[name]) for name in s.lora_targets)
    weights = dict.fromkeys(("encoder", "adapter", "llm"), 0)  # products with a weight
    attention = dict.fromkeys(("encoder", "adapter", "llm"), 0)  # QKᵀ and AV
    first = dict.fromkeys(("encoder", "adapter", "llm"), 0)  # products that read the part's input
    lora = 0
    rows = dict.fromkeys(("utterances", "frames", "encoder_steps", "speech_steps", "llm_tokens", "target_tokens"), 0)
    for example in examples:
        steps, channels = example.frames, s.mels
        for k, stride in enumerate(s.encoder_strides):
            steps = (steps - 1) // stride + 1
            cost = 2 * 3 * channels * d * steps
            first["encoder"] += cost if k == 0 else 0
            weights["encoder"] += cost
            channels = d
        encoder_steps = steps
        weights["encoder"] += s.encoder_layers * 2 * (4 * d * d + 2 * d * s.encoder_ffn) * steps
        attention["encoder"] += s.encoder_layers * 4 * d * steps * steps
        for k, stride in enumerate(s.adapter_strides):
            steps = -(-steps // stride)
            cost = 2 * 3 * d * d * steps
            first["adapter"] += cost if k == 0 else 0
            weights["adapter"] += cost
        speech = steps
        first["adapter"] += 0 if s.adapter_strides else 2 * d * d * speech
        weights["adapter"] += (2 * d * d * speech + s.adapter_layers * 2 * (4 * d * d + 2 * d * s.adapter_ffn) * speech
                               + 2 * d * h * speech)
        attention["adapter"] += s.adapter_layers * 4 * d * speech * speech
        length = example.prompt_tokens + 2 + speech + example.target_tokens + s.turn_tokens
        weights["llm"] += (s.llm_layers * 2 * (2 * h * q + 2 * h * kv + 3 * h * f) * length
                           + 2 * h * s.vocab * example.target_tokens)
        first["llm"] += 2 * (h * q + 2 * h * kv + 2 * h * f) * length  # layer 1's q, k, v, gate, up
        attention["llm"] += s.llm_layers * 4 * q * length * length
        lora += s.llm_layers * 2 * s.lora_rank * lora_width * length
        for key, value in (("utterances", 1), ("frames", example.frames), ("encoder_steps", encoder_steps),
                           ("speech_steps", speech), ("llm_tokens", length), ("target_tokens", example.target_tokens)):
            rows[key] += value
    trains = {part: part in trained for part in ("encoder", "adapter", "llm")}
    lora_trains = bool(s.lora_rank) and bool(trained & {"lora", "llm"})
    # Whether a part's input depends on a trained parameter: what lies before it, or for the LLM its own
    # token embeddings, which train with it.
    input_needs_grad = {"encoder": False, "adapter": trains["encoder"],
                        "llm": trains["encoder"] or trains["adapter"] or trains["llm"] or "speech_markers" in trained}
    active = {"encoder": trains["encoder"], "adapter": input_needs_grad["adapter"] or trains["adapter"],
              "llm": input_needs_grad["llm"] or lora_trains}
    parts: dict[str, dict[str, int]] = {}
    for part in ("encoder", "adapter", "llm"):
        inputs = 0
        if active[part]:
            inputs = weights[part] - (0 if input_needs_grad[part] else first[part]) + 2 * attention[part]
        weight_grads = weights[part] if trains[part] else 0
        parts[part] = {"forward": weights[part] + attention[part], "input_gradients": inputs,
                       "weight_gradients": weight_grads, "backward": inputs + weight_grads}
    lora_inputs = lora if lora_trains or active["llm"] else 0
    lora_weights = lora if lora_trains else 0
    parts["lora"] = {"forward": lora, "input_gradients": lora_inputs, "weight_gradients": lora_weights,
                     "backward": lora_inputs + lora_weights}
    forward = sum(p["forward"] for p in parts.values())
    backward = sum(p["backward"] for p in parts.values())
    return {"forward": forward, "backward": backward, "total": forward + backward, "parts": parts, "rows": rows,
            "trained": sorted(trained)}


def shapes_of(model: Any) -> Shapes:
    """The sizes of a built `SpeechLLM` (OSUM's layout: no CTC head, no time embeddings)."""
    if model.ctc_head is not None or model.time_embedding is not None:
        raise ValueError("model_flops covers OSUM's model: no CTC head (model.ctc_head) and no time embeddings")
    whisper, llm = model.encoder.whisper.config, model.causal_lm.config
    layers = list(model.adapter.transformer.layers) if model.adapter.transformer is not None else []
    head = getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads
    lora = getattr(model.llm, "peft_config", {}).get("default")
    targets = tuple(sorted(lora.target_modules)) if lora is not None else ()
    unknown = set(targets) - {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if unknown:
        raise ValueError(f"model_flops knows Qwen2's linear layers, not the LoRA targets {sorted(unknown)}")
    return Shapes(
        mels=whisper.num_mel_bins, encoder_width=whisper.d_model, encoder_layers=whisper.encoder_layers,
        encoder_ffn=whisper.encoder_ffn_dim, encoder_strides=tuple(model.encoder.conv_strides),
        adapter_strides=tuple(model.adapter.conv_strides), adapter_layers=len(layers),
        adapter_ffn=layers[0].linear1.out_features if layers else 0, llm_width=llm.hidden_size,
        llm_layers=llm.num_hidden_layers, llm_query_width=llm.num_attention_heads * head,
        llm_kv_width=llm.num_key_value_heads * head, llm_ffn=llm.intermediate_size,
        vocab=model.causal_lm.lm_head.out_features, lora_rank=lora.r if lora is not None else 0, lora_targets=targets,
        turn_tokens=model.turn_before.numel() + model.turn_after.numel(),
    )


# -- part 1: MFU of a training step (run in a process of its own: --mfu-case) -----------------------------------
MFU_CASES = {
    "qwen05b": "osum-7b's encoder and adapter with a Qwen2.5-0.5B-shaped LLM (fp32 weights), everything trained",
    "osum7b_lora": "osum-7b, stage adapter-encoder-lora: Qwen2-7B-shaped LLM (bf16) with LoRA; encoder (fp32), "
                   "adapter, speech markers and LoRA trained",
}
# The utterances that fill the budget: durations drawn uniformly (seconds), the prompt's tokens (OSUM's
# Chinese prompts are about 20), and target tokens per second of speech (a transcript and its label).
UTTERANCES = {"seconds": (3.0, 8.0), "prompt_tokens": 20, "tokens_per_second": 4.0}
WARMUP, REPEATS = 3, 10
# --smoke: tiny stand-ins of the real shapes and budget, so that every code path runs on a CPU in seconds.
SMOKE_ENCODER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
                     max_source_positions=1500)
SMOKE_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512)
SMOKE_UTTERANCES = {"seconds": (1.0, 2.5), "prompt_tokens": 8, "tokens_per_second": 4.0}
SMOKE_BUDGET = {"max_frames": 600, "max_tokens": 300}
SMOKE_WARMUP, SMOKE_REPEATS = 1, 2


def mfu_config(case: str, smoke: bool) -> tuple[dict, int, dict]:
    """(model config section with the checkpoints replaced by their shapes, vocabulary, batch budget)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from memory_budget import ARCHITECTURES, resolved_config

    cfg = resolved_config("osum-7b", "adapter-encoder-lora" if case == "osum7b_lora" else None)
    model = cfg["model"]
    if case == "qwen05b":
        model["llm"].update(path="Qwen/Qwen2.5-0.5B", dtype="float32")
        model["llm"]["lora"]["enabled"] = False
        model["encoder"]["dtype"] = "float32"
        model.update(gradient_checkpointing=False, train=["encoder", "adapter", "speech_markers", "llm"])
    budget = {key: cfg["data"][key] for key in ("max_frames", "max_tokens")}
    encoder, llm = ARCHITECTURES[model["encoder"]["path"]], ARCHITECTURES[model["llm"]["path"]]
    if smoke:
        encoder, llm = SMOKE_ENCODER, dict(SMOKE_LLM, tie_word_embeddings=llm["tie_word_embeddings"])
        model["adapter"].update(layers=1, ffn_size=128)
        budget = dict(SMOKE_BUDGET)
    model["encoder"].update(path=None, config=dict(encoder, dropout=0.0))
    model["llm"].update(path=None, model_type="qwen2", config={k: v for k, v in llm.items() if k != "vocab_size"})
    return model, llm["vocab_size"], budget


def budget_examples(model: Any, budget: dict, utterances: dict, packed: bool, seed: int = 0) -> list[Example]:
    """Utterances drawn from `utterances` until the next would break the budget, as the loader counts it:
    sums of real frames and LLM tokens when packed, the longest member times the count when padded."""
    rng = random.Random(seed)
    examples: list[Example] = []
    lengths: list[int] = []
    while True:
        seconds = rng.uniform(*utterances["seconds"])
        example = Example(round(seconds * 100), utterances["prompt_tokens"],
                          max(1, round(seconds * utterances["tokens_per_second"])))
        length = model.sequence_length(example.frames, example.prompt_tokens, example.target_tokens)
        frames = [e.frames for e in examples] + [example.frames]
        tokens = [*lengths, length]
        cost = (sum(frames), sum(tokens)) if packed else (max(frames) * len(frames), max(tokens) * len(tokens))
        if cost[0] > budget["max_frames"] or cost[1] > budget["max_tokens"]:
            break
        examples.append(example)
        lengths.append(length)
    if not examples:
        raise ValueError(f"no utterance of {utterances['seconds']} s fits the budget {budget}")
    return examples


def make_batch(examples: Sequence[Example], mels: int, vocab: int, device: str) -> dict:
    """The collated batch of `examples` (padded as the loader pads it; a packed model packs it itself)."""
    import torch

    g = torch.Generator().manual_seed(0)
    b = len(examples)
    frames = torch.tensor([e.frames for e in examples])
    prompts = torch.tensor([e.prompt_tokens for e in examples])
    targets = torch.tensor([e.target_tokens for e in examples])
    features = torch.zeros(b, int(frames.max()), mels)
    for i, example in enumerate(examples):
        features[i, : example.frames] = torch.randn(example.frames, mels, generator=g)
    target_ids = torch.randint(2, vocab, (b, int(targets.max())), generator=g)
    batch = dict(features=features, feature_lengths=frames, prompt_lengths=prompts, target_lengths=targets,
                 prompt_ids=torch.randint(2, vocab, (b, int(prompts.max())), generator=g), target_ids=target_ids,
                 target_weights=(torch.arange(target_ids.shape[1])[None, :] < targets[:, None]).float())
    return {key: value.to(device) for key, value in batch.items()}


def set_checkpointing(model: Any, on: bool) -> None:
    """Gradient checkpointing of the encoder and the LLM on (as `build_speech_llm` turns it on) or off."""
    for part in (model.encoder.whisper, model.llm):
        if on:
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            part.gradient_checkpointing_disable()


def counted_flops(model: Any, batch: dict, device: str, checkpointing: bool) -> int:
    """torch's FlopCounterMode over one forward + backward, recomputation switched off. It counts what the
    kernels compute (padded rows and the flash kernels' recomputed scores included)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if checkpointing:
        set_checkpointing(model, False)
    # The counter has no formula for the CPU's fused attention kernel; the math backend it counts as matmuls.
    kernels = sdpa_kernel(SDPBackend.MATH) if device == "cpu" else contextlib.nullcontext()
    counter = FlopCounterMode(display=False)
    try:
        with kernels, counter:
            with torch.autocast(device, dtype=torch.bfloat16):
                out = model(**batch)
            (out["token_loss"].sum() / out["token_count"].sum()).backward()
    finally:
        model.zero_grad(set_to_none=True)
        if checkpointing:
            set_checkpointing(model, True)
    return counter.get_total_flops()


def peak_memory(device: str) -> tuple[float, str]:
    """(GiB, what was measured): the CUDA allocator's peak, or on a CPU this process's peak resident set."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
    status = Path("/proc/self/status").read_text()
    kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    return kib / 2**20, "peak resident set of the process (VmHWM)"


def mfu_case(case: str, smoke: bool, peak_tflops: float) -> dict:
    import torch

    from osum_core.model.build import build_speech_llm
    from osum_core.model.freezing import set_trainable

    device = "cpu" if smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (--smoke runs the same code on a CPU at tiny sizes)")
    model_cfg, vocab, budget = mfu_config(case, smoke)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    with torch.device(device):
        model = build_speech_llm(model_cfg, vocab, eos_token_id=0, pad_token_id=1)
    set_trainable(model, model_cfg["train"])
    model.train()
    built = time.perf_counter() - began
    utterances = SMOKE_UTTERANCES if smoke else UTTERANCES
    examples = budget_examples(model, budget, utterances, model.packed)
    shapes = shapes_of(model)
    batch = make_batch(examples, shapes.mels, vocab, device)
    flops = model_flops(shapes, examples, model_cfg["train"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(**batch)
        (out["token_loss"].sum() / out["token_count"].sum()).backward()
        optimizer.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    warmup, repeats = (SMOKE_WARMUP, SMOKE_REPEATS) if smoke else (WARMUP, REPEATS)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak_gib, peak_kind = peak_memory(device)
    optimizer.zero_grad(set_to_none=True)
    counted = counted_flops(model, batch, device, model_cfg["gradient_checkpointing"])
    rows = flops["rows"]
    audio = rows["frames"] / 100
    return {
        "case": case, "what": MFU_CASES[case], "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "smoke": smoke, "autocast": "bfloat16", "packed": model.packed,
        "gradient_checkpointing": model_cfg["gradient_checkpointing"], "trained_parts": model_cfg["train"],
        "params": sum(p.numel() for p in model.parameters()), "trained_params": sum(p.numel() for p in params),
        "shapes": asdict(shapes), "budget": budget, "utterances": {**utterances, "drawn": [asdict(e) for e in examples]},
        "batch": {**rows, "audio_seconds": audio, "padded_frames": len(examples) * max(e.frames for e in examples)},
        "build_seconds": built, "warmup": warmup, "step_seconds": times, "median_step_seconds": median,
        "model_flops": flops, "model_tflops_per_s": flops["total"] / median / 1e12, "peak_tflops": peak_tflops,
        "mfu": flops["total"] / median / (peak_tflops * 1e12),
        "llm_tokens_per_s": rows["llm_tokens"] / median, "target_tokens_per_s": rows["target_tokens"] / median,
        "audio_seconds_per_s": audio / median, "peak_memory_gib": peak_gib, "peak_memory_kind": peak_kind,
        "counted_flops": counted, "formula_over_counted": flops["total"] / counted if counted else None,
    }


# -- running the parts: processes with time limits --------------------------------------------------------------
class PartError(Exception):
    """A part's failure, with the tail of the log that tells why."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class Stopped(Exception):
    """SIGTERM (gpu_check.sh's overall time limit, or a person): stop, keeping what was measured."""


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def last_line(path: Path) -> str:
    """The last line of a log, which usually names the error."""
    lines = [line.strip() for line in tail(path).splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def stop_group(process: subprocess.Popen) -> None:
    """End a process we started and the processes it started (its own session: DDP ranks, loader workers)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Job:
    """A command running in its own session, its output in a log file."""

    def __init__(self, command: Sequence[str], log: Path) -> None:
        self.command, self.log, self.began = [str(c) for c in command], log, time.monotonic()
        self.seconds: float | None = None
        self.error: PartError | None = None
        with log.open("w") as out:
            self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def finish(self, until: float, what: str) -> float:
        """Wait until the monotonic time `until`; the seconds it ran, or PartError (failed or too slow). A job
        that has finished answers the same again (two parts wait for the corpus)."""
        if self.error is not None:
            raise self.error
        if self.seconds is None:
            try:
                rc = self.process.wait(timeout=max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_group(self.process)
                self.error = PartError(f"{what} ran past its time limit ({time.monotonic() - self.began:.0f} s) and "
                                       "was stopped", tail(self.log))
                raise self.error from None
            finally:
                if self.process.poll() is None:  # Stopped (SIGTERM) while waiting
                    stop_group(self.process)
            if rc != 0:
                self.error = PartError(f"{what} exited with status {rc}: {last_line(self.log)}", tail(self.log))
                raise self.error
            self.seconds = time.monotonic() - self.began
        return self.seconds


@dataclass
class Check:
    smoke: bool
    work: Path
    out: Path
    deadline: float  # monotonic
    peak_tflops: float
    began: float
    started: str
    corpus: Job | None = None
    pip: Job | None = None
    pip_note: str = ""

    def run(self, command: Sequence[str], until: float, name: str) -> float:
        return Job(command, self.work / f"{name}.log").finish(until, " ".join(map(str, command[1:4])) + " ...")


def part_mfu(case: str) -> Callable[[Check, float], dict]:
    def run(check: Check, until: float) -> dict:
        result = check.work / f"mfu_{case}.json"
        command = [sys.executable, __file__, "--mfu-case", case, "--result", str(result),
                   "--peak-tflops", str(check.peak_tflops), *(["--smoke"] if check.smoke else [])]
        try:
            check.run(command, until, f"mfu_{case}")
        except PartError:
            if not result.is_file():  # out of time, or killed: the log tells
                raise
        answer = json.loads(result.read_text())
        if "error" in answer:  # the child's own exception, with its traceback
            raise PartError(answer["error"], answer["traceback"])
        return answer

    return run


# -- part 2: osum against Qwen2-Audio (bench/suite.py) ------------------------------------------------------------
def part_suite(check: Check, until: float) -> dict:
    out = check.work / "suite"
    size = "tiny" if check.smoke else "base"
    command = [sys.executable, "bench/suite.py", "--device", "cpu" if check.smoke else "cuda", "--sizes", size,
               "--only", "train_short,generate", "--repeats", "1" if check.smoke else "5", "--no-memory",
               "--out", str(out)]
    if check.smoke:
        command += ["--warmup", "0", "--new-tokens", "4"]
    seconds = check.run(command, until, "suite")
    results = {name: json.loads((out / f"{name}-{size}.json").read_text()) for name in ("train_short", "generate")}
    return {"command": " ".join(command[1:]), "size": size, "seconds_run": seconds,
            "train_short_ratio": results["train_short"]["ratio"],
            "train_short_ratio_25hz": results["train_short"]["ratio_25hz"],
            "generate_ratio": results["generate"]["ratio"], **results}


# -- parts 3 and 4: osum fit on shards, then --resume ---------------------------------------------------------------
CORPUS = {False: dict(train_per_task=160, eval_per_task=8, workers=8, per_shard=40),
          True: dict(train_per_task=24, eval_per_task=4, workers=1, per_shard=8)}
FIT_STEPS = {("ddp", False): 20, ("deepspeed_zero2", False): 10, ("ddp", True): 2, ("deepspeed_zero2", True): 2}
# A short run: no validation, one test batch, the key log that shows which steps each command trained.
FIT_SETTINGS = ["trainer.devices=1", "trainer.max_time=null", "trainer.val_check_interval=100000",
                "trainer.limit_val_batches=0", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
                "data.log_keys=true", "data.num_workers=1", "loss.ce_start_step=0", "eval.generation.max_new_tokens=8"]


def make_corpus(folder: Path, smoke: bool) -> int:
    """The demo corpus of ASR (`osum data synth`) and its train split as tar shards (`osum data shard`)."""
    from osum_core.cli.main import main as osum

    began = time.perf_counter()
    size = CORPUS[smoke]
    rc = osum(["data", "synth", str(folder), "--tasks", "asr", "--workers", str(size["workers"]),
               f"train_per_task={size['train_per_task']}", f"eval_per_task={size['eval_per_task']}"])
    if rc:
        return rc
    rc = osum(["data", "shard", str(folder / "train.jsonl"), str(folder / "shards"), "--per-shard",
               str(size["per_shard"]), "--quiet"])
    (folder / "made.json").write_text(json.dumps({**size, "seconds": time.perf_counter() - began}) + "\n")
    return rc


def logged_steps(run: Path) -> list[int]:
    """The optimiser steps the run's key log holds (rank 0), in order."""
    path = run / "train_keys.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.strip() and json.loads(line)["rank"] == 0]


def fit_and_resume(check: Check, until: float, strategy: str) -> dict:
    if check.corpus is None:
        raise PartError("no corpus job was started")
    check.corpus.finish(until, "the demo corpus (osum data synth + osum data shard)")
    corpus, run = check.work / "corpus", check.work / f"run_{strategy}"
    steps = FIT_STEPS[(strategy, check.smoke)]
    fit = [sys.executable, "-m", "osum_core.cli.main", "fit"]
    commands = {
        "fit": [*fit, "--tasks", "asr", "--strategy", strategy, "--out", str(run),
                f"data.train={corpus / 'shards' / 'shards.list'}", f"data.val={corpus / 'dev.jsonl'}",
                f"data.test={corpus / 'test.jsonl'}", *FIT_SETTINGS,
                f"trainer.accelerator={'cpu' if check.smoke else 'gpu'}", f"trainer.max_steps={steps}"],
        "resume": [*fit, "--resume", str(run), f"trainer.max_steps={2 * steps}"],
    }
    result: dict[str, Any] = {"strategy": strategy, "corpus": json.loads((corpus / "made.json").read_text()),
                              "shards": len((corpus / "shards" / "shards.list").read_text().split())}
    for name, command in commands.items():
        seconds = check.run(command, until, f"{strategy}_{name}")
        logged = logged_steps(run)
        result[name] = {"command": " ".join(command[3:]), "exit_status": 0, "seconds": seconds,
                        "steps_reached": max(logged, default=0),
                        "checkpoint": (run / "checkpoints" / "last.ckpt").exists()}
    logged = logged_steps(run)
    # The resumed run continued from the checkpoint: every step once, none trained twice or skipped.
    result["every_step_once"] = logged == list(range(1, 2 * steps + 1))
    result["steps"] = [steps, 2 * steps]
    if not result["every_step_once"]:
        raise PartError(f"the key log holds steps {logged}, not 1..{2 * steps} once each", json.dumps(result))
    return result


def part_fit_ddp(check: Check, until: float) -> dict:
    return fit_and_resume(check, until, "ddp")


def part_fit_deepspeed(check: Check, until: float) -> dict:
    if check.pip is not None:
        try:
            check.pip.finish(min(until, check.pip.began + PIP_SECONDS), "pip install deepspeed")
        except PartError as error:
            raise PartError(f"not installed: {error}", error.log_tail) from None
    importlib.invalidate_caches()  # pip may have just installed it
    if importlib.util.find_spec("deepspeed") is None:
        raise PartError(f"not installed: {check.pip_note or 'deepspeed is not importable'}")
    if check.smoke:
        raise PartError("not run: DeepSpeed ZeRO-2 needs CUDA and the smoke run is on CPU")
    # Importing it is the first thing that can fail on a machine without a CUDA toolkit.
    check.run([sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"], until, "deepspeed_version")
    version = tail(check.work / "deepspeed_version.log", 300).split()
    return {"deepspeed": version[-1] if version else "?", **fit_and_resume(check, until, "deepspeed_zero2")}


PIP_SECONDS = 60
# Each part's own limit (seconds; the whole stays within --budget-seconds), on the GPU and in the smoke run.
# (GPU, smoke) seconds per part; on the GPU they sum to the 280 s budget, so every part gets its turn.
LIMITS = {
    "mfu_qwen05b": (50, 120), "mfu_osum7b_lora": (80, 120), "vs_qwen2_audio": (60, 120), "fit_ddp": (60, 200),
    "fit_deepspeed": (30, 60),
}
RUNNERS: dict[str, Callable[[Check, float], dict]] = {
    "mfu_qwen05b": part_mfu("qwen05b"), "mfu_osum7b_lora": part_mfu("osum7b_lora"), "vs_qwen2_audio": part_suite,
    "fit_ddp": part_fit_ddp, "fit_deepspeed": part_fit_deepspeed,
}


# -- the JSON and the summary lines ---------------------------------------------------------------------------------
def summary(name: str, entry: dict) -> str:
    if not entry.get("ok"):
        return f"{name}: error ({entry.get('seconds', 0):.0f} s): {entry.get('error')}"
    if name.startswith("mfu_"):
        b = entry["batch"]
        return (f"{name}: {b['utterances']} utterances, {b['audio_seconds']:.1f} s of audio, {b['llm_tokens']} LLM "
                f"tokens packed; step {entry['median_step_seconds'] * 1000:.1f} ms, {entry['model_tflops_per_s']:.1f} "
                f"TFLOP/s, MFU {entry['mfu']:.3f}, {entry['llm_tokens_per_s']:.0f} LLM tokens/s, peak "
                f"{entry['peak_memory_gib']:.1f} GiB ({entry['seconds']:.0f} s)")
    if name == "vs_qwen2_audio":
        return (f"{name}: size {entry['size']}: train_short ratio {entry['train_short_ratio']:.2f} (25 Hz "
                f"{entry['train_short_ratio_25hz']:.2f}), generate ratio {entry['generate_ratio']:.2f} "
                f"({entry['seconds']:.0f} s)")
    return (f"{name}: exit 0 twice, steps {entry['fit']['steps_reached']} then {entry['resume']['steps_reached']} "
            f"after --resume, every step once; {entry['fit']['seconds']:.0f} s + {entry['resume']['seconds']:.0f} s "
            f"({entry['seconds']:.0f} s)")


def machine() -> dict:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cores": os.cpu_count()}
    commands = {"gpu": ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                "commit": ["git", "describe", "--always", "--dirty"]}
    for key, command in commands.items():
        if shutil.which(command[0]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                info[key] = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    return info


def write_json(check: Check, parts: dict, complete: bool, info: dict) -> None:
    data = {"check": "bench/gpu_check.sh (issue 20)", "smoke": check.smoke, "complete": complete,
            "started": check.started, "updated": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_seconds": round(time.monotonic() - check.began, 1), "machine": info,
            "peak_tflops": check.peak_tflops, "flop_formula": inspect.getdoc(model_flops), "parts": parts}
    check.out.parent.mkdir(parents=True, exist_ok=True)
    partial = check.out.with_name(check.out.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(check.out)


def run_parts(check: Check, only: Sequence[str]) -> int:
    parts: dict[str, dict] = {name: {"ok": False, "error": "not reached: the check stopped before this part"}
                              for name in PARTS}
    for name in PARTS:
        if name not in only:
            parts[name] = {"ok": False, "error": "not run: not in --only"}
    info = machine()
    write_json(check, parts, False, info)
    stopped = False
    for name in (n for n in PARTS if n in only):
        began = time.monotonic()
        until = min(began + LIMITS[name][int(check.smoke)], check.deadline)
        entry: dict[str, Any]
        if until - began < 10:
            entry = {"ok": False, "error": f"not run: the check's budget of {check.deadline - check.began:.0f} s was spent"}
        else:
            try:
                entry = {"ok": True, **RUNNERS[name](check, until)}
            except Stopped:
                entry, stopped = {"ok": False, "error": "stopped: gpu_check got SIGTERM (its overall time limit)"}, True
            except PartError as error:
                entry = {"ok": False, "error": str(error), "log_tail": error.log_tail}
            except Exception as error:  # a bug of this script's own: recorded, and the next part runs
                entry = {"ok": False, "error": f"{type(error).__name__}: {error}", "log_tail": traceback.format_exc()}
        entry["seconds"] = round(time.monotonic() - began, 1)
        parts[name] = entry
        write_json(check, parts, False, info)
        print(summary(name, entry), flush=True)
        if stopped:
            break
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what is measured gets written, whatever comes now
    for job in (check.corpus, check.pip):
        if job is not None:
            stop_group(job.process)
    write_json(check, parts, not stopped, info)
    ok = sum(1 for entry in parts.values() if entry.get("ok"))
    print(f"gpu_check: {ok} of {len(PARTS)} parts ok in {time.monotonic() - check.began:.0f} s; wrote {check.out}")
    return 1 if stopped else 0


def start_background(check: Check, only: Sequence[str]) -> None:
    """What the later parts wait for, started at once so that it overlaps the GPU work: the corpus, and
    `pip install deepspeed` when deepspeed is missing (never in the smoke run: it installs nothing)."""
    if {"fit_ddp", "fit_deepspeed"} & set(only):
        command = [sys.executable, __file__, "--make-corpus", str(check.work / "corpus"),
                   *(["--smoke"] if check.smoke else [])]
        check.corpus = Job(command, check.work / "corpus.log")
    if "fit_deepspeed" in only and importlib.util.find_spec("deepspeed") is None:
        if check.smoke:
            check.pip_note = "the smoke run installs nothing (the GPU check runs pip install deepspeed)"
        else:
            check.pip = Job([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--retries", "1",
                             "--timeout", "15", "deepspeed"], check.work / "pip_deepspeed.log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("GPU_CHECK_SMOKE") == "1",
                        help="CPU, tiny sizes: every code path in a couple of minutes (also GPU_CHECK_SMOKE=1)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="the GPU's dense bf16 peak")
    parser.add_argument("--budget-seconds", type=float,
                        help="the parts stay within this many seconds (default 280; 600 with --smoke)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, corpus, runs)")
    parser.add_argument("--mfu-case", choices=sorted(MFU_CASES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--make-corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.make_corpus:
        return make_corpus(Path(args.make_corpus), args.smoke)
    if args.mfu_case:
        try:
            answer = mfu_case(args.mfu_case, args.smoke, args.peak_tflops)
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        Path(args.result).write_text(json.dumps(answer, indent=2) + "\n")
        return 0 if "error" not in answer else 1
    only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; the parts are {', '.join(PARTS)}")

    def stop(signum: int, frame: Any) -> None:
        raise Stopped()

    signal.signal(signal.SIGTERM, stop)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    now = time.monotonic()
    budget = args.budget_seconds or (600.0 if args.smoke else 280.0)
    check = Check(smoke=args.smoke, work=work, out=Path(args.out).resolve(), deadline=now + budget,
                  peak_tflops=args.peak_tflops, began=now, started=datetime.datetime.now().isoformat(timespec="seconds"))
    print(f"gpu_check: {'smoke run on CPU' if args.smoke else 'GPU run'}, work folder {work}, "
          f"budget {budget:.0f} s", flush=True)
    try:
        start_background(check, only)
        return run_parts(check, only)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

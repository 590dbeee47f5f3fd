"""``osum data batch-sizes``: the largest batch per duration bucket that trains without running out of memory.

As NeMo's OOMptimizer: for each bucket, a full training step (forward, backward, AdamW step) of the
configured model on a batch of utterances at the bucket's longest duration, with the longest prompt and
target, is tried at batch sizes 1, 2, 4, ... until one fails; the largest success and the first failure
are then bisected. On a GPU, failure is CUDA running out of memory (and the peak staying under
``--memory-cap`` when given). On a CPU, each trial runs in a fresh process, and failure is that
process's peak resident memory exceeding ``--memory-cap`` (or it dying), so the finder never takes the
machine down. The result is written as ``data.buckets`` config keys, scaled by a safety factor.
"""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from osum_core.data.batching import FRAMES_PER_SECOND


@dataclass(frozen=True)
class Trial:
    batch_size: int
    fits: bool
    peak_bytes: int
    error: str = ""
    sequence_tokens: int = 0  # the LLM sequence length of one example of the trial (what the token budget counts)


def trial_tokenizer(cfg: Mapping[str, Any]) -> Any:
    """The run's tokenizer when the config names one; the demo's BPE (same vocabulary size) otherwise."""
    from transformers import AutoTokenizer

    from osum_core.demo.tokenizer import train_demo_tokenizer
    from osum_core.model.pretrained import pretrained

    llm = cfg["model"]["llm"]
    if llm["tokenizer"] or llm["path"]:
        key = "model.llm.tokenizer" if llm["tokenizer"] else "model.llm.path"
        tokenizer = pretrained(AutoTokenizer.from_pretrained, llm["tokenizer"] or llm["path"], key)
    else:
        words = "zero one two three four five six seven eight nine oh transcribe the speech and append a label"
        tokenizer = train_demo_tokenizer([words] * 4, [], llm["demo_tokenizer_vocab"])
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return tokenizer


def training_step(cfg: Mapping[str, Any], batch_size: int, seconds: float, prompt_tokens: int, target_tokens: int,
                  device: str) -> int:
    """One forward/backward/optimiser step of the configured model on a synthetic batch at full length; returns
    the LLM sequence length of one of its examples."""
    from osum_core.model.build import build_for_tokenizer
    from osum_core.model.freezing import set_trainable

    torch.manual_seed(0)
    tokenizer = trial_tokenizer(cfg)
    model = build_for_tokenizer(dict(cfg["model"]), tokenizer).to(device)
    set_trainable(model, cfg["model"]["train"])
    model.train()
    frames = int(seconds * FRAMES_PER_SECOND)
    vocab = len(tokenizer)
    full = lambda n: torch.full((batch_size,), n, dtype=torch.long, device=device)  # noqa: E731
    batch = {
        "features": torch.randn(batch_size, frames, cfg["data"]["n_mels"], device=device),
        "feature_lengths": full(frames),
        "prompt_ids": torch.randint(3, vocab, (batch_size, prompt_tokens), device=device),
        "prompt_lengths": full(prompt_tokens),
        "target_ids": torch.randint(3, vocab, (batch_size, target_tokens), device=device),
        "target_lengths": full(target_tokens),
        "target_weights": torch.ones(batch_size, target_tokens, device=device),
        "ctc_ids": torch.randint(3, vocab, (batch_size, max(target_tokens - 1, 1)), device=device),
        "ctc_lengths": full(max(target_tokens - 1, 1)),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    precision = str(cfg["trainer"].get("precision", "32-true"))
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        out = model(**batch)
        loss = out["token_loss"].sum() / out["token_count"].sum().clamp(min=1)
        if "ctc_loss" in out:
            loss = loss + out["ctc_loss"].mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.sequence_length(frames, prompt_tokens, target_tokens)


def cpu_trial_child(arguments: tuple, results: Any) -> None:
    try:
        torch.set_num_threads(1)
        tokens = training_step(*arguments, device="cpu")
        results.put(("ok", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "", tokens))
    except Exception as error:  # the trial's failure is the finding; its kind is reported
        results.put(("failed", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                     f"{type(error).__name__}: {error}", 0))


def cpu_trial(cfg: Mapping[str, Any], batch_size: int, seconds: float, prompt_tokens: int, target_tokens: int,
              memory_cap: int) -> Trial:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=cpu_trial_child,
                              args=((dict(cfg), batch_size, seconds, prompt_tokens, target_tokens), results))
    process.start()
    process.join()
    if results.empty():
        return Trial(batch_size, False, 0, f"the trial process died (exit code {process.exitcode})")
    status, peak, error, tokens = results.get()
    if status != "ok":
        return Trial(batch_size, False, peak, error)
    return Trial(batch_size, peak <= memory_cap, peak, "" if peak <= memory_cap else "over the memory cap", tokens)


def gpu_trial(cfg: Mapping[str, Any], batch_size: int, seconds: float, prompt_tokens: int, target_tokens: int,
              device: str, memory_cap: int | None) -> Trial:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        tokens = training_step(cfg, batch_size, seconds, prompt_tokens, target_tokens, device)
    except torch.cuda.OutOfMemoryError as error:
        return Trial(batch_size, False, torch.cuda.max_memory_allocated(device), f"CUDA out of memory: {error}"[:200])
    finally:
        torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(device)
    fits = memory_cap is None or peak <= memory_cap
    return Trial(batch_size, fits, peak, "" if fits else "over the memory cap", tokens)


def largest_batch(try_size: Callable[[int], Trial], limit: int = 4096) -> tuple[int, list[Trial]]:
    """Double from 1 until a trial fails (or `limit`), then bisect: the largest size that fits (0: none)."""
    trials: list[Trial] = []

    def attempt(size: int) -> bool:
        trial = try_size(size)
        trials.append(trial)
        return trial.fits

    good, bad = 0, None
    size = 1
    while size <= limit:
        if not attempt(size):
            bad = size
            break
        good, size = size, size * 2
    if bad is None:
        return good, trials
    while bad - good > 1:
        middle = (good + bad) // 2
        if attempt(middle):
            good = middle
        else:
            bad = middle
    return good, trials


def find_batch_sizes(cfg: Mapping[str, Any], bucket_seconds: Sequence[float], device: str, memory_cap: int | None,
                     prompt_tokens: int, target_tokens: int, safety: float, limit: int = 4096,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``data.buckets`` entries, one per bucket edge in `bucket_seconds`: the largest batch that trains at
    that duration, times `safety` (rounded down, at least 1). A padded model (``model.packed: false``) gets it
    as ``batch_size``; a packed one as that many utterances' frames and LLM tokens (``max_frames``,
    ``max_tokens``), so a batch of shorter utterances in the bucket holds more of them, as packing allows."""
    if device == "cpu" and memory_cap is None:
        raise ValueError("on a CPU, give --memory-cap (e.g. 8GB): the finder measures against it")
    buckets = []
    for seconds in sorted(bucket_seconds):
        def try_size(size: int, seconds: float = seconds) -> Trial:
            if device == "cpu":
                trial = cpu_trial(cfg, size, seconds, prompt_tokens, target_tokens, memory_cap or 0)
            else:
                trial = gpu_trial(cfg, size, seconds, prompt_tokens, target_tokens, device, memory_cap)
            log(f"  {seconds:g} s x {size}: {'fits' if trial.fits else 'fails'}, peak {trial.peak_bytes / 2**30:.2f} GiB"
                + (f" ({trial.error})" if trial.error else ""))
            return trial

        largest, trials = largest_batch(try_size, limit)
        if largest == 0:
            raise ValueError(f"not even one {seconds:g} s utterance trains within the memory available")
        size = max(int(largest * safety), 1)
        if cfg["model"]["packed"]:
            tokens = next(t.sequence_tokens for t in trials if t.fits)
            buckets.append({"max_seconds": seconds, "max_frames": size * int(seconds * FRAMES_PER_SECOND),
                            "max_tokens": size * tokens})
        else:
            buckets.append({"max_seconds": seconds, "batch_size": size})
        log(f"bucket <= {seconds:g} s: largest batch {largest}, configured {size} utterances of {seconds:g} s")
    return buckets


def parse_bytes(text: str) -> int:
    """``8GB``, ``512MB``, ``1.5GiB``, or a number of bytes."""
    units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, "b": 1}
    lowered = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if lowered.endswith(unit):
            return int(float(lowered[: -len(unit)]) * units[unit])
    return int(float(lowered))

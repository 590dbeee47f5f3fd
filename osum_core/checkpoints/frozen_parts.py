"""The frozen weights a training checkpoint leaves out, and how a resume knows they are still the same.

A part whose weights were read from a checkpoint of its own (the LLM from ``model.llm.path``) and that does
not train is rebuilt from that source before a run's checkpoint is loaded, so ``last.ckpt`` does not hold
its frozen parameters: osum-7b's LLM alone is 14.2 GiB, what trains and its AdamW state 0.6-4.2 GiB.
Everything else is kept: trained parameters, every buffer, LoRA factors (trained or not), and any part
built at random (no source), which nothing could rebuild.

For each part it leaves out, the checkpoint records (under `RECORD_KEY`) where the part came from, the keys
left out, and a fingerprint: sha256 over each frozen tensor's canonical name, dtype, shape and the sha256 of
its bytes. Measured here (sha256 with the CPU's SHA extensions): 1.74 GB/s per thread, 0.57 s for a
Qwen2.5-0.5B-sized set (0.99 GB in bf16), 0.29 s on 2 threads; Qwen2-7B's 15.2 GB are about 9 s on one thread,
spread over `HASH_THREADS`. A run takes it once (frozen weights do not change), before its first save or at its
resume; ``osum export`` and ``osum test`` take it again and refuse other weights, naming the part.

A part's source is what transformers records when it loads one (``name_or_path``, set by ``from_pretrained``;
empty for a model built from its config).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from osum_core.checkpoints.state_keys import canonical_key

RECORD_KEY = "frozen_parts"  # in a checkpoint: {part: {"source", "sha256", "keys"}} of the parts left out
HASH_THREADS = min(8, os.cpu_count() or 1)  # hashlib releases the GIL while it hashes a large buffer


class FrozenWeightsDiffer(ValueError):
    """A checkpoint that left a frozen part out, resumed or loaded against other weights for that part; the
    message names the checkpoint, the part and where its weights come from now."""


class CheckpointMismatch(ValueError):
    """A checkpoint whose tensors do not fit the model: it lacks some the model has (and did not leave out as
    frozen), or holds some the model does not have."""


def part_modules(model: Any) -> dict[str, nn.Module]:
    """The parts that can have a source of their own, by their config section (``model.<part>``)."""
    return {"encoder": model.encoder, "llm": model.llm}


def part_sources(model: Any) -> dict[str, str | None]:
    """Where each part's pretrained weights were read from, None for a part built from its config."""
    loaded = {"encoder": model.encoder.whisper, "llm": model.causal_lm}
    return {part: getattr(module, "name_or_path", "") or None for part, module in loaded.items()}


def lora_parameter_ids(model: Any) -> set[int]:
    if model.llm is model.causal_lm:  # no peft wrapper, no LoRA
        return set()
    from osum_core.model.freezing import lora_parameters

    return {id(p) for p in lora_parameters(model)}


def frozen_keys(model: Any, sources: Mapping[str, str | None]) -> dict[str, list[str]]:
    """{part: the state-dict keys of its frozen parameters, tied names included} for each part with a source."""
    lora = lora_parameter_ids(model)
    keys = {}
    for part, module in part_modules(model).items():
        if not sources.get(part):
            continue
        names = [f"{part}.{name}" for name, p in module.named_parameters(remove_duplicate=False)
                 if not p.requires_grad and id(p) not in lora]
        if names:
            keys[part] = names
    return keys


def tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # the bytes, whatever the dtype
    return hashlib.sha256(data.numpy()).hexdigest()


def fingerprint(model: nn.Module, keys: Iterable[str]) -> str:
    """sha256 over the canonical name, dtype, shape and bytes' sha256 of each tensor of `keys` (a tied
    tensor once, under the name `named_parameters` gives it)."""
    params = dict(model.named_parameters())
    named = sorted((canonical_key(key), params[key]) for key in keys if key in params)
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = list(pool.map(tensor_sha256, [tensor for _, tensor in named]))
    total = hashlib.sha256()
    for (name, tensor), digest in zip(named, digests, strict=True):
        total.update(f"{name} {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)} {digest}\n".encode())
    return total.hexdigest()


def frozen_record(model: Any, sources: Mapping[str, str | None] | None = None,
                  parts: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """What a checkpoint records of the frozen parts it leaves out (`RECORD_KEY`), for `parts` (default: all)."""
    sources = part_sources(model) if sources is None else sources
    wanted = None if parts is None else set(parts)
    return {part: {"source": sources[part], "sha256": fingerprint(model, keys), "keys": keys}
            for part, keys in frozen_keys(model, sources).items() if wanted is None or part in wanted}


def check_frozen_parts(recorded: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]],
                       where: str) -> None:
    """Refuse (`FrozenWeightsDiffer`) a part `recorded` as left out whose weights now (`current`, the model's
    `frozen_record`) are not the ones it was trained with."""
    for part, saved in recorded.items():
        now = current.get(part)
        if now is None or now["sha256"] != saved["sha256"]:
            raise FrozenWeightsDiffer(
                f"{where}: model.{part}: the frozen weights differ from those the checkpoint was trained on "
                f"(model.{part}.path={now['source'] if now else None}; the checkpoint's were read from "
                f"{saved['source']}); give model.{part}.path=<the weights it was trained with>")


def check_state_keys(expected: Iterable[str], saved: Iterable[str], recorded: Mapping[str, Mapping[str, Any]],
                     where: str) -> None:
    """Refuse (`CheckpointMismatch`) a checkpoint whose tensors (`saved`, the model's keys) lack one the model
    has (`expected`) that it did not record as left out, or hold one the model does not have."""
    expected, saved = set(expected), set(saved)
    left_out = {key for part in recorded.values() for key in part["keys"]}
    missing, unexpected = sorted(expected - saved - left_out), sorted(saved - expected)
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{where}: does not fit the model: it lacks {len(missing)} of the model's tensors {missing[:3]} and "
            f"holds {len(unexpected)} the model does not have {unexpected[:3]}")

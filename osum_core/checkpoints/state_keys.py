"""One name per backbone tensor, whether or not peft wraps the LLM ("canonical" state-dict keys).

A `SpeechLLM`'s own state-dict keys, with the LLM unwrapped:

    llm.model.layers.0.self_attn.q_proj.weight         (peft: llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight)
    llm.model.layers.0.self_attn.q_proj.lora_A.weight  (peft: ...q_proj.lora_A.default.weight)

Checkpoints from other spellings (older peft without ``base_layer``, OSUM's ``llama_model.`` prefix) are
brought to this form, so stage 2 can start from stage 1 although stage 3 adds LoRA, and an export without
LoRA loads into a model with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

PEFT_WRAPPER = "base_model.model."
# peft's adapter name ("default") between a LoRA module and its tensor; saved adapters have none.
_ADAPTER_NAME = re.compile(r"\.(lora_[AB]|lora_magnitude_vector)\.(?!weight$)[^.]+\.weight$")
_EMBEDDING_ADAPTER_NAME = re.compile(r"\.(lora_embedding_[AB])\.[^.]+$")


def canonical_key(key: str) -> str:
    """``key`` of a SpeechLLM state dict (peft-wrapped or not) in canonical spelling."""
    if key.startswith("llm." + PEFT_WRAPPER):
        key = "llm." + key[len("llm." + PEFT_WRAPPER) :]
    key = key.replace(".base_layer.", ".")
    key = _ADAPTER_NAME.sub(r".\1.weight", key)
    return _EMBEDDING_ADAPTER_NAME.sub(r".\1", key)


def canonical_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under canonical keys."""
    state = {}
    for key, tensor in model.state_dict().items():
        name = canonical_key(key)
        if name in state:
            raise ValueError(f"two tensors map to the canonical key {name!r}")
        state[name] = tensor
    return state


def load_canonical_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> tuple[list[str], list[str]]:
    """Copy `state` (canonical keys) into `model`. Returns (model keys not in `state`, `state` keys the
    model lacks), both canonical; a shape mismatch is an error naming the key and `source`."""
    actual = {canonical_key(key): key for key in model.state_dict()}
    own = model.state_dict()
    translated = {}
    for name, tensor in state.items():
        key = actual.get(name)
        if key is None:
            continue
        if own[key].shape != tensor.shape:
            raise ValueError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[key].shape)}"
            )
        translated[key] = tensor
    model.load_state_dict(translated, strict=False)
    # A tied tensor (lm_head sharing the embedding) is loaded when its twin is.
    loaded_storage = {own[key].data_ptr() for key in translated}
    missing = sorted(name for name, key in actual.items() if name not in state and own[key].data_ptr() not in loaded_storage)
    unexpected = sorted(name for name in state if name not in actual)
    return missing, unexpected

"""Whisper encoder weights in other layouts, renamed to the keys of Hugging Face's `WhisperEncoder`.

Two layouts besides Hugging Face's own:

- ``openai``: the openai-whisper ``.pt`` file, ``{"dims": {...}, "model_state_dict": {...}}`` with
  ``encoder.conv1``, ``encoder.positional_embedding``, ``encoder.blocks.N.attn.query`` ... ``encoder.ln_post``;
- ``wenet``: WeNet's Whisper re-implementation, which OSUM trains (``encoder.embed.conv.0``,
  ``encoder.embed.pos_enc.pe`` [1, n, d], ``encoder.encoders.N.self_attn.linear_q`` ... ``encoder.after_norm``).

Keys outside ``encoder.`` (a decoder, other modules of a whole model) are not the encoder's and are left
alone; an unknown key inside ``encoder.`` or a missing encoder tensor is an error naming the file and key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from osum_core.model.safe_load import safe_load

POSITIONS = "embed_positions.weight"  # the Hugging Face key of the position table

# Whisper's head count for each width (tiny, base, small, medium, large); shapes do not tell it.
WHISPER_HEADS = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}


@dataclass(frozen=True)
class EncoderLayout:
    """How one layout names the encoder's tensors: whole-encoder modules, the position table, and the
    modules inside layer N (``{layers}N.{part}``)."""

    name: str
    modules: dict[str, str]  # layout's module name -> Hugging Face module name
    positions: str
    layers: str
    layer_modules: dict[str, str]

    def hf_key(self, key: str) -> str | None:
        """The Hugging Face key of this layout's `key`, or None when `key` is not an encoder tensor here."""
        if key == self.positions:
            return POSITIONS
        module, _, param = key.rpartition(".")
        if param not in ("weight", "bias"):
            return None
        if module in self.modules:
            return f"{self.modules[module]}.{param}"
        if module.startswith(self.layers):
            index, _, part = module[len(self.layers) :].partition(".")
            if index.isdigit() and part in self.layer_modules:
                return f"layers.{index}.{self.layer_modules[part]}.{param}"
        return None

    def source_key(self, hf_key: str) -> str:
        """This layout's name for a Hugging Face key (for error messages)."""
        if hf_key == POSITIONS:
            return self.positions
        module, _, param = hf_key.rpartition(".")
        for ours, theirs in self.modules.items():
            if module == theirs:
                return f"{ours}.{param}"
        if module.startswith("layers."):
            index, _, part = module[len("layers.") :].partition(".")
            for ours, theirs in self.layer_modules.items():
                if part == theirs:
                    return f"{self.layers}{index}.{ours}.{param}"
        return hf_key


OPENAI = EncoderLayout(
    name="openai",
    modules={"encoder.conv1": "conv1", "encoder.conv2": "conv2", "encoder.ln_post": "layer_norm"},
    positions="encoder.positional_embedding",
    layers="encoder.blocks.",
    layer_modules={
        "attn.query": "self_attn.q_proj",
        "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj",
        "attn.out": "self_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
        "mlp_ln": "final_layer_norm",
    },
)

WENET = EncoderLayout(
    name="wenet",
    modules={"encoder.embed.conv.0": "conv1", "encoder.embed.conv.2": "conv2", "encoder.after_norm": "layer_norm"},
    positions="encoder.embed.pos_enc.pe",
    layers="encoder.encoders.",
    layer_modules={
        "self_attn.linear_q": "self_attn.q_proj",
        "self_attn.linear_k": "self_attn.k_proj",
        "self_attn.linear_v": "self_attn.v_proj",
        "self_attn.linear_out": "self_attn.out_proj",
        "norm1": "self_attn_layer_norm",
        "feed_forward.w_1": "fc1",
        "feed_forward.w_2": "fc2",
        "norm2": "final_layer_norm",
    },
)

LAYOUTS = {layout.name: layout for layout in (OPENAI, WENET)}


def detect_layout(state: Mapping[str, torch.Tensor], source: str) -> EncoderLayout:
    """The layout whose layer prefix (``encoder.blocks.`` or ``encoder.encoders.``) the keys use."""
    for layout in LAYOUTS.values():
        if any(key.startswith(layout.layers) for key in state):
            return layout
    raise ValueError(
        f"{source}: not a Whisper encoder in the OpenAI (encoder.blocks.N...) or WeNet (encoder.encoders.N...)"
        f" layout; its first keys are {list(state)[:5]}"
    )


def to_hf_encoder_state(
    state: Mapping[str, torch.Tensor], layout: EncoderLayout
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the encoder's tensors under `WhisperEncoder` keys, the keys of `state` that are not encoder tensors
    of `layout`). WeNet's [1, n, d] position table becomes [n, d]."""
    converted: dict[str, torch.Tensor] = {}
    others = []
    for key, tensor in state.items():
        name = layout.hf_key(key)
        if name is None:
            others.append(key)
        else:
            converted[name] = tensor.reshape(-1, tensor.shape[-1]) if name == POSITIONS else tensor
    return converted, others


def default_attention_heads(width: int, source: str, option: str = "attention_heads=...") -> int:
    """Whisper's head count for `width`; else an error telling to pass it as `option` (the caller's name for it)."""
    if width not in WHISPER_HEADS:
        raise ValueError(
            f"{source}: the attention-head count of a {width}-wide encoder is not known (Whisper's widths are"
            f" {sorted(WHISPER_HEADS)}); pass it ({option})"
        )
    return WHISPER_HEADS[width]


def whisper_config(
    hf_state: Mapping[str, torch.Tensor],
    layout: EncoderLayout,
    source: str,
    attention_heads: int | None = None,
    heads_option: str = "attention_heads=...",
) -> WhisperConfig:
    """A `WhisperConfig` whose encoder matches the shapes of `hf_state` (Hugging Face keys); the head count
    is `attention_heads` or Whisper's for that width (an unknown width: an error naming `heads_option`)."""
    for key in ("conv1.weight", POSITIONS, "layers.0.fc1.weight"):
        if key not in hf_state:
            raise ValueError(f"{source}: no {layout.source_key(key)} (a {layout.name}-layout Whisper encoder tensor)")
    width, mels, _ = hf_state["conv1.weight"].shape
    layers = 1 + max(int(key.split(".")[1]) for key in hf_state if key.startswith("layers."))
    return WhisperConfig(
        d_model=width,
        encoder_layers=layers,
        encoder_attention_heads=attention_heads or default_attention_heads(width, source, heads_option),
        encoder_ffn_dim=hf_state["layers.0.fc1.weight"].shape[0],
        num_mel_bins=mels,
        max_source_positions=hf_state[POSITIONS].shape[0],
    )


def check_complete(
    hf_state: Mapping[str, torch.Tensor], config: WhisperConfig, layout: EncoderLayout, source: str
) -> None:
    """Every tensor of a `WhisperEncoder(config)` is in `hf_state` with its shape, and nothing else is."""
    with torch.device("meta"):  # the key names and shapes, without allocating the weights
        wanted = WhisperEncoder(config).state_dict()
    for key, tensor in wanted.items():
        if key not in hf_state:
            raise ValueError(f"{source}: {layout.source_key(key)} is missing ({layout.name}-layout Whisper encoder)")
        if hf_state[key].shape != tensor.shape:
            raise ValueError(
                f"{source}: {layout.source_key(key)} has shape {tuple(hf_state[key].shape)}, expected"
                f" {tuple(tensor.shape)} for this encoder"
            )
    for key in hf_state:
        if key not in wanted:
            raise ValueError(f"{source}: unexpected encoder tensor {layout.source_key(key)}")


def read_encoder_checkpoint(
    path: str | Path, attention_heads: int | None = None
) -> tuple[dict[str, torch.Tensor], WhisperConfig]:
    """The encoder tensors (under `WhisperEncoder` keys) and config of an OpenAI or WeNet ``.pt`` file.

    The head count is `attention_heads`, else the file's ``dims`` (OpenAI), else Whisper's for the width."""
    source = str(path)
    checkpoint = safe_load(path, "Whisper checkpoint")
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(checkpoint).__name__}")
    state = checkpoint
    if "model_state_dict" in checkpoint:  # openai-whisper's file: dims + weights
        state = checkpoint["model_state_dict"]
        attention_heads = attention_heads or checkpoint.get("dims", {}).get("n_audio_head")
    layout = detect_layout(state, source)
    hf_state, others = to_hf_encoder_state(state, layout)
    unknown = [key for key in others if key.startswith("encoder.")]
    if unknown:
        raise ValueError(f"{source}: unexpected key {unknown[0]} in a {layout.name}-layout Whisper encoder")
    config = whisper_config(hf_state, layout, source, attention_heads)
    check_complete(hf_state, config, layout, source)
    return hf_state, config

"""`SpeechEncoder`: a Whisper encoder (Hugging Face `WhisperEncoder` weights) that takes variable-length input.

Hugging Face's module insists on exactly 3000 input frames (30 s); OSUM feeds unpadded utterances. This
module reuses the same submodules and weights but runs its own forward over any length up to the position
table, with a padding mask, so a 3 s clip costs 3 s of compute. Weights come from a Hugging Face Whisper
checkpoint or from a ``.pt`` file in OpenAI's or WeNet's (OSUM's) layout (whisper_weights.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from osum_core.model.packing import PackedSequences, use_packed_attention


def conv_output_lengths(lengths: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """Lengths after the kernel-3, padding-1 convolutions with the given strides."""
    for stride in strides:
        lengths = (lengths - 1) // stride + 1
    return lengths


class SpeechEncoder(nn.Module):
    """Log-mel [B, T, n_mels] -> hidden states [B, T', d_model] and their lengths.

    `conv_strides` are the strides of Whisper's two front-end convolutions: (1, 2) as Whisper (50 Hz);
    (2, 2) gives a 25 Hz front end for small, fast models. The weights have the same shapes either way."""

    def __init__(self, config: WhisperConfig, conv_strides: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.whisper = WhisperEncoder(config)
        use_packed_attention(self.whisper.config)
        self.conv_strides = tuple(conv_strides)
        self.whisper.conv1.stride = (self.conv_strides[0],)
        self.whisper.conv2.stride = (self.conv_strides[1],)
        self.output_size = config.d_model

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        conv_strides: Sequence[int] = (1, 2),
        dtype: torch.dtype = torch.float32,
        attention_heads: int | None = None,
    ) -> SpeechEncoder:
        """The encoder half of a Whisper checkpoint: a Hugging Face one (a whole Whisper model or an encoder
        saved alone) from a local directory or a Hub id, or a ``.pt`` file in OpenAI's or WeNet's layout.
        Only the encoder's tensors are read: the decoder is never built. `attention_heads` is for a ``.pt``
        file whose width is not a Whisper size (its shapes do not tell the head count)."""
        if Path(path).is_file():
            from osum_core.model.whisper_weights import read_encoder_checkpoint

            state, config = read_encoder_checkpoint(path, attention_heads)  # complete, or an error naming the key
            encoder = cls(config, conv_strides)
            encoder.whisper.load_state_dict(state)
            return encoder.read_from(path).to(dtype)
        directory = Path(path)
        if not directory.is_dir():
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors"]))
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors weights")
        state = {}
        for file in files:
            for key, tensor in load_file(file).items():
                for prefix in ("model.encoder.", "encoder.", ""):
                    if key.startswith(prefix) and not key.startswith(("decoder.", "model.decoder.", "proj_out")):
                        state[key[len(prefix) :]] = tensor
                        break
        encoder = cls(WhisperConfig.from_pretrained(directory), conv_strides)
        missing, unexpected = encoder.whisper.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{directory}: Whisper encoder weights missing from the checkpoint: {missing[:5]}")
        return encoder.read_from(path).to(dtype)

    def read_from(self, path: str) -> SpeechEncoder:
        """Record where the weights came from, as transformers does for a model it loads (`name_or_path`): a
        checkpoint then leaves these frozen weights out and a resume reads them from here again
        (`osum_core.checkpoints.frozen_parts`)."""
        self.whisper.name_or_path = self.whisper.config.name_or_path = str(path)
        return self

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(lengths, self.conv_strides)

    @property
    def max_input_frames(self) -> int:
        """The longest input, in feature frames (10 ms), that the encoder's positions cover (30 s for Whisper)."""
        positions = self.whisper.embed_positions.num_embeddings
        return positions * int(torch.tensor(self.conv_strides).prod())

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, packed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`packed`: the Transformer layers run over the utterances packed into one row, so no padded step
        is computed there (needs the ``osum_packed`` attention, which `__init__` selects for SDPA)."""
        whisper = self.whisper
        x = features.transpose(1, 2)  # [B, n_mels, T]
        x = nn.functional.gelu(whisper.conv1(x))
        # Zero the padded steps so conv2 sees at an utterance's end what it would see unpadded.
        conv1_lengths = conv_output_lengths(lengths, self.conv_strides[:1])
        x = x * (torch.arange(x.shape[-1], device=x.device)[None, :] < conv1_lengths[:, None])[:, None, :]
        x = nn.functional.gelu(whisper.conv2(x)).transpose(1, 2)  # [B, T', D]
        out_lengths = self.output_lengths(lengths)
        steps = x.shape[1]
        if steps > whisper.embed_positions.num_embeddings:
            raise ValueError(
                f"input of {features.shape[1]} frames exceeds the encoder's {whisper.embed_positions.num_embeddings}"
                " positions; cut the audio or raise max_source_positions"
            )
        x = x + whisper.embed_positions.weight[:steps]
        x = nn.functional.dropout(x, p=whisper.dropout, training=self.training)
        keep = torch.arange(steps, device=x.device)[None, :] < out_lengths[:, None]
        if packed:
            return self.packed_layers(x, keep, out_lengths), out_lengths
        # Additive, which eager attention and SDPA both read alike: eager adds the mask to the scores
        # (a boolean one would add 1 and 0, leaving padded keys attended).
        mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
        mask = mask[:, None, None, :]  # [B, 1, 1, T']: 0 where attended, the dtype's minimum at padded keys
        for layer in whisper.layers:
            x = layer(x, mask)
        return whisper.layer_norm(x), out_lengths

    def packed_layers(self, x: torch.Tensor, keep: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The Transformer layers over the real steps only, packed into one row (packing.py); padded steps
        of the result are zeros."""
        batch, steps, width = x.shape
        packing = PackedSequences.of(lengths.tolist(), x.device)
        rows = keep.reshape(-1).nonzero().squeeze(1)  # real steps of the padded batch, in packed order
        packed = x.reshape(-1, width).index_select(0, rows)[None]
        for layer in self.whisper.layers:
            packed = layer(packed, None, packing=packing)
        packed = self.whisper.layer_norm(packed)[0]
        return packed.new_zeros(batch * steps, width).index_copy(0, rows, packed).view(batch, steps, width)

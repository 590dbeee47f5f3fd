"""`SpeechAdapter`: OSUM's projector from encoder states to LLM embeddings.

Causal Conv1d stack (kernel 3, left padding 2, GELU; OSUM strides 1, 2, 2) -> Linear + LayerNorm input
layer -> sinusoidal positions (input scaled by sqrt(d), as WeNet does) -> pre-norm Transformer layers
(ReLU FFN) with a final LayerNorm -> Linear to the LLM width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class SpeechAdapter(nn.Module):
    def __init__(
        self,
        input_size: int,
        llm_size: int,
        conv_strides: Sequence[int] = (1, 2, 2),
        layers: int = 4,
        heads: int = 4,
        ffn_size: int = 2560,
        dropout: float = 0.1,
        max_positions: int = 5000,
    ) -> None:
        super().__init__()
        self.conv_strides = tuple(conv_strides)
        self.convs = nn.ModuleList(nn.Conv1d(input_size, input_size, 3, stride=s) for s in self.conv_strides)
        self.input_layer = nn.Sequential(nn.Linear(input_size, input_size), nn.LayerNorm(input_size))
        self.register_buffer("positions", sinusoid_table(max_positions, input_size), persistent=False)
        self.scale = math.sqrt(input_size)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            input_size, heads, ffn_size, dropout=dropout, activation="relu", batch_first=True, norm_first=True
        )
        # layers=0 leaves convolutions + projection, a lighter adapter for small models.
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.final_norm = nn.LayerNorm(input_size)
        self.projection = nn.Linear(input_size, llm_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        # Causal padding of 2 with kernel 3: every stride-s conv keeps ceil(T / s) steps.
        for stride in self.conv_strides:
            lengths = (lengths + stride - 1) // stride
        return lengths

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = states.transpose(1, 2)
        for conv in self.convs:
            x = nn.functional.gelu(conv(nn.functional.pad(x, (2, 0))))
        x = x.transpose(1, 2)
        out_lengths = self.output_lengths(lengths)
        steps = x.shape[1]
        x = self.input_layer(x) * self.scale + self.positions[:steps]
        x = self.dropout(x)
        padding = torch.arange(steps, device=x.device)[None, :] >= out_lengths[:, None]
        if self.transformer is not None:
            x = self.transformer(x, src_key_padding_mask=padding)
        return self.projection(self.final_norm(x)), out_lengths

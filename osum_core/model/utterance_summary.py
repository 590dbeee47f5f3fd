"""`UtteranceSummary`: a few speech steps that each pool the whole utterance, read by the LLM before the rest.

Why: with CTC compression (ctc_compression.py) the LLM reads about one step per word, each the mean of its
word's frames, and one mean for each stretch the CTC head labels blank. What is spread over the utterance
(the speaker's gender and age, an emotion) or lies inside a blank stretch (a vocal event) then reaches the
LLM only diluted into those means, and a small model trained from scratch learns to find it late and at a
step that moves with the seed. A summary step is attention pooling over every encoder frame: a learned
query per step scores the frames (starting at zero, so each step starts as the utterance's mean) and the
pooled state goes through its own LayerNorm and projection, as the adapter's output does, so it arrives at
the scale of the other speech steps. An option for models trained from scratch (``model.summary_steps``);
OSUM has no such steps, and its checkpoint imports without them.

The same pooling, one view with its projection starting at zero, is ``model.utterance_embedding``: added to
every speech step rather than put before them (`SpeechLLM.encode_speech`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class UtteranceSummary(nn.Module):
    def __init__(self, input_size: int, llm_size: int, steps: int, start_at_zero: bool = False) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"an utterance summary needs at least one step, got {steps}")
        self.queries = nn.Parameter(torch.zeros(steps, input_size))
        self.norm = nn.LayerNorm(input_size)
        self.projection = nn.Linear(input_size, llm_size)
        self.scale = 1.0 / math.sqrt(input_size)
        if start_at_zero:
            # Added to steps that already carry the words (`SpeechLLM.utterance_embedding`): it must not
            # move them before it has learnt something, as the time embedding starts at zero for the same reason.
            nn.init.zeros_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)

    @property
    def steps(self) -> int:
        return self.queries.shape[0]

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder states [B, T, D] with `lengths` [B] real frames -> summary steps [B, steps, llm_size]."""
        padding = torch.arange(states.shape[1], device=states.device)[None, :] >= lengths[:, None]
        scores = torch.einsum("btd,kd->bkt", states, self.queries.to(states.dtype)).float() * self.scale
        weights = scores.masked_fill(padding[:, None, :], float("-inf")).softmax(dim=-1)
        # An example without frames (under 10 ms of audio) pools nothing instead of NaN (softmax of -inf only).
        weights = weights.nan_to_num(0.0).to(states.dtype)
        return self.projection(self.norm(weights @ states))

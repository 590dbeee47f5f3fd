"""OSUM's sequence layout: ``[prompt] [speech_bos speech speech_eos] [target]``, as one batch of embeddings.
With an instruct LLM's chat template, the user turn's opening comes before the prompt and the turn's end
plus the assistant's opening between the speech and the target: ``[before] [prompt] [speech] [after] [target]``.

Each example is laid out contiguously, then the batch is padded: on the right for training, on the left
for generation (so every sequence ends where generation continues). Position ids count real tokens only,
so padding never shifts a sequence's positions and a padded batch computes what single examples would.
Packed (training), the examples follow one another in a single row with no padding at all (packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from osum_core.model.packing import PackedSequences


@dataclass
class Layout:
    embeds: torch.Tensor  # [B, L, D]; packed: [1, N, D]
    # [B, L], 1 = real. Packed: no mask at all (packing.py keeps the examples apart), as transformers' mapping
    # of masks by layer type, so that it builds none and does not read a mask on the host.
    attention_mask: torch.Tensor | dict[str, None]
    position_ids: torch.Tensor  # [B, L]; packed: [1, N], restarting at each example
    target_start: torch.Tensor  # [B], row of each example's first target token in embeds.view(-1, D) (not pad_left)
    packing: PackedSequences | None = None  # packed: where each example lies


def layout_length(prompt_tokens: int, speech_steps: int, target_tokens: int, turn_tokens: int = 0) -> int:
    """The length of one example's laid-out sequence (`build_layout`): the prompt, the speech between its
    two markers, the chat turn's tokens (before + after) and the target (end-of-text included)."""
    return prompt_tokens + speech_steps + 2 + turn_tokens + target_tokens


def build_layout(
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    speech: torch.Tensor,
    speech_lengths: torch.Tensor,
    markers: torch.Tensor,
    target: torch.Tensor | None = None,
    target_lengths: torch.Tensor | None = None,
    pad_left: bool = False,
    before: torch.Tensor | None = None,
    after: torch.Tensor | None = None,
    packed: bool = False,
) -> Layout:
    """Lay out prompt embeds [B, Lp, D], speech embeds [B, Ls, D] between the two marker vectors
    `markers` [2, D], and optionally target embeds [B, Lt, D]; lengths say how much of each is real.
    `before` / `after` [L, D]: the same for every example (a chat template's turn markers).
    `packed`: the examples in one row, without padding."""
    batch = prompt.shape[0]
    pieces = []
    for i in range(batch):
        parts = [prompt[i, : prompt_lengths[i]], markers[:1], speech[i, : speech_lengths[i]], markers[1:]]
        if before is not None:
            parts.insert(0, before)
        if after is not None:
            parts.append(after)
        if target is not None:
            parts.append(target[i, : target_lengths[i]])
        pieces.append(torch.cat(parts))
    extra = sum(len(part) for part in (before, after) if part is not None)
    target_start = prompt_lengths + speech_lengths + 2 + extra  # layout_length up to the target
    if packed:
        if pad_left:
            raise ValueError("a packed layout has no padding side")
        packing = PackedSequences.of([len(p) for p in pieces], prompt.device)
        embeds = torch.cat(pieces)[None]
        starts = packing.index[:, 0]  # each example's first row
        return Layout(embeds, {"full_attention": None}, packing.position_ids, starts + target_start, packing)
    lengths = torch.tensor([len(p) for p in pieces], device=prompt.device)
    width = int(lengths.max())
    embeds = prompt.new_zeros(batch, width, prompt.shape[-1])
    mask = torch.zeros(batch, width, dtype=torch.long, device=prompt.device)
    for i, piece in enumerate(pieces):
        start = width - len(piece) if pad_left else 0
        embeds[i, start : start + len(piece)] = piece
        mask[i, start : start + len(piece)] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    rows = torch.arange(batch, device=prompt.device) * width
    return Layout(embeds, mask, positions, rows + target_start)

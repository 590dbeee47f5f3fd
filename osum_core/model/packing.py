"""Packed sequences: a batch's examples one after another in a single row, so that no padding is computed.

A padded batch computes every layer's projections and feed-forward over ``batch x longest`` rows; packed, the
same layers run over the real rows only (``sum of lengths``). Only attention must still keep the examples
apart: `packed_attention` gathers each example's rows into its own slot, attends within it (causal for the
LLM, bidirectional with a key mask for the encoder) and writes the real rows back in packed order, in one
call (what a GPU wants); on a CPU, unless the examples are short and of about equal length, it attends
example by example instead.
Attention in slots is the one place where padding is still computed, and it is a small share of a step.

`packed_attention` is registered with transformers as the attention implementation ``osum_packed``: it is
SDPA (transformers' own function) whenever a call carries no `PackedSequences`, so the encoder and the LLM
use it for padded work (generation) too and their weights are those of any ``sdpa`` model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "osum_packed"
# A CPU attends example by example (a call each, no padding computed) when the slots would hold more than this
# share of padded attention scores (2x faster for the lengths of a Whisper-base batch), or when the longest
# example has more rows than CPU_SLOT_MAX_ROWS and the CPU has no more threads than the layer has heads: even
# with no padding at all, a call per example was as fast or faster from 65 rows on, with 2 threads (2 x 1,400
# encoder rows: 7-12 % faster; 8 x 300: 15 %; bench/packing.py, 2026-12-06). Below that they are about equal (the
# demo's encoder, 20 x 49 rows: either faster by 5-10 %, run to run). Slots stay with more threads than heads:
# torch's CPU attention spreads its work over examples x heads, so one example at a time leaves threads idle.
CPU_LOOP_WASTE = 0.25
CPU_SLOT_MAX_ROWS = 64


@dataclass(frozen=True)
class PackedSequences:
    """Where each example's rows lie in the packed row and in its attention slot.

    lengths: rows of each example, in packed order (examples are contiguous).
    index: [S, longest] packed row of each slot position (0 where the slot is padding).
    valid: [S, longest] which slot positions are real rows.
    position_ids: [1, N] each row's position within its own example (rotary positions restart per example).
    real_slots: [N] the flat slot position (of S x longest) of each packed row.
    Moves between rows and slots are `index_select`s: their backward adds into place, which on a CPU is
    twice as fast as the scatter that advanced indexing back-propagates through."""

    lengths: tuple[int, ...]
    index: torch.Tensor
    valid: torch.Tensor
    position_ids: torch.Tensor
    real_slots: torch.Tensor

    @classmethod
    def of(cls, lengths: list[int] | tuple[int, ...], device: torch.device | str) -> PackedSequences:
        if not lengths or min(lengths) < 1:
            raise ValueError(f"packed sequences need at least one row each, got lengths {list(lengths)}")
        sizes = torch.tensor(lengths, device=device)
        starts = sizes.cumsum(0) - sizes
        slot = torch.arange(max(lengths), device=device)
        valid = slot[None, :] < sizes[:, None]
        index = torch.where(valid, starts[:, None] + slot[None, :], torch.zeros_like(slot)[None, :])
        real_slots = valid.reshape(-1).nonzero().squeeze(1)
        positions = slot[None, :].expand(len(lengths), -1).reshape(-1).index_select(0, real_slots)[None]
        return cls(tuple(lengths), index, valid, positions, real_slots)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def slot_waste(self) -> float:
        """The share of the slots' attention scores that are padding: 1 - sum(l^2) / (S x longest^2)."""
        return 1 - sum(n * n for n in self.lengths) / (len(self.lengths) * max(self.lengths) ** 2)

    def key_mask(self) -> torch.Tensor:
        """[S, 1, 1, longest]: True at a slot's real keys (bidirectional attention)."""
        return self.valid[:, None, None, :]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    packing: PackedSequences | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query [1, H, N, d], key/value [1, H_kv, N, d] over packed rows;
    returns [1, N, H, d]. Without `packing`, transformers' SDPA on whatever it was given."""
    if packing is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("sliding_window") or kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        raise ValueError("packed attention has no sliding window, softcap or sinks (packing_supported refuses them)")
    if query.shape[0] != 1 or query.shape[2] != packing.total:
        raise ValueError(f"packed attention expects one row of {packing.total} positions, got {tuple(query.shape)}")
    causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    # Grouped-query attention (fewer key/value heads) without copying keys and values per query head.
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    if gqa and not causal:
        raise ValueError("packed attention: grouped-query attention is for causal (LLM) layers")
    if query.device.type == "cpu" and (packing.slot_waste > CPU_LOOP_WASTE or (
            max(packing.lengths) > CPU_SLOT_MAX_ROWS and torch.get_num_threads() <= query.shape[1])):
        # On a CPU a call per example costs little, and computes none of the slots' padding.
        parts = zip(*(t.split(packing.lengths, dim=2) for t in (query, key, value)), strict=True)
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=causal, scale=scaling, **gqa) for q, k, v in parts], dim=2)
        return out.transpose(1, 2), None
    # [1, H, N, d] -> [S, H, longest, d]: each example in its own slot.
    slots = [t[0].index_select(1, packing.index.reshape(-1)).view(t.shape[1], *packing.index.shape, t.shape[-1])
             .transpose(0, 1) for t in (query, key, value)]
    # Causal: a real row sees only earlier rows of its slot, all real, so no mask is needed. Bidirectional:
    # the slot's padded keys are masked. Padded query rows are computed and dropped.
    out = torch.nn.functional.scaled_dot_product_attention(
        *slots, attn_mask=None if causal else packing.key_mask(), dropout_p=dropout, is_causal=causal, scale=scaling,
        **gqa,
    )
    rows = out.transpose(1, 2).reshape(-1, *out.shape[1:2], out.shape[-1])  # [S x longest, H, d]
    return rows.index_select(0, packing.real_slots)[None], None  # [1, N, H, d]


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def packing_supported(*configs) -> bool:
    """Whether models of these transformers configs can train packed: each attends with ``osum_packed`` and
    in full (a sliding window or other layer types would need per-example windows); otherwise a warning says
    why the steps stay padded."""
    for config in configs:
        layers = set(getattr(config, "layer_types", None) or ["full_attention"])
        why = (f"its attention is {config._attn_implementation!r}, not sdpa" if config._attn_implementation != ATTENTION
               else f"it has {', '.join(sorted(layers - {'full_attention'}))} layers" if layers != {"full_attention"}
               else None)
        if why:
            warnings.warn(f"model.packed: the {config.model_type} model trains on padded batches: {why} "
                          "(set model.packed=false to silence this)", stacklevel=3)
            return False
    return True


def use_packed_attention(config) -> None:
    """Switch a transformers config from ``sdpa`` to ``osum_packed`` (the same outside packed calls);
    any other implementation (eager, flash attention) is kept."""
    if config._attn_implementation in (None, "sdpa"):
        config._attn_implementation = ATTENTION

"""Padding a list of dataset items into one batch of tensors (plus task names and keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence


def pad(tensors: Sequence[torch.Tensor], value: float) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long)
    return pad_sequence(list(tensors), batch_first=True, padding_value=value), lengths


def collate_examples(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Right-padded tensors with their lengths. Keys: features [B,T,M], feature_lengths, prompt_ids,
    prompt_lengths, target_ids, target_lengths, target_weights, ctc_ids, ctc_lengths; tasks, keys, targets (lists);
    in training also step_tokens and step_items (ints: the loss's normaliser, see `PlanBatchSampler`)."""
    batch: dict[str, Any] = {
        "tasks": [i["task"] for i in items],
        "keys": [i["key"] for i in items],
        "targets": [i["target"] for i in items],
    }
    batch["features"], batch["feature_lengths"] = pad([i["features"] for i in items], 0.0)
    for name in ("prompt_ids", "target_ids", "ctc_ids"):
        batch[name], batch[name.replace("_ids", "_lengths")] = pad([i[name] for i in items], 0)
    batch["target_weights"], _ = pad([i["target_weights"] for i in items], 0.0)
    if items and items[0].get("step_tokens"):
        batch["step_tokens"], batch["step_items"] = items[0]["step_tokens"], items[0]["step_items"]
    return batch

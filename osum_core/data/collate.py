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
    prompt_lengths and, for examples with a target, target_ids, target_lengths, target_weights, ctc_ids,
    ctc_lengths, ctc_weights (each example's task's ctc_loss_weight); lists: tasks, keys, targets and, as `SpeechDataset` gives them, sources (where each item
    is listed), files (where its audio is) and seconds (its audio's duration); in training also
    step_tokens and step_items (ints: the loss's normaliser, see `PlanBatchSampler`); skipped: the items
    the dataset could not load (`BadItem.to_json` rows), left out of the tensors. A batch whose every item
    was skipped has only the (empty) lists and skipped."""
    skipped = [i["skipped"] for i in items if "skipped" in i]
    step = next((i for i in items if i.get("step_tokens")), None)
    items = [i for i in items if "skipped" not in i]
    batch: dict[str, Any] = {
        "skipped": skipped,
        "tasks": [i["task"] for i in items],
        "keys": [i["key"] for i in items],
        "targets": [i["target"] for i in items],
    }
    for name, listed in (("source", "sources"), ("file", "files"), ("seconds", "seconds")):
        if all(name in i for i in items):  # what `SpeechDataset` tells of each item (items made by hand may not)
            batch[listed] = [i[name] for i in items]
    if step is not None:
        batch["step_tokens"], batch["step_items"] = step["step_tokens"], step["step_items"]
    if not items:
        return batch
    batch["features"], batch["feature_lengths"] = pad([i["features"] for i in items], 0.0)
    for name in ("prompt_ids", "target_ids", "ctc_ids"):
        if name in items[0]:
            batch[name], batch[name.replace("_ids", "_lengths")] = pad([i[name] for i in items], 0)
    if "target_weights" in items[0]:
        batch["target_weights"], _ = pad([i["target_weights"] for i in items], 0.0)
    if "ctc_weight" in items[0]:
        batch["ctc_weights"] = torch.tensor([i["ctc_weight"] for i in items], dtype=torch.float32)
    return batch

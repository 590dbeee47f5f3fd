"""The tokenizer of a run: ``model.llm.tokenizer``, else the ``--init`` checkpoint's, else the LLM's; or, for
a model with neither a path nor a tokenizer (the demo), a BPE trained on the run's targets and prompts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from osum_core.data.bad_items import BadItem
from osum_core.data.dataset import assign_task, task_target
from osum_core.data.sources import split_records
from osum_core.demo.tokenizer import train_demo_tokenizer
from osum_core.model.pretrained import pretrained
from osum_core.task import Target, Task


def target_tags(targets: Iterable[Target]) -> set[str]:
    """Every ``<...>`` marker in the targets (labels, timestamps, ``<开始回答>``): whole tokens of the demo tokenizer."""
    return {tag for target in targets for tag in re.findall(r"<[^<>]+>", target.text)}


def demo_tokenizer_for(cfg: Mapping[str, Any], tasks: Mapping[str, Task]):
    """A BPE over the training targets (each built by `task_target`, so a bad line is named) and prompts.
    With ``data.on_error: skip`` bad lines are passed over here; the data module counts them."""
    selected = list(tasks.values())
    skip = cfg["data"]["on_error"] == "skip"
    records = split_records(cfg["data"]["train"], "data.train", (lambda error: None) if skip else None)
    targets = []
    for record in records:
        task = assign_task(record, selected)
        if task is None:
            continue
        try:
            targets.append(task_target(record, task))
        except BadItem:
            if not skip:
                raise
    prompts = [p for task in tasks.values() for p in task.prompt_bank(cfg["data"]["prompt_language"])]
    tags = target_tags(targets) | {f"<{label}>" for t in tasks.values() for label in t.labels}
    # Every target's words, written or not (a label-only task's transcript is still the CTC head's target), so
    # that its ASR+X and label-only forms (`tasks.<name>.transcript`) split the transcripts alike.
    texts = [re.sub(r"<[^<>]+>", " ", (t.body or t.transcript) + t.suffix) for t in targets] + prompts
    return train_demo_tokenizer(texts, tags, cfg["model"]["llm"]["demo_tokenizer_vocab"])


def run_tokenizer(cfg: Mapping[str, Any], tasks: Mapping[str, Task], save_to: Path | None):
    """The run's tokenizer, with a pad token (as OSUM adds for Qwen2), saved to `save_to` (None: by another
    process; every process builds the same one)."""
    from transformers import AutoTokenizer

    llm = cfg["model"]["llm"]
    # Starting from a checkpoint, its tokenizer comes along (a demo tokenizer cannot be trained twice alike).
    init_tokenizer = Path(cfg["init"]) / "tokenizer" if cfg["init"] else None
    if llm["tokenizer"]:
        tokenizer = pretrained(AutoTokenizer.from_pretrained, llm["tokenizer"], "model.llm.tokenizer")
    elif init_tokenizer is not None and init_tokenizer.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(init_tokenizer))
    elif llm["path"]:
        tokenizer = pretrained(AutoTokenizer.from_pretrained, llm["path"], "model.llm.path")
    else:
        tokenizer = demo_tokenizer_for(cfg, tasks)
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    if save_to is not None:
        tokenizer.save_pretrained(save_to)
    return tokenizer

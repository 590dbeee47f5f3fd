"""Batched decoding: the batches of an evaluation plan -> generated text, and ``osum predict``'s answers.

Decoding reads its inputs as ``osum fit``'s validation and test read theirs: an `EpochPlan` of the examples
(each one's length checked against the model's longest input, ``data.too_long``), cut into batches by a
`PlanBatchSampler`, loaded by `SpeechDataset` in dataloader workers (``data.num_workers``) and padded by
`collate_examples`; the text comes from `generated_texts`, as at validation. A batch holds `batch_size`
utterances sorted by length (`decoding_buckets`); the model pads each batch on the left with position ids
that skip the padding, so an answer does not depend on its batch (tested). Results come back in input
order.

Decoding is strict: the first item that cannot be used, found while planning or in a worker, stops it and
is named (a `BadItem`), since a test set silently smaller than it says would mislead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from osum_core.data.bad_items import BadItem, SkipLog
from osum_core.data.dataset import (
    ExampleLength,
    ExamplePreparer,
    SpeechDataset,
    TaskPrompts,
    prediction_example,
)
from osum_core.data.epoch_plan import EpochPlan, Piece, PlanSource
from osum_core.data.loader import PlanBatchSampler, PlanLoader, plan_loader
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Prediction, Target, Task

UNBOUNDED = sys.maxsize  # a frame or token budget that never cuts a batch


def decoding_buckets(batch_size: int) -> list[dict[str, Any]]:
    """``data.buckets`` for decoding: `batch_size` utterances a batch, whatever their frames and tokens.
    Training's budgets (``data.max_frames``, ``data.max_tokens``) size a backward pass; decoding needs far
    less memory, and ``--batch-size`` is what it is given."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    return [{"max_seconds": UNBOUNDED, "batch_size": batch_size, "max_frames": UNBOUNDED, "max_tokens": UNBOUNDED}]


@dataclass(frozen=True)
class Request:
    """One utterance to answer: its audio file, the task that parses the answer (None for a free-form
    prompt), the prompt text, and where it was listed for messages (a manifest's ``file:line``; by default
    its place among the inputs, ``input N``)."""

    key: str
    file: str
    task: Task | None
    prompt: str
    source: str | None = None


@dataclass
class Answer:
    request: Request
    text: str
    prediction: Prediction | None
    seconds: float  # audio duration

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "key": self.request.key,
            "file": self.request.file,
            "task": self.request.task.name if self.request.task else None,
            "prompt": self.request.prompt,
            "text": self.text,
            "duration": round(self.seconds, 3),
        }
        if self.prediction is not None:
            row["transcript"] = self.prediction.transcript
            row["valid"] = self.prediction.valid  # False: the text is not in the task's output format
            if self.prediction.label is not None:
                row["label"] = self.prediction.label
            row.update(self.prediction.fields)
        return row


@dataclass
class DecodeStats:
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    utterances: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """Decoding time per second of audio (below 1: faster than real time)."""
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass(frozen=True)
class Decoded:
    """One item of a loader's plan and the text generated for it."""

    key: str
    task: str  # the name of its prompts (its task's, for an example with a target)
    text: str
    target: Target | None
    file: str  # where its audio is: the file, or the shard and key
    seconds: float  # its audio's duration


def generated_texts(model: SpeechLLM, tokenizer: Any, batch: Mapping[str, Any], settings: GenerationSettings,
                    synced_gpus: bool | None = None) -> list[str]:
    """The text generated for each example of a collated batch (its tensors on the model's device), special
    tokens left out: what validation, ``osum test`` and ``osum predict`` score or print. `synced_gpus`: as
    `SpeechLLM.generate` takes it."""
    return decoded_texts(tokenizer, model.generate(settings=settings, synced_gpus=synced_gpus, **batch))


def decoded_texts(tokenizer: Any, ids: Sequence[Sequence[int]]) -> list[str]:
    """The text of each generated sequence: special tokens left out, surrounding whitespace stripped (what
    `osum_core.inference.streaming.BatchTextStreamer`'s pieces join to)."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def stop_at(row: Mapping[str, Any]) -> NoReturn:
    """Raise the bad item that a skip row (`BadItem.to_json`) describes."""
    raise BadItem(row["message"], row["reason"], source=row["source"], key=row["key"])


def decode_loader(
    model: SpeechLLM,
    tokenizer: Any,
    loader: PlanLoader,
    settings: GenerationSettings,
    *,
    device: torch.device | str = "cpu",
    stats: DecodeStats | None = None,
    skips: SkipLog | None = None,
    progress: bool = False,
) -> list[Decoded]:
    """Every item of `loader`'s plan decoded, in the order the plan lists them (its inputs' order). The first
    bad item stops it: one the loader's dataset hands back in a batch, or one that planning recorded in
    `skips` (the log of the data module that made the plan). `progress`: a tqdm bar on stderr (utterances per
    second and time left)."""
    sampler = loader.batch_sampler
    # The plan lists its items in input order before it sorts them by length into batches; one pass over
    # its metadata (no audio) finds that order, and any item that planning finds bad.
    listed = sampler.plan.evaluation_stream(sampler.rank, sampler.world_size)
    order = {example.source: index for index, example in enumerate(listed)}
    stats = stats if stats is not None else DecodeStats()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(order), desc="decoding", unit="utt", dynamic_ncols=True)
    planned_bad = skips.rows if skips is not None else []  # grows while the sampler plans, alongside decoding
    if planned_bad:
        stop_at(planned_bad[0])
    decoded: list[tuple[int, Decoded]] = []
    for batch in loader:
        bad = batch["skipped"] or planned_bad
        if bad:
            stop_at(bad[0])
        began = time.perf_counter()
        texts = generated_texts(
            model, tokenizer, {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, settings
        )
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        stats.decode_seconds += time.perf_counter() - began
        stats.batches += 1
        stats.batch_sizes.append(len(texts))
        stats.utterances += len(texts)
        stats.audio_seconds += sum(batch["seconds"])
        for i, text in enumerate(texts):
            item = Decoded(batch["keys"][i], batch["tasks"][i], text, batch["targets"][i], batch["files"][i],
                           batch["seconds"][i])
            decoded.append((order[batch["sources"][i]], item))
        if bar is not None:
            bar.update(len(texts))
    if bar is not None:
        bar.close()
    return [item for _, item in sorted(decoded, key=lambda pair: pair[0])]


def predict(
    model: SpeechLLM,
    tokenizer: Any,
    requests: Sequence[Request],
    settings: GenerationSettings,
    *,
    n_mels: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    stats: DecodeStats | None = None,
    progress: bool = False,
    workers: int = 0,
    too_long: str = "skip",
    frames_per_token: int | None = None,
) -> list[Answer]:
    """Answers in the order of `requests`, decoded by `decode_loader`: `batch_size` utterances a batch, read by
    `workers` dataloader workers (``data.num_workers``). An utterance longer than the model's longest input
    is an error, or with `too_long` ``crop`` is cut to it (``data.too_long``); `frames_per_token` is
    ``data.frames_per_token``."""
    names: dict[str, str] = {}  # prompt text -> its name in the dataset's prompts
    for request in requests:
        names.setdefault(request.prompt, f"prompt {len(names) + 1}")
    prompts = TaskPrompts({name: (text,) for text, name in names.items()}, tokenizer)
    longest = model.encoder.max_input_frames
    examples = [
        prediction_example({"key": r.key, "wav": r.file, "_source": r.source or f"input {n}"}, names[r.prompt],
                           longest, too_long)
        for n, r in enumerate(requests, start=1)
    ]
    sources = [example.source for example in examples]
    if len(set(sources)) < len(sources):
        raise ValueError("requests name the same source twice: each needs its own (Request.source)")
    plan = EpochPlan(
        [PlanSource("inputs", 1.0, [Piece("inputs", examples=examples)])],
        ExamplePreparer([], tokenizer, cached_texts=0),  # reads no records: the examples are prepared above
        ExampleLength(prompts, model.sequence_length, frames_per_token),
        {"max_frames": UNBOUNDED, "max_tokens": UNBOUNDED, "sort_window": max(len(examples), 1),
         "buckets": decoding_buckets(batch_size)},
        shuffle_buffer=1, task_weights=None, seed=0,
    )
    dataset = SpeechDataset(
        {}, prompts, tokenizer.eos_token_id, n_mels=n_mels, train=False, spec_augment=None, seed=0,
        ctc_target="transcript",  # unused: these examples have no target
        max_frames=longest if too_long == "crop" else None, on_error="skip",
    )
    loader = plan_loader(dataset, PlanBatchSampler(plan, workers=workers), workers, persistent=False)
    decoded = decode_loader(model, tokenizer, loader, settings, device=device, stats=stats, progress=progress)
    return [
        Answer(request, item.text, request.task.parse_output(item.text) if request.task else None, item.seconds)
        for request, item in zip(requests, decoded, strict=True)
    ]

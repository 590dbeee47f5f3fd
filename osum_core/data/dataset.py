"""From manifest lines to model-ready examples: task assignment, targets and token ids, features."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import soundfile
import torch
from torch.utils.data import Dataset

from osum_core.data.audio import AudioError, load_audio
from osum_core.data.features import HOP_LENGTH, SAMPLE_RATE, LogMel, SpecAugment
from osum_core.task import Target, Task


class ExampleError(ValueError):
    """A manifest line whose content a task cannot use; the message starts with ``file:line``."""


@dataclass(frozen=True)
class PreparedExample:
    """One example after its task formed the target: everything but the audio features."""

    key: str
    wav: str
    task: str
    target: Target
    transcript_ids: tuple[int, ...]  # the words alone (the CTC head's target)
    body_ids: tuple[int, ...]  # what the LLM writes before the suffix (the transcript, or e.g. timestamped words)
    suffix_ids: tuple[int, ...]
    frames: int
    source: str


def assign_tasks(examples: Sequence[Mapping[str, Any]], tasks: Sequence[Task]) -> tuple[list[tuple[Mapping, Task]], int]:
    """Pair each example with the first task that selects it; also return how many no task selected."""
    pairs = []
    for example in examples:
        task = next((t for t in tasks if t.selects(example)), None)
        if task is not None:
            pairs.append((example, task))
    return pairs, len(examples) - len(pairs)


def audio_frames(path: str, source: str) -> int:
    """Feature frames the utterance will have, read from the file header (no decoding)."""
    try:
        info = soundfile.info(path)
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        raise AudioError(f"{source}: audio file {path} is missing or unreadable") from None
    return int(info.frames * SAMPLE_RATE / info.samplerate) // HOP_LENGTH


def example_source(example: Mapping[str, Any]) -> str:
    """Where a manifest line came from (``file:line``), for error messages."""
    return str(example.get("_source", example.get("key", "?")))


def task_target(example: Mapping[str, Any], task: Task) -> Target:
    """`task`'s target for a manifest line; a line the task cannot use is an `ExampleError` naming it."""
    try:
        return task.build_target(example)
    except (ValueError, KeyError, TypeError) as error:
        raise ExampleError(f"{example_source(example)}: task {task.name}: {error}") from None


def prepare_examples(
    examples: Sequence[Mapping[str, Any]], tasks: Sequence[Task], tokenizer: Any
) -> tuple[list[PreparedExample], int]:
    """Targets, token ids and lengths of every example that one of `tasks` selects (all checked up front,
    so a bad line fails before training rather than hours into it). Returns the examples and the number
    of lines no task selected."""
    pairs, unselected = assign_tasks(examples, tasks)
    prepared = []
    for example, task in pairs:
        source = example_source(example)
        target = task_target(example, task)
        prepared.append(
            PreparedExample(
                key=str(example["key"]),
                wav=str(example["wav"]),
                task=task.name,
                target=target,
                transcript_ids=tuple(tokenizer.encode(target.transcript, add_special_tokens=False)),
                body_ids=tuple(tokenizer.encode(target.body or target.transcript, add_special_tokens=False)),
                suffix_ids=tuple(tokenizer.encode(target.suffix, add_special_tokens=False)) if target.suffix else (),
                frames=audio_frames(str(example["wav"]), source),
                source=source,
            )
        )
    return prepared, unselected


class SpeechDataset(Dataset):
    """Map-style dataset of prepared examples: loads audio, computes features, picks a prompt.

    Training draws one prompt per example and epoch at random (seeded by seed, epoch and index, so a run
    is reproducible) and applies SpecAugment; evaluation always uses each task's first prompt."""

    def __init__(
        self,
        examples: Sequence[PreparedExample],
        tasks: Mapping[str, Task],
        tokenizer: Any,
        *,
        n_mels: int,
        prompt_language: str,
        train: bool,
        spec_augment: SpecAugment | None,
        seed: int,
        ctc_target: str,
    ) -> None:
        self.examples = list(examples)
        self.tasks = dict(tasks)
        self.eos_id = tokenizer.eos_token_id
        self.log_mel = LogMel(n_mels)
        self.train = train
        self.spec_augment = spec_augment if train else None
        self.seed = seed
        if ctc_target not in ("transcript", "target"):
            raise ValueError(f"loss.ctc_target must be transcript or target, got {ctc_target!r}")
        self.ctc_includes_suffix = ctc_target == "target"
        self.prompt_ids = {
            name: [tuple(tokenizer.encode(p, add_special_tokens=False)) for p in task.prompt_bank(prompt_language)]
            for name, task in self.tasks.items()
        }

    def __len__(self) -> int:
        return len(self.examples)

    def max_prompt_tokens(self, task: str) -> int:
        return max(len(p) for p in self.prompt_ids[task])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """`item` is an index, or (index, epoch) as the training batch sampler yields."""
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        example = self.examples[index]
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        wave = load_audio(example.wav)
        features = self.log_mel(wave)
        if self.spec_augment is not None:
            generator = torch.Generator().manual_seed(rng.randrange(2**31))
            features = self.spec_augment(features, generator)
        prompts = self.prompt_ids[example.task]
        prompt = prompts[rng.randrange(len(prompts))] if self.train else prompts[0]
        task = self.tasks[example.task]
        target_ids = example.body_ids + example.suffix_ids + (self.eos_id,)
        suffix_weight = task.loss_weight * task.label_loss_weight
        weights = [task.loss_weight] * len(example.body_ids) + [suffix_weight] * len(example.suffix_ids)
        weights.append(suffix_weight if example.suffix_ids else task.loss_weight)  # end-of-text follows the label
        return {
            "key": example.key,
            "task": example.task,
            "target": example.target,
            "features": features,
            "prompt_ids": torch.tensor(prompt, dtype=torch.long),
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "target_weights": torch.tensor(weights, dtype=torch.float32),
            "ctc_ids": torch.tensor(
                example.transcript_ids + (example.suffix_ids if self.ctc_includes_suffix else ()), dtype=torch.long
            ),
        }

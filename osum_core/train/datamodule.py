"""`SpeechDataModule`: manifests -> prepared examples -> duration batches, per split."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Sampler

from osum_core.data.batching import duration_batches
from osum_core.data.collate import collate_examples
from osum_core.data.dataset import PreparedExample, SpeechDataset, prepare_examples
from osum_core.data.features import SpecAugment
from osum_core.data.manifest import read_manifests
from osum_core.data.task_mixing import mix_tasks
from osum_core.task import Task


class EpochCounter:
    """The epoch a batch sampler is in. Lightning calls ``set_epoch`` only on ``loader.sampler`` and
    ``loader.batch_sampler.sampler`` (never on the batch sampler itself), so `DurationBatchSampler` keeps
    its epoch here, as its ``sampler``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class DurationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of example indices under a frame and token budget, recomputed each epoch.

    Training epochs mix tasks by sampling weight and shuffle; evaluation keeps one fixed order. Under
    data parallelism each rank takes every world_size-th batch, and all ranks get the same count. The
    epoch comes from ``self.sampler`` (`EpochCounter`), where Lightning sets it."""

    def __init__(
        self,
        frames: Sequence[int],
        tokens: Sequence[int],
        tasks: Sequence[str],
        budget: Mapping[str, int],
        sampling_weights: Mapping[str, float] | None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.frames, self.tokens, self.tasks = list(frames), list(tokens), list(tasks)
        self.budget = dict(budget)
        self.sampling_weights = sampling_weights  # None: evaluation, every example once, in order
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.sampler = EpochCounter()
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        training = self.sampling_weights is not None
        epoch_seed = self.seed * 100003 + self.epoch
        order = mix_tasks(self.tasks, self.sampling_weights, epoch_seed) if training else None
        batches = duration_batches(
            self.frames,
            self.tokens,
            self.budget["max_frames"],
            self.budget["max_tokens"],
            order=order,
            sort_window=self.budget["sort_window"],
            seed=epoch_seed if training else None,
        )
        if self.world_size > 1:
            usable = len(batches) - len(batches) % self.world_size if training else len(batches)
            batches = batches[self.rank : usable : self.world_size]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # Each index travels with its epoch, so the dataset's per-epoch randomness (prompt choice,
        # SpecAugment) is right even inside persistent worker processes.
        return iter([[(index, self.epoch) for index in batch] for batch in self.batches()])

    def __len__(self) -> int:
        return len(self.batches())


class SpeechDataModule(L.LightningDataModule):
    """Reads ``data.train`` / ``data.val`` / ``data.test`` manifests for the selected tasks.

    `cfg` is the resolved ``data:`` config section (a plain dict)."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        tasks: Mapping[str, Task],
        tokenizer: Any,
        seed: int,
        ctc_target: str,
        sequence_length: Callable[..., int],
    ) -> None:
        """`sequence_length(frames, prompt_tokens, target_tokens, frames_per_step)`: the LLM sequence length
        of an example, as the model lays it out (`SpeechLLM.sequence_length`)."""
        super().__init__()
        self.ctc_target = ctc_target
        self.sequence_length = sequence_length
        self.cfg = dict(cfg)
        self.tasks = dict(tasks)
        self.tokenizer = tokenizer
        self.seed = seed
        self.examples: dict[str, list[PreparedExample]] = {}
        self.unselected: dict[str, int] = {}

    def prepare_split(self, split: str) -> list[PreparedExample]:
        if split not in self.examples:
            paths = self.cfg[split]
            if not paths:
                raise ValueError(f"data.{split} is not set: give a manifest path or a list of paths")
            examples, unselected = prepare_examples(read_manifests(paths), list(self.tasks.values()), self.tokenizer)
            if not examples:
                tags = ", ".join(t.tag for t in self.tasks.values())
                raise ValueError(f"data.{split} ({paths}) has no example for the selected tasks ({tags})")
            self.examples[split], self.unselected[split] = examples, unselected
        return self.examples[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ("train", "val", "test"))
        for split in splits:
            self.prepare_split(split)

    def dataset(self, split: str) -> SpeechDataset:
        augment = self.cfg["spec_augment"]
        return SpeechDataset(
            self.prepare_split(split),
            self.tasks,
            self.tokenizer,
            n_mels=self.cfg["n_mels"],
            prompt_language=self.cfg["prompt_language"],
            train=split == "train",
            spec_augment=SpecAugment(**{k: v for k, v in augment.items() if k != "enabled"}) if augment["enabled"] else None,
            seed=self.seed,
            ctc_target=self.ctc_target,
        )

    def loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        examples = dataset.examples
        per_step = self.cfg["frames_per_token"]
        tokens = [
            self.sequence_length(
                e.frames, dataset.max_prompt_tokens(e.task), len(e.body_ids) + len(e.suffix_ids) + 1, per_step
            )
            for e in examples
        ]
        training = split == "train"
        trainer = self.trainer
        sampler = DurationBatchSampler(
            [e.frames for e in examples],
            tokens,
            [e.task for e in examples],
            {k: self.cfg[k] for k in ("max_frames", "max_tokens", "sort_window")},
            {name: task.sampling_weight for name, task in self.tasks.items()} if training else None,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        workers = self.cfg["num_workers"]
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_examples,
            num_workers=workers,
            persistent_workers=workers > 0 and training,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

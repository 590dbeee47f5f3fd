"""`SpeechDataModule`: ``data.train/val/test`` (manifests, shard lists, mixtures) -> an epoch plan per
split -> the resumable loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L

from osum_core.data.bad_items import BadItem, SkipLog, check_on_error, error_handler
from osum_core.data.batching import check_buckets
from osum_core.data.dataset import (
    ExampleLength,
    ExamplePreparer,
    PreparedExample,
    SpeechDataset,
    TaskPrompts,
    check_new_key,
)
from osum_core.data.epoch_plan import EpochPlan, Piece, PlanSource
from osum_core.data.features import SpecAugment
from osum_core.data.length_index import repeated_keys
from osum_core.data.loader import EpochPosition, PlanBatchSampler, PlanLoader, plan_loader
from osum_core.data.manifest import read_manifest
from osum_core.data.sources import resolve_sources
from osum_core.task import Task


class SpeechDataModule(L.LightningDataModule):
    """Reads ``data.train`` / ``data.val`` / ``data.test`` manifests for the selected tasks.

    `cfg` is the resolved ``data:`` config section (a plain dict). Bad items go to `skips` (or raise,
    with ``data.on_error: raise``); `known_tasks` are all installed tasks (a tag none of them has is an
    error); `max_input_frames` is the encoder's longest input (``data.too_long`` says what to do beyond)."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        tasks: Mapping[str, Task],
        tokenizer: Any,
        seed: int,
        ctc_target: str,
        sequence_length: Callable[..., int],
        known_tasks: Sequence[Task] = (),
        max_input_frames: int | None = None,
        skips: SkipLog | None = None,
        packed: bool = False,
    ) -> None:
        """`sequence_length(frames, prompt_tokens, target_tokens, frames_per_step)`: the LLM sequence length
        of an example, as the model lays it out (`SpeechLLM.sequence_length`). `packed`: the model trains on
        packed batches, so the budgets count real frames and tokens rather than padded ones."""
        super().__init__()
        check_buckets(cfg["buckets"])
        self.on_error = check_on_error(cfg["on_error"])
        if cfg["too_long"] not in ("skip", "crop"):
            raise ValueError(f"data.too_long must be skip or crop, got {cfg['too_long']!r}")
        self.skips = skips if skips is not None else SkipLog()
        self.handle = error_handler(self.on_error, self.skips)
        self.max_input_frames = max_input_frames
        self.preparer = ExamplePreparer(list(tasks.values()), tokenizer, tuple(known_tasks), max_input_frames,
                                        cfg["too_long"])
        self.ctc_target = ctc_target
        self.sequence_length = sequence_length
        self.packed = packed
        self.cfg = dict(cfg)
        self.tasks = dict(tasks)
        self.tokenizer = tokenizer
        self.seed = seed
        self.plans: dict[str, EpochPlan] = {}
        self.train_loader: PlanLoader | None = None  # this epoch's (rebuilt each epoch)
        self.resumed: EpochPosition | None = None  # where a checkpoint's epoch stood, until that epoch is over
        self.unselected: dict[str, int] = {}  # manifest lines no selected task takes, per split
        self.prompts = TaskPrompts.of_tasks(self.tasks, tokenizer, cfg["prompt_language"])
        self.example_length = ExampleLength(self.prompts, sequence_length, cfg["frames_per_token"])

    @classmethod
    def for_model(cls, cfg: Mapping[str, Any], tasks: Mapping[str, Task], tokenizer: Any, model: Any,
                  known_tasks: Sequence[Task] = (), skips: SkipLog | None = None) -> SpeechDataModule:
        """The data module of a run's resolved config `cfg` (its ``data`` section, seed and CTC target) for
        `model` (a `SpeechLLM`: how it lays out a sequence, its encoder's longest input): what ``osum fit``
        trains and tests on, and ``osum test`` decodes."""
        return cls(cfg["data"], tasks, tokenizer, cfg["seed"], cfg["loss"]["ctc_target"], model.sequence_length,
                   known_tasks, model.encoder.max_input_frames, skips, packed=model.packed)

    def manifest_examples(self, path: Any, keys: set[str]) -> tuple[list[PreparedExample], int]:
        """The prepared examples of one manifest, every line checked now (a bad one is skipped or raises
        before training starts), and the number of lines no selected task takes."""
        examples, unselected = [], 0
        for record in read_manifest(path, self.handle):
            try:
                check_new_key(record, keys)
                example = self.preparer.prepare(record)
            except BadItem as error:
                self.handle(error)
                continue
            if example is None:
                unselected += 1
            else:
                examples.append(example)
        return examples, unselected

    def plan(self, split: str) -> EpochPlan:
        """The split's epoch plan. Manifests are read and checked here, every line (so a bad line fails
        before training); shards are read lazily, through their length index."""
        if split not in self.plans:
            tasks = list(self.tasks.values())
            sources, unselected, manifest_items = [], 0, 0
            for source in resolve_sources(self.cfg[split], f"data.{split}", self.handle):
                # A key repeats within a source, not across a mixture's sources: OSUM's task sources label the
                # same utterances (same keys) for different tasks.
                keys: set[str] = set()
                pieces = []
                for path in source.manifests:
                    examples, skipped = self.manifest_examples(path, keys)
                    unselected += skipped
                    manifest_items += len(examples)
                    if examples:
                        pieces.append(Piece(str(path), examples=examples))
                repeats = repeated_keys(source.shards, keys)  # the source's keys, in order: manifests, then shards
                pieces += [Piece(str(shard), shard_list=lst, shard=shard, repeats=r)
                           for (lst, shard), r in zip(source.shards, repeats, strict=True)]
                sources.append(PlanSource(source.name, source.weight, pieces))
            if not any(p.shard for s in sources for p in s.pieces) and not manifest_items:
                tags = ", ".join(t.tag for t in tasks)
                bad = self.skips.rows
                why = f"; {len(bad)} bad item(s) skipped, the first: {bad[0]['message']}" if bad else ""
                raise ValueError(f"data.{split} ({self.cfg[split]}) has no example for the selected tasks ({tags}){why}")
            training = split == "train"
            self.plans[split] = EpochPlan(
                sources, self.preparer, self.example_length,
                {**{k: self.cfg[k] for k in ("max_frames", "max_tokens", "sort_window", "buckets")},
                 "packed": self.packed and training}, self.cfg["shuffle_buffer"],
                {name: task.sampling_weight for name, task in self.tasks.items()} if training else None, self.seed,
                self.handle,
            )
            self.unselected[split] = unselected
        return self.plans[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ("train", "val", "test"))
        for split in splits:
            self.plan(split)

    def dataset(self, split: str) -> SpeechDataset:
        augment = self.cfg["spec_augment"]
        return SpeechDataset(
            self.tasks,
            self.prompts,
            self.tokenizer.eos_token_id,
            n_mels=self.cfg["n_mels"],
            train=split == "train",
            spec_augment=SpecAugment(**{k: v for k, v in augment.items() if k != "enabled"}) if augment["enabled"] else None,
            seed=self.seed,
            ctc_target=self.ctc_target,
            max_frames=self.max_input_frames if self.cfg["too_long"] == "crop" else None,
            on_error=self.on_error,
        )

    def loader(self, split: str) -> PlanLoader:
        training = split == "train"
        trainer = self.trainer
        workers = self.cfg["num_workers"]
        epoch = trainer.current_epoch if trainer and training else 0
        if self.resumed is not None and self.resumed.epoch < epoch:
            self.resumed = None  # that epoch is over
        sampler = PlanBatchSampler(
            self.plan(split),
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            workers=workers,
            accumulate=trainer.accumulate_grad_batches if trainer and training else 1,
            epoch=epoch,
            resumed=self.resumed if training else None,
        )
        return plan_loader(self.dataset(split), sampler, workers, persistent=training, seed=self.seed)

    def train_dataloader(self) -> PlanLoader:
        self.train_loader = self.loader("train")
        return self.train_loader

    def val_dataloader(self) -> PlanLoader:
        return self.loader("val")

    def test_dataloader(self) -> PlanLoader:
        return self.loader("test")

    # Where the training epoch stands, in every checkpoint (Lightning saves a datamodule's state_dict), so
    # that a resumed run continues the epoch exactly (`osum_core.data.loader`).
    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self.train_loader.position().to_dict()} if self.train_loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_position" in state:
            self.resumed = EpochPosition.from_dict(state["train_position"])

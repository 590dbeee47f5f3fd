"""The lightning.Trainer of a run: the config's ``trainer:`` arguments, the run directory's loggers
(metrics.csv, tensorboard/), its resumable checkpoints/last.ckpt, the learning curve and a progress bar
that counts the run's optimiser steps."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from osum_core.checkpoints.atomic import AtomicCheckpointIO
from osum_core.checkpoints.run_dir import CHECKPOINT_DIR, LEARNING_CURVE, TRAIN_KEYS
from osum_core.config import trainer_arguments
from osum_core.train.key_log import KeyLog
from osum_core.train.learning_curve import LearningCurve
from osum_core.train.strategies import build_strategy


class StepProgressBar(TQDMProgressBar):
    """With ``trainer.max_steps``, the training bar runs over the whole run (step k of max_steps, with the
    rate and time left) instead of restarting each epoch against an epoch count of -1."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once: a reset each epoch would restart the rate and time left
            bar.reset(total=trainer.max_steps)
            bar.unit = "step"
        bar.n = trainer.global_step
        bar.set_description(f"train (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and bar.n != trainer.global_step:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()


def build_trainer(section: Mapping[str, Any], run_dir: Path, checkpoint_every: int | None = None,
                  log_keys: bool = False, deepspeed: Mapping[str, Any] | None = None,
                  extra_callbacks: Sequence[L.Callback] = ()) -> tuple[L.Trainer, LearningCurve]:
    """The Trainer for `section` (the ``trainer:`` config) writing into `run_dir`, and its learning curve.
    `checkpoint_every` (``checkpoint.every_n_steps``) also writes last.ckpt every that many steps;
    `log_keys` (``data.log_keys``) writes the keys of every step (`KeyLog`)."""
    arguments = trainer_arguments(section)
    arguments["strategy"] = build_strategy(section, deepspeed or {})
    # last.ckpt is replaced atomically (fsynced temporary + rename): a kill or a full disk while saving
    # leaves the previous one whole. DeepSpeed saves its own folder and does not use it.
    plugins = arguments.get("plugins") or []
    arguments["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
    loggers: list[Any] = [CSVLogger(run_dir, name="", version="")]
    try:
        import tensorboard  # noqa: F401  (optional)
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ImportError:
        pass
    # The CSV log lives in the run directory itself, which osum has already written config.yaml into.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    # One last.ckpt per run directory, also when a copied or resumed run writes it again.
    # At each epoch's end and the run's (Lightning's default), and every N steps by a second callback
    # (one ModelCheckpoint takes steps or epochs, not both); both write the same last.ckpt.
    where = dict(dirpath=run_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0, enable_version_counter=False)
    callbacks: list[L.Callback] = [ModelCheckpoint(**where)]
    if checkpoint_every:
        callbacks.append(ModelCheckpoint(**where, every_n_train_steps=checkpoint_every))
    curve = LearningCurve(run_dir / LEARNING_CURVE)
    callbacks.append(curve)
    if log_keys:
        callbacks.append(KeyLog(run_dir / TRAIN_KEYS))
    callbacks.extend(extra_callbacks)
    if arguments.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    trainer = L.Trainer(**arguments, default_root_dir=run_dir, logger=loggers, callbacks=callbacks)
    return trainer, curve

"""The lightning.Trainer of a run: the config's ``trainer:`` arguments, the run directory's loggers
(metrics.csv, tensorboard/), its resumable checkpoints/last.ckpt, the learning curve and a progress bar
that counts the run's optimiser steps."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import ModelParallelStrategy

from osum_core.checkpoints.atomic import AtomicCheckpointIO
from osum_core.checkpoints.run_dir import CHECKPOINT_DIR, LEARNING_CURVE, TRAIN_KEYS
from osum_core.config import trainer_arguments
from osum_core.train.key_log import KeyLog
from osum_core.train.learning_curve import LearningCurve
from osum_core.train.skipped_items import SkippedItems
from osum_core.train.strategies import build_strategy


class KeptRowsWriter(ExperimentWriter):
    """metrics.csv's writer that keeps the rows the file already holds, where Lightning's deletes the file
    when it opens it: a resumed run appends to it (after `keep_until`)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def keep_until(self, step: int | None) -> None:
        """Drop the rows whose ``step`` is after `step` (None: every row)."""
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        if step is None:
            self._fs.rm_file(path)
            self.metrics_keys = []
            return
        with self._fs.open(path, "r", newline="") as file:
            kept = [row for row in csv.DictReader(file) if int(float(row["step"])) <= step]
        partial = f"{path}.partial"
        with self._fs.open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        self._fs.mv(partial, path)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing RUN_DIR/metrics.csv through `KeptRowsWriter`: a resumed run keeps the
    rows up to its checkpoint, a fresh run starts the file empty (`LoggedRowsResume`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> KeptRowsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptRowsWriter(log_dir=self.log_dir)
        return self._experiment


class LoggedRowsResume(L.Callback):
    """Trims metrics.csv when training starts (the checkpoint restored) and writes it out at each checkpoint.

    Its ``step`` column is Lightning's logging step (the loop's ``_batches_that_stepped``), not the global
    step: it trails it by one within a run and is restored with the loops. A row whose step is at most the
    restored one was logged by the steps the checkpoint holds (the rows of its own step come after the
    checkpoint is saved, with that step); later rows belong to steps that are trained again."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            logged = trainer.fit_loop.epoch_loop._batches_that_stepped if trainer.global_step else None
            for logger in trainer.loggers:
                if isinstance(logger, RunCSVLogger):
                    logger.experiment.keep_until(logged)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning writes the file every 100 rows: a kill would lose the rows of steps the checkpoint holds.
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.save()


class StepProgressBar(TQDMProgressBar):
    """With ``trainer.max_steps``, the training bar runs over the whole run (step k of max_steps, with the
    rate and time left) instead of restarting each epoch against an epoch count of -1. After a resume it
    starts at the restored step, and its rate and time left count only the steps this process trains.
    Its postfix shows the bad items skipped so far (`SkippedItems`), once there are any."""

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        if trainer.max_steps <= 0:
            return
        # Here, not at each epoch's start: a reset would restart the rate and time left, and Lightning calls
        # no on_train_epoch_start for an epoch it resumes in the middle of.
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.unit = "step"
        # tqdm's rate is (n - initial) / elapsed: the restored steps were not trained in this time.
        bar.initial = bar.n = trainer.global_step
        bar.set_description(f"train (epoch {trainer.current_epoch})")

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description(f"train (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and bar.n != trainer.global_step:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        skipped = sum(callback.skipped for callback in trainer.callbacks if isinstance(callback, SkippedItems))
        if skipped:
            metrics["skipped"] = skipped
        return metrics


def build_trainer(section: Mapping[str, Any], run_dir: Path, checkpoint_every: int | None = None,
                  log_keys: bool = False, deepspeed: Mapping[str, Any] | None = None,
                  extra_callbacks: Sequence[L.Callback] = ()) -> tuple[L.Trainer, LearningCurve]:
    """The Trainer for `section` (the ``trainer:`` config) writing into `run_dir`, and its learning curve.
    `checkpoint_every` (``checkpoint.every_n_steps``) also writes last.ckpt every that many steps;
    `log_keys` (``data.log_keys``) writes the keys of every step (`KeyLog`)."""
    arguments = trainer_arguments(section)
    arguments["strategy"] = build_strategy(section, deepspeed or {})
    if isinstance(arguments["strategy"], ModelParallelStrategy):  # fsdp2
        # Evaluation under no_grad, as Lightning does for its FSDPStrategy (pytorch/pytorch#95957): weights
        # gathered inside inference_mode (Lightning's choice on NCCL) cannot be used by training afterwards.
        arguments["inference_mode"] = False
    # last.ckpt is replaced atomically (fsynced temporary + rename): a kill or a full disk while saving
    # leaves the previous one whole. DeepSpeed saves its own folder and does not use it.
    plugins = arguments.get("plugins") or []
    arguments["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
    loggers: list[Any] = [RunCSVLogger(run_dir, name="", version="")]
    try:
        import tensorboard  # noqa: F401  (optional)
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ImportError:
        pass
    # One last.ckpt per run directory, also when a copied or resumed run writes it again.
    # At each epoch's end and the run's (Lightning's default), and every N steps by a second callback
    # (one ModelCheckpoint takes steps or epochs, not both); both write the same last.ckpt.
    where = dict(dirpath=run_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0, enable_version_counter=False)
    callbacks: list[L.Callback] = [ModelCheckpoint(**where)]
    if checkpoint_every:
        callbacks.append(ModelCheckpoint(**where, every_n_train_steps=checkpoint_every))
    curve = LearningCurve(run_dir / LEARNING_CURVE)
    callbacks += [curve, LoggedRowsResume()]
    if log_keys:
        callbacks.append(KeyLog(run_dir / TRAIN_KEYS))
    callbacks.extend(extra_callbacks)
    if arguments.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    trainer = L.Trainer(**arguments, default_root_dir=run_dir, logger=loggers, callbacks=callbacks)
    return trainer, curve


RANKS_GRACE_SECONDS = 60


def stop_started_ranks(trainer: L.Trainer, grace: float = RANKS_GRACE_SECONDS) -> None:
    """After the first process failed: the ranks it started itself (Lightning's launcher of ``strategy=ddp``
    on one node) get `grace` seconds to end on their own (a failure every rank meets, each saying why), then
    are killed. Left alone, a rank waiting in a collective for the one that failed waits until that process's
    exit closes its connections, and if the exit is held up (a dataloader worker that does not end), for the
    process group's timeout (30 minutes), holding its device and the job's output. Ranks started by torchrun
    or SLURM are theirs to stop."""
    import subprocess

    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None)
    if not trainer.is_global_zero or not procs:
        return
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""A run's logs across resumes: learning_curve.jsonl and metrics.csv keep the rows up to the checkpoint's step
and append (the rows of steps after it are dropped: those steps are trained again); a fresh run starts both
empty. The curve's train_loss is each batch's own loss, also when micro-batches accumulate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, data_args

from osum_core.cli.main import main
from osum_core.train.learning_curve import curve_table
from osum_core.train.trainer import build_trainer


class Curved(L.LightningModule):
    """One weight; what `LearningCurve` reads of osum's module (eval_loss, evaluations), and a training step
    that returns its loss scaled for accumulation, as osum's does, beside the batch's own."""

    def __init__(self, accumulate: int = 1, lr: float = 0.1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.accumulate, self.lr = accumulate, lr
        self.eval_loss: dict[str, float] = {}
        self.evaluations: dict = {}

    def training_step(self, batch, batch_idx):
        loss = (self.w - batch["x"]).pow(2).mean()
        self.log("train/loss", loss)
        return {"loss": loss / self.accumulate, "batch_loss": loss.detach()}

    def validation_step(self, batch, batch_idx):
        self.eval_loss["val"] = float((self.w - batch["x"]).pow(2).mean())
        self.log("val/loss", self.eval_loss["val"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(values: list[float]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader([{"x": torch.tensor([v]), "keys": ["k"]} for v in values], batch_size=None)


def fit(run: Path, max_steps: int, *callbacks: L.Callback, resume: bool = False, **section) -> L.Trainer:
    """Steps of 1 batch, 10 batches an epoch, validation every 2 steps, last.ckpt every `checkpoint_every` steps
    (default 2) and at the end."""
    checkpoint_every, lr = section.pop("checkpoint_every", 2), section.pop("lr", 0.1)
    section = {"max_steps": max_steps, "val_check_interval": 2, "log_every_n_steps": 1, "accelerator": "cpu",
               "enable_progress_bar": False, "enable_model_summary": False, **section}
    trainer, _ = build_trainer(section, run, checkpoint_every=checkpoint_every, extra_callbacks=callbacks)
    trainer.fit(Curved(section.get("accumulate_grad_batches", 1), lr), loader([float(x) for x in range(1, 11)]),
                loader([1.0]), ckpt_path=run / "checkpoints" / "last.ckpt" if resume else None)
    return trainer


def curve(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "learning_curve.jsonl").read_text().splitlines()]


def metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def assert_one_row_per_step_and_validation(run: Path, steps: int) -> None:
    rows = metrics(run)
    assert len(column(rows, "train/loss")) == steps
    assert column(rows, "val/loss") == pytest.approx([row["val_loss"] for row in curve(run)], abs=1e-4)
    assert [row["step"] for row in curve(run)] == list(range(2, steps + 1, 2))
    assert [row["minutes"] for row in curve(run)] == sorted(row["minutes"] for row in curve(run))


def test_a_run_resumed_twice_keeps_every_part_of_its_logs(tmp_path):
    run = tmp_path / "run"
    fit(run, 4)
    first = metrics(run)
    fit(run, 6, resume=True)
    fit(run, 8, resume=True)
    assert metrics(run)[: len(first)] == first
    assert_one_row_per_step_and_validation(run, 8)


class KilledError(Exception):
    pass


class Killed(L.Callback):
    """Ends the run at the start of `step` (1-based), after the rows of the steps before it were written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step + 1 == self.step:
            raise KilledError


def test_a_run_killed_after_its_checkpoint_drops_the_rows_of_the_steps_it_trains_again(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KilledError):
        fit(run, 10, Killed(step=9), checkpoint_every=3)  # checkpoint at step 6; steps 7 and 8 logged, validated at 8
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert max(row["step"] for row in curve(run)) == 8 and len(column(metrics(run), "train/loss")) == 8
    fit(run, 10, resume=True)
    assert_one_row_per_step_and_validation(run, 10)


def test_a_fresh_run_starts_its_logs_empty(tmp_path):
    run = tmp_path / "run"
    fit(run, 4)
    fit(run, 2)
    assert_one_row_per_step_and_validation(run, 2)


def test_the_curve_shows_each_batch_s_own_loss_when_micro_batches_accumulate(tmp_path):
    run = tmp_path / "run"
    fit(run, 2, accumulate_grad_batches=2, val_check_interval=4, lr=0.0)  # validation after both steps' 4 batches
    assert curve(run)[0]["train_loss"] == (1 + 4 + 9 + 16) / 4  # (0 - x)^2 for x = 1..4, not half of it


def test_the_curve_table_shows_a_validation_after_batches_without_items():
    # Every item of those batches skipped: no loss to average (the run goes on, under data.max_skipped_fraction).
    row = {"step": 2, "minutes": 0.1, "train_loss": None, "val_loss": 1.0, "metrics": {}}
    assert curve_table([row]).splitlines()[-1] == "| 2 | 0.1 | - | 1.000 |"


@pytest.mark.slow
def test_osum_fit_s_curve_shows_the_loss_it_logs_when_micro_batches_accumulate(tiny_corpus, tmp_path):
    """Needs `SpeechLLMModule.training_step` to return ``batch_loss`` (its loss before the step's scaling)."""
    run = tmp_path / "run"
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY, "threads=1",
            "trainer.max_steps=2", "trainer.accumulate_grad_batches=4", "trainer.log_every_n_steps=1",
            "data.buckets=[{max_seconds: 30, batch_size: 4}]"]  # 12 batches an epoch: the 8 below fit in one
    assert main(args) == 0
    (row,) = curve(run)  # one validation, after 8 batches (2 steps)
    logged = [float(r["train/loss"]) for r in metrics(run) if r.get("train/loss")]
    assert len(logged) == 2  # each step logs its last micro-batch's loss; the curve averages all 8
    # Micro-batches of one model differ little; the loss scaled for the step would be a quarter of it.
    assert row["train_loss"] == pytest.approx(sum(logged) / len(logged), rel=0.25)

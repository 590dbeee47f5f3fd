"""`LearningCurve`: one line per validation in ``RUN_DIR/learning_curve.jsonl`` (step, minutes, mean
training loss since the last validation, validation loss, every task's metrics), and its picture beside it,
``RUN_DIR/learning_curve.png`` (`osum_core.inference.curve_picture.draw_learning_curve`: the losses and each
task's headline metric against the step), drawn again after every validation by the job's first process.

A fresh run starts the file empty (and removes a picture an earlier run left); a resumed run keeps the lines
up to its checkpoint's step and appends (the lines of later steps are dropped: those steps are trained
again), its picture is drawn again from the lines kept, and its minutes go on from the last line kept. A run
that has not validated yet has no picture."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L

from osum_core.checkpoints.run_dir import curve_rows
from osum_core.inference.curve_picture import draw_learning_curve


class LearningCurve(L.Callback):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.picture = self.path.with_suffix(".png")
        self.started = time.monotonic()
        self.losses: list[float] = []
        self.rows: list[dict[str, Any]] = []
        self.warned = False  # a failed drawing is said once

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.monotonic()
        if not trainer.is_global_zero:
            return
        resumed = trainer.global_step > 0 and self.path.is_file()
        kept = curve_rows(self.path.read_text(encoding="utf-8")) if resumed else []
        self.rows = [row for row in kept if row["step"] <= trainer.global_step]
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8")
        partial.replace(self.path)
        if self.rows:
            self.started -= self.rows[-1]["minutes"] * 60
        self.draw(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # "batch_loss" is the batch's own loss; "loss" is scaled for the optimiser step (divided by the
        # micro-batches it accumulates), so it stands in only for a module that returns no batch_loss.
        if isinstance(outputs, dict) and "batch_loss" in outputs:
            if batch["keys"]:  # an empty batch (every item skipped) has no loss of its own
                self.losses.append(float(outputs["batch_loss"]))
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {
            "step": trainer.global_step,
            "minutes": round((time.monotonic() - self.started) / 60, 2),
            "train_loss": round(sum(self.losses) / len(self.losses), 4) if self.losses else None,
            "val_loss": round(pl_module.eval_loss.get("val", float("nan")), 4),
            "metrics": pl_module.evaluations["val"].metrics if "val" in pl_module.evaluations else {},
        }
        self.losses = []
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        self.draw(pl_module)

    def draw(self, pl_module: L.LightningModule) -> None:
        """The picture of the rows so far; none (an earlier run's removed) before the first validation."""
        tasks = getattr(pl_module, "tasks", None) or {}  # osum's module: name -> Task (its headline metric)
        headline = {name: task.metric for name, task in tasks.items()}
        title = "learning curve: " + "/".join(self.path.parent.parts[-2:])  # the run's folder and its parent's
        try:
            if not draw_learning_curve(self.picture, self.rows, headline, title=title):
                self.picture.unlink(missing_ok=True)
        except Exception as error:  # a picture is never worth a run (a full disk, a plotting library's bug)
            if not self.warned:
                warnings.warn(f"{self.picture}: not drawn ({type(error).__name__}: {error}); training goes on "
                              "and learning_curve.jsonl keeps every row", RuntimeWarning, stacklevel=2)
                self.warned = True


def curve_table(rows: list[dict[str, Any]]) -> str:
    """The learning curve as a Markdown table: loss and each task's headline numbers per validation."""
    metric_names = sorted({(task, name) for row in rows for task, m in row["metrics"].items() for name in m
                           if name in ("wer", "accuracy")})
    header = ["step", "minutes", "train loss", "val loss"] + [f"{task} {name}" for task, name in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        train_loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.3f}"  # no batch with an item
        cells = [str(row["step"]), f"{row['minutes']:.1f}", train_loss, f"{row['val_loss']:.3f}"]
        cells += [f"{row['metrics'].get(task, {}).get(name, float('nan')):.3f}" for task, name in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

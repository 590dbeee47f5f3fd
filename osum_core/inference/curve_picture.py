"""Pictures of learning curves, drawn from the rows `osum_core.train.learning_curve.LearningCurve` writes to
``learning_curve.jsonl`` (step, minutes, train_loss, val_loss, metrics {task: {name: value}}):

- `draw_learning_curve(path, rows, headline)`: one run (``RUN_DIR/learning_curve.png``). The first panel holds
  the training loss (the mean since the previous validation) and the validation loss against the step; then
  one panel per kind of headline metric (``wer``, ``accuracy``, ``timestamp_error_ms``, ...), a line per task.
- `draw_study_curves(path, arms, headline)`: several arms of several seeds each (``osum study``'s
  ``study.png``). The first panel holds the validation loss; then one panel per task, its headline metric. One
  colour and line style per arm; each seed is a thin line, the arm's mean over its seeds (at the steps every
  seed validated) a thick one.

A task's headline metric is the one its plugin names (`Task.metric`, given as `headline`: task -> metric
name); a task missing from `headline` shows its first number (each built-in task lists its headline first).
Both write through `atomic_write` (a temporary sibling, then one rename), so a reader, or a run killed while
drawing, finds the previous picture or the new one and never part of one. With no rows, neither writes
anything and both return False. matplotlib is imported when a picture is drawn: a `Figure` of its own (no
pyplot state) rendered to PNG by Agg.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osum_core.checkpoints.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Row = Mapping[str, Any]
Series = tuple[list[int], list[float]]

# Metrics that live in 0..1 (an error rate may pass 1): their panels start at 0 and show at least up to 1.
UNIT_METRICS = ("wer", "cer", "accuracy", "macro_f1", "reply_exact", "reply_chrf", "matched_words")
ERROR_RATE_TOP = 1.5  # a panel of such metrics shows at most this much; lines above it leave the top edge
ARM_STYLES = ("-", "--", ":", "-.")
PANEL_SIZE = (6.4, 3.0)  # inches, one panel; 100 dpi


def headline_metric(task: str, scores: Mapping[str, Any], headline: Mapping[str, str]) -> str | None:
    """The name of `task`'s headline metric among its `scores`: `headline`'s, else its first number."""
    if task in headline:
        return headline[task] if headline[task] in scores else None
    return next((name for name, value in scores.items() if _is_number(value)), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def series(rows: Iterable[Row], value: Callable[[Row], Any]) -> Series:
    """(steps, values) of the rows where `value(row)` is a number (a validation without one is left out)."""
    steps, values = [], []
    for row in sorted(rows, key=lambda r: r["step"]):
        found = value(row)
        if _is_number(found):
            steps.append(int(row["step"]))
            values.append(float(found))
    return steps, values


def metric_series(rows: Sequence[Row], task: str, name: str) -> Series:
    return series(rows, lambda row: (row.get("metrics") or {}).get(task, {}).get(name))


def task_headlines(rows: Iterable[Row], headline: Mapping[str, str]) -> dict[str, str]:
    """{task: its headline metric's name}, tasks in the order they first appear in `rows`."""
    found: dict[str, str] = {}
    for row in rows:
        for task, scores in (row.get("metrics") or {}).items():
            name = headline_metric(task, scores or {}, headline)
            if name is not None and task not in found:
                found[task] = name
    return found


def mean_series(runs: Sequence[Series]) -> Series:
    """The mean over `runs` at the steps all of them have."""
    if not runs:
        return [], []
    common = sorted(set.intersection(*(set(steps) for steps, _ in runs)))
    lookups = [dict(zip(steps, values, strict=True)) for steps, values in runs]
    return common, [sum(lookup[step] for lookup in lookups) / len(lookups) for step in common]


def _figure(panels: int, title: str | None) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    columns = 1 if panels <= 3 else 2
    lines = math.ceil(panels / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * lines + (0.4 if title else 0)))
    grid = figure.subplots(lines, columns, squeeze=False)
    axes = [axis for line in grid for axis in line]
    for axis in axes[panels:]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure, axes[:panels]


def _style_panel(axis: Axes, title: str, metric: str | None = None) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_title(title, fontsize=10)
    axis.set_xlabel("step")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    if metric in UNIT_METRICS:
        shown = [float(y) for line in axis.get_lines() for y in line.get_ydata() if math.isfinite(float(y))]
        top = max([1.0, *shown])
        if top > ERROR_RATE_TOP:  # an untrained model's WER (4.8 after CTC-only steps) would flatten the rest
            top = ERROR_RATE_TOP
            axis.set_title(f"{title} (axis cut at {ERROR_RATE_TOP:g})", fontsize=10)
        axis.set_ylim(0.0, top * 1.03)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=100))


def draw_learning_curve(path: str | Path, rows: Sequence[Row], headline: Mapping[str, str] | None = None,
                        title: str | None = None) -> bool:
    """One run's curve into `path` (PNG); False, writing nothing, when `rows` is empty."""
    if not rows:
        return False
    headlines = task_headlines(rows, headline or {})
    kinds: dict[str, list[str]] = {}  # metric name -> the tasks whose headline it is
    for task, name in headlines.items():
        kinds.setdefault(name, []).append(task)
    figure, axes = _figure(1 + len(kinds), title)
    loss = axes[0]
    for key, label in (("train_loss", "training (mean since the last validation)"), ("val_loss", "validation")):
        steps, values = series(rows, lambda row, key=key: row.get(key))
        loss.plot(steps, values, marker="o", markersize=3, label=label)
    _style_panel(loss, "loss")
    for axis, (name, tasks) in zip(axes[1:], kinds.items(), strict=True):
        for task in tasks:
            steps, values = metric_series(rows, task, name)
            axis.plot(steps, values, marker="o", markersize=3, label=task)
        _style_panel(axis, f"{name} (validation)", name)
    _save(figure, Path(path))
    return True


def draw_study_curves(path: str | Path, arms: Mapping[str, Sequence[Sequence[Row]]],
                      headline: Mapping[str, str] | None = None, title: str | None = None) -> bool:
    """Each arm's validation curves (`arms`: arm -> one list of rows per seed) into `path` (PNG); False,
    writing nothing, when no run has a row."""
    arms = {arm: [rows for rows in runs if rows] for arm, runs in arms.items()}
    arms = {arm: runs for arm, runs in arms.items() if runs}
    if not arms:
        return False
    headlines = task_headlines((row for runs in arms.values() for rows in runs for row in rows), headline or {})
    panels: list[tuple[str, str | None, Callable[[Sequence[Row]], Series]]] = [
        # Arms whose targets or loss weights differ (X alone against ASR+X) have losses over other tokens:
        # the panel says so; the tasks' metrics below are what compares.
        ("validation loss (not comparable across arms whose targets or weights differ)", None,
         lambda rows: series(rows, lambda row: row.get("val_loss")))]
    for task, name in headlines.items():
        panels.append((f"{task} {name} (validation)", name,
                       lambda rows, task=task, name=name: metric_series(rows, task, name)))
    figure, axes = _figure(len(panels), title)
    for axis, (panel_title, metric, values_of) in zip(axes, panels, strict=True):
        for number, (arm, runs) in enumerate(arms.items()):
            colour, style = f"C{number % 10}", ARM_STYLES[number % len(ARM_STYLES)]
            seeds = [values_of(rows) for rows in runs]
            if len(seeds) > 1:
                for steps, values in seeds:
                    axis.plot(steps, values, color=colour, linestyle=style, linewidth=0.8, alpha=0.45)
            steps, values = mean_series(seeds)
            label = arm if len(seeds) == 1 else f"{arm} (mean of {len(seeds)} seeds)"
            axis.plot(steps, values, color=colour, linestyle=style, linewidth=2.2, marker="o", markersize=3,
                      label=label)
        _style_panel(axis, panel_title, metric)
    _save(figure, Path(path))
    return True

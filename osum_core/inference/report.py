"""Writing an evaluation report (``osum test --out DIR``):

    DIR/metrics.json        each task's metrics and the bad items skipped (the schema of ``osum fit``'s)
    DIR/report.json         the metrics plus what makes them reproducible (checkpoint hash, prompts,
                            normaliser, decoding settings, manifests) and the real-time factor
    DIR/report.md           the same for people: a table per task, WER by task, the worst examples
    DIR/confusion.json      confusion matrices of the classification tasks
    DIR/confusion/<task>[-<field>].png
    DIR/predictions.jsonl   one line per example: key, task, file, text, reference, wer, correct
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from osum_core.inference.scoring import Evaluation

WORST_EXAMPLES = 5


def worst_examples(rows: list[dict[str, Any]], task: str, count: int = WORST_EXAMPLES) -> list[dict[str, Any]]:
    """A task's examples with a wrong answer first, then by transcript WER, worst first."""
    mine = [r for r in rows if r["task"] == task]
    mine.sort(key=lambda r: (r.get("correct", True), -r.get("wer", 0.0)))
    return [r for r in mine[:count] if not r.get("correct", True) or r.get("wer", 0.0) > 0]


def plot_confusion(path: Path, title: str, labels: list[str], counts: list[list[int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    size = max(4.0, 0.5 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    axes.set_title(title)
    peak = max((max(row) for row in counts), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                axes.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown_report(evaluation: Evaluation, settings: Mapping[str, Any], figures: list[str]) -> str:
    lines = ["# osum test report", ""]
    lines += ["| setting | value |", "|---|---|"]
    for key, value in settings.items():
        if key != "prompts":
            lines.append(f"| {key} | `{json.dumps(value, ensure_ascii=False)}` |")
    lines.append(f"| real-time factor | {evaluation.stats.real_time_factor:.4f} "
                 f"({evaluation.stats.decode_seconds:.1f} s for {evaluation.stats.audio_seconds:.1f} s of audio) |")
    lines += ["", "## Metrics", "", "| task | metric | value |", "|---|---|---|"]
    for task, scores in evaluation.metrics.items():
        for name, value in scores.items():
            lines.append(f"| {task} | {name} | {value:.4f} |" if isinstance(value, float) else f"| {task} | {name} | {value} |")
    lines += ["", "## WER by task", "", "| task | WER | CER | examples |", "|---|---|---|---|"]
    for task, scores in evaluation.metrics.items():
        if "wer" in scores:
            lines.append(f"| {task} | {scores['wer']:.4f} | {scores.get('cer', float('nan')):.4f} | {scores.get('count', '')} |")
    lines += ["", "## Prompts", ""]
    lines += [f"- {task}: `{prompt}`" for task, prompt in evaluation.prompts.items()]
    if figures:
        lines += ["", "## Confusion matrices", ""]
        lines += [f"![{figure}]({figure})" for figure in figures]
    lines += ["", "## Worst examples", ""]
    for task in evaluation.metrics:
        worst = worst_examples(evaluation.rows, task)
        if not worst:
            continue
        lines += [f"### {task}", "", "| key | reference | output | WER | right |", "|---|---|---|---|---|"]
        for row in worst:
            cells = [row["key"], row["reference"], row["text"], row.get("wer", ""), row.get("correct", "")]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def metrics_json(evaluation: Evaluation, skipped: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What metrics.json holds: each task's metrics, and under ``"skipped"`` the bad items passed over by
    reason (``{}`` for none, and always for ``osum test``, which stops at the first)."""
    return {**evaluation.metrics, "skipped": dict(sorted((skipped or {}).items()))}


def write_report(
    out: Path, evaluation: Evaluation, settings: Mapping[str, Any], predictions: str = "predictions.jsonl",
    skipped: Mapping[str, int] | None = None,
) -> list[Path]:
    """Write the report files into `out` (``osum test``'s report directory, or a run directory after the
    test, where the predictions file is ``test_predictions.jsonl``); returns their paths. `skipped`: the
    bad items passed over, by reason (`metrics_json`)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, text: str) -> None:
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)

    write("metrics.json", json.dumps(metrics_json(evaluation, skipped), indent=2) + "\n")
    write("confusion.json", json.dumps(evaluation.confusions, indent=1, ensure_ascii=False) + "\n")
    write(predictions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in evaluation.rows))
    figures = []
    for task, matrices in evaluation.confusions.items():
        for name, matrix in matrices.items():
            figure = f"confusion/{task}.png" if name == "label" else f"confusion/{task}-{name}.png"
            (out / "confusion").mkdir(exist_ok=True)
            plot_confusion(out / figure, f"{task} {name}", matrix["labels"], matrix["counts"])
            figures.append(figure)
            written.append(out / figure)
    stats = evaluation.stats
    report = {
        "metrics": evaluation.metrics,
        "settings": dict(settings),
        "prompts": evaluation.prompts,
        "decoding": {
            "utterances": stats.utterances,
            "batches": stats.batches,
            "audio_seconds": round(stats.audio_seconds, 3),
            "decode_seconds": round(stats.decode_seconds, 3),
            "real_time_factor": round(stats.real_time_factor, 5),
        },
        "unselected_lines": evaluation.unselected,
    }
    write("report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write("report.md", markdown_report(evaluation, settings, figures))
    return written

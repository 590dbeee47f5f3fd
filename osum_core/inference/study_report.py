"""The comparison ``osum study`` writes, read from its runs' directories (nothing here launches a run):

    OUT/study.json          the study's settings; every run (arm, seed, status, its test metrics.json, steps,
                            minutes, and the end of its log when it failed); per arm, each task's headline
                            metric (and transcript WER) over its finished seeds: every value, mean, min, max
    OUT/study.md            the same as tables, the failed runs with the end of their logs, the picture
    OUT/study.png           each arm's validation curves (`osum_core.inference.curve_picture.draw_study_curves`)
    OUT/<arm>/seed<k>/      an ordinary ``osum fit`` run directory, plus
        study.log           the output of every attempt at the run, each after a line naming its command
        study_run.json      the attempts: command, whether it resumed, exit status, seconds

A run's status: ``finished`` (its metrics.json is written), ``failed`` (its last attempt exited with an error),
``stopped`` (its last attempt was stopped by a signal, or the study was: the next ``osum study`` resumes it)
or ``not run``. The spread over seeds is the minimum and the maximum (every value is in study.json): with
two or three seeds a standard deviation says less than the worst seed does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osum_core.checkpoints.atomic import atomic_write_text
from osum_core.checkpoints.run_dir import LEARNING_CURVE, METRICS, RUN_CONFIG, curve_rows
from osum_core.inference.curve_picture import draw_study_curves, headline_metric

STUDY_JSON, STUDY_MD, STUDY_PNG = "study.json", "study.md", "study.png"
RUN_LOG, RUN_RECORD = "study.log", "study_run.json"
LOG_TAIL = 20  # lines of a failed run's log in the comparison
SPREAD = "min-max over the arm's finished seeds"


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def read_attempts(run: Path) -> list[dict[str, Any]]:
    record = run / RUN_RECORD
    return json.loads(record.read_text(encoding="utf-8"))["attempts"] if record.is_file() else []


def record_attempt(run: Path, attempt: Mapping[str, Any], replace_last: bool = False) -> None:
    """Add `attempt` (command, resumed, started, and once it ended returncode, seconds, interrupted) to the
    run's study_run.json, or replace its last one (the same attempt, ended)."""
    attempts = read_attempts(run)
    if replace_last:
        attempts.pop()
    attempts.append(dict(attempt))
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / RUN_RECORD, json.dumps({"attempts": attempts}, indent=1) + "\n")


ATTEMPT_HEADER = "=== osum study"  # the log line before each attempt's output (`osum_core.cli.study.launch`)


def log_tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    """The last `lines` lines of the last attempt in a run's log, each as a terminal would show it (a progress
    bar's last state)."""
    if not path.is_file():
        return []
    text = path.read_bytes()[-200_000:].decode("utf-8", errors="replace")
    text = text[text.rfind(ATTEMPT_HEADER):] if ATTEMPT_HEADER in text else text
    shown = [next((part.rstrip() for part in reversed(line.split("\r")) if part.strip()), "") for line in text.split("\n")]
    return [line for line in shown if line][-lines:]


def read_curve(run: Path) -> list[dict[str, Any]]:
    path = run / LEARNING_CURVE
    if not path.is_file():
        return []
    return curve_rows(path.read_text(encoding="utf-8"))


def read_settings(run: Path) -> dict[str, Any]:
    """What the study compares a run's result with: its step budget and its CTC settings (whether and how the
    encoder's CTC loss saw the transcripts: README, "X without ASR"), from the run's config.yaml."""
    path = run / RUN_CONFIG
    if not path.is_file():
        return {}
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    trainer, loss, model = cfg.get("trainer") or {}, cfg.get("loss") or {}, cfg.get("model") or {}
    return {"max_steps": trainer.get("max_steps"), "max_time": trainer.get("max_time"),
            "ctc_head": model.get("ctc_head"), "ctc_weight": loss.get("ctc_weight"),
            "ctc_target": loss.get("ctc_target"), "tasks": cfg.get("tasks") or {}}


@dataclass
class RunResult:
    """One run of the study as its directory shows it."""

    arm: str
    seed: int
    run_dir: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json: task -> metric -> value, "skipped"
    steps: int | None = None  # the step its test was taken at (report.json), else its last validation's
    train_minutes: float | None = None  # training time at its last validation, across resumes (the curve's)
    wall_minutes: float = 0.0  # every attempt's whole process: set-up, corpus synthesis, training, test
    attempts: int = 0
    returncode: int | None = None  # of the last attempt
    settings: dict[str, Any] = field(default_factory=dict)  # `read_settings`: step budget, CTC settings
    log_tail: list[str] = field(default_factory=list)  # when failed or stopped
    curve: list[dict[str, Any]] = field(default_factory=list, repr=False)


def read_run(out: Path, arm: str, seed: int) -> RunResult:
    run = run_dir(out, arm, seed)
    attempts = read_attempts(run)
    last = attempts[-1] if attempts else {}
    curve = read_curve(run)
    result = RunResult(arm, seed, str(run.relative_to(out)), "not run", attempts=len(attempts), curve=curve,
                       returncode=last.get("returncode"),
                       wall_minutes=round(sum(a.get("seconds") or 0.0 for a in attempts) / 60, 2),
                       settings=read_settings(run))
    if curve:
        result.steps, result.train_minutes = curve[-1]["step"], curve[-1]["minutes"]
    if (run / METRICS).is_file():
        result.status = "finished"
        result.metrics = json.loads((run / METRICS).read_text(encoding="utf-8"))
        report = run / "report.json"
        if report.is_file():
            result.steps = json.loads(report.read_text(encoding="utf-8")).get("settings", {}).get("step", result.steps)
        return result
    if attempts:
        stopped = last.get("interrupted") or last.get("returncode") in (0, None)
        result.status = "stopped" if stopped else "failed"
        result.log_tail = log_tail(run / RUN_LOG)
    return result


def columns(results: Sequence[RunResult], tasks: Sequence[str], headline: Mapping[str, str]) -> list[tuple[str, str]]:
    """(task, metric) pairs to compare: each task's headline metric, then its transcript WER when it has one
    besides (an ASR+X task's), in the order of `tasks` (then any other task a run reports)."""
    reported = [task for r in results for task in r.metrics if task != "skipped"]
    pairs: list[tuple[str, str]] = []
    for task in dict.fromkeys([*tasks, *reported]):
        scores = {name: value for r in results for name, value in (r.metrics.get(task) or {}).items()}
        name = headline_metric(task, scores, headline)
        for metric in (name, "wer"):
            if metric is not None and metric in scores and (task, metric) not in pairs:
                pairs.append((task, metric))
    return pairs


def summary(values: Mapping[int, float]) -> dict[str, Any]:
    """Every seed's value (by the seed as a string, as JSON keeps it), their mean, min and max (None for
    none; a value that is not a finite number, such as SRWT's error with no word matched, is left out)."""
    finite = [v for v in values.values() if isinstance(v, int | float) and math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else None
    return {"seeds": {str(seed): value for seed, value in values.items()}, "mean": mean,
            "min": min(finite, default=None), "max": max(finite, default=None)}


def arm_summaries(results: Sequence[RunResult], pairs: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per arm: its runs finished (of all), each (task, metric) over its finished seeds, steps and minutes."""
    arms: dict[str, dict[str, Any]] = {}
    for arm in dict.fromkeys(r.arm for r in results):
        mine = [r for r in results if r.arm == arm]
        done = [r for r in mine if r.status == "finished"]
        metrics: dict[str, dict[str, Any]] = {}
        for task, name in pairs:
            values = {r.seed: r.metrics[task][name] for r in done if name in (r.metrics.get(task) or {})}
            metrics.setdefault(task, {})[name] = summary(values)
        arms[arm] = {
            "finished": len(done),
            "runs": len(mine),
            "metrics": metrics,
            "steps": summary({r.seed: r.steps for r in done if r.steps is not None}),
            "train_minutes": summary({r.seed: r.train_minutes for r in done if r.train_minutes is not None}),
            "wall_minutes": summary({r.seed: r.wall_minutes for r in done}),
        }
    return arms


def study_json(results: Sequence[RunResult], settings: Mapping[str, Any], headline: Mapping[str, str]) -> dict[str, Any]:
    pairs = columns(results, settings.get("tasks", []), headline)
    runs = [{k: v for k, v in asdict(r).items() if k != "curve"} for r in results]
    return {"settings": dict(settings), "headline": dict(headline), "spread": SPREAD,
            "compared": [f"{task} {name}" for task, name in pairs],
            "arms": arm_summaries(results, pairs), "runs": runs}


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def _spread(entry: Mapping[str, Any], digits: int = 3) -> str:
    if entry["mean"] is None:
        return "-"
    if len(entry["seeds"]) < 2:
        return _number(entry["mean"], digits)
    return f"{_number(entry['mean'], digits)} ({_number(entry['min'], digits)}–{_number(entry['max'], digits)})"


def _code(items: Sequence[str]) -> str:
    return "`" + " ".join(items) + "`" if items else "(none)"


def stopped_early(run: Mapping[str, Any]) -> bool:
    budget = (run.get("settings") or {}).get("max_steps")
    return isinstance(budget, int) and budget > 0 and run.get("steps") is not None and run["steps"] < budget


def study_markdown(report: Mapping[str, Any], picture: bool = True) -> str:
    """study.md from what study.json holds; `picture`: whether study.png was drawn (some run validated)."""
    settings, arms, runs = report["settings"], report["arms"], report["runs"]
    pairs = [tuple(name.split(" ", 1)) for name in report["compared"]]
    lines = [f"# osum study: {settings.get('out', '')}", ""]
    lines += [f"- tasks: {','.join(settings.get('tasks', []))}; seeds: {', '.join(map(str, settings.get('seeds', [])))}",
              f"- every run: {_code(settings.get('common', []))}"
              + "".join(f"; --{key} {' '.join(settings[key])}" for key in ("preset", "stage", "strategy", "config")
                        if settings.get(key)),
              *([f"- demo corpus: {settings['demo_rule']}"] if settings.get("demo_rule") else []),
              ""]
    lines += ["| arm | overrides |", "|---|---|"]
    lines += [f"| {arm} | {_code(overrides)} |" for arm, overrides in settings.get("arms", {}).items()]
    header = ["arm", "finished", *(f"{task} {name}" for task, name in pairs), "steps", "train min", "wall min"]
    lines += ["", "## Test metrics: mean over seeds (min–max)", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, entry in arms.items():
        cells = [arm, f"{entry['finished']}/{entry['runs']}"]
        cells += [_spread(entry["metrics"][task][name]) for task, name in pairs]
        cells += [_spread(entry["steps"], 0), _spread(entry["train_minutes"], 1), _spread(entry["wall_minutes"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    header = ["arm", "seed", "status", *(f"{task} {name}" for task, name in pairs), "steps", "train min", "wall min",
              "run"]
    lines += ["", "## Every run", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run["arm"], str(run["seed"]), run["status"]]
        cells += [_number((run["metrics"].get(task) or {}).get(name)) for task, name in pairs]
        cells += [_number(run["steps"], 0), _number(run["train_minutes"], 1), _number(run["wall_minutes"], 1),
                  run["run_dir"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "train min: training time at the run's last validation (its learning curve, across resumes); "
              "wall min: the whole of the study's attempts at it (set-up, corpus synthesis, training, test).", ""]
    short = [run for run in runs if run["status"] == "finished" and stopped_early(run)]
    if short:
        lines += [f"**{len(short)} finished run(s) stopped before trainer.max_steps** (their trainer.max_time): "
                  + ", ".join(f"{run['arm']} seed {run['seed']} at step {run['steps']} of "
                              f"{run['settings']['max_steps']}" for run in short)
                  + ". Arms compare at equal steps only without them (trainer.max_time=null).", ""]
    lines += ["## CTC settings by arm", "",
              "Whether the encoder's CTC loss saw each task's transcripts (README, \"X without ASR\").", "",
              "| arm | model.ctc_head | loss.ctc_weight | loss.ctc_target | tasks section |", "|---|---|---|---|---|"]
    for arm in arms:
        first = next((run["settings"] for run in runs if run["arm"] == arm and run["settings"]), None)
        if first is not None:
            lines.append(f"| {arm} | {first['ctc_head']} | {first['ctc_weight']} | {first['ctc_target']} | "
                         f"{json.dumps(first['tasks'], ensure_ascii=False) if first['tasks'] else '(none)'} |")
    lines.append("")
    unfinished = [run for run in runs if run["status"] in ("failed", "stopped")]
    if unfinished:
        lines += ["## Runs not finished", ""]
        for run in unfinished:
            lines += [f"### {run['arm']} seed {run['seed']}: {run['status']} (exit status {run['returncode']}; "
                      f"{run['run_dir']}/{RUN_LOG})", "", "```", *run["log_tail"], "```", ""]
    if picture:
        lines += ["## Validation curves", "", f"![validation curves]({STUDY_PNG})", "",
                  "One colour and line style per arm; thin lines: each seed; thick: the mean over the arm's seeds.",
                  ""]
    return "\n".join(lines)


def write_study(out: Path, results: Sequence[RunResult], settings: Mapping[str, Any],
                headline: Mapping[str, str]) -> dict[str, Any]:
    """Write study.json, study.md and study.png into `out` (study.png only when a run has validated);
    returns what study.json holds."""
    report = study_json(results, settings, headline)
    arms: dict[str, list[list[dict[str, Any]]]] = {}
    for result in results:
        arms.setdefault(result.arm, []).append(result.curve)
    picture = draw_study_curves(out / STUDY_PNG, arms, headline, title=f"osum study: {Path(out).name}")
    if not picture:
        (out / STUDY_PNG).unlink(missing_ok=True)
    atomic_write_text(out / STUDY_JSON, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out / STUDY_MD, study_markdown(report, picture))
    return report

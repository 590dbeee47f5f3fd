"""The run directory ``osum fit --out DIR`` writes, and loading a model from it.

    DIR/config.yaml             the resolved config of the run as it started
    DIR/config.resume-N.yaml    the resolved config of its N-th resume (`osum test`/`export` read the latest)
    DIR/tasks.json              the names of the tasks trained
    DIR/tokenizer/              the tokenizer (save_pretrained)
    DIR/checkpoints/last.ckpt   Lightning's checkpoint (weights, optimiser, schedule, step): --resume reads it;
                                without the frozen parts read from a source (`osum_core.checkpoints.frozen_parts`);
                                under DeepSpeed a folder (`osum_core.checkpoints.deepspeed_dir`)
    DIR/metrics.csv             Lightning's CSV log; DIR/tensorboard/ when tensorboard is installed
    DIR/learning_curve.jsonl    each validation's metrics by step; learning_curve.png draws them
    DIR/metrics.json            each task's metrics on data.test after training
    DIR/confusion.json          the classification tasks' confusion matrices on the test set
    DIR/test_predictions.jsonl  one line per test example
    DIR/report.md, report.json  the test report (as ``osum test`` writes it)
    DIR/train_keys.jsonl        with data.log_keys: the keys of each training step and rank

Only the job's first process (global rank 0) writes the files the ranks share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osum_core.checkpoints.deepspeed_dir import (
    check_deepspeed_checkpoint,
    deepspeed_lightning_checkpoint,
    is_deepspeed_checkpoint,
    model_states_file,
)
from osum_core.checkpoints.directory import (
    CONFIG_FILE,
    INFO_FILE,
    LoadedCheckpoint,
    file_sha256,
    init_from_checkpoint,
    is_export,
    load_tokenizer,
)
from osum_core.checkpoints.frozen_parts import RECORD_KEY, check_frozen_parts, check_state_keys, frozen_record
from osum_core.config import load_config
from osum_core.model.build import build_for_tokenizer
from osum_core.model.freezing import set_trainable
from osum_core.model.safe_load import safe_load

RUN_CONFIG = "config.yaml"
RESUME_CONFIG = "config.resume-{}.yaml"
TASKS_FILE = "tasks.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LEARNING_CURVE = "learning_curve.jsonl"
LEARNING_CURVE_PICTURE = "learning_curve.png"
METRICS = "metrics.json"
TEST_PREDICTIONS = "test_predictions.jsonl"
TRAIN_KEYS = "train_keys.jsonl"
SKIPPED = "skipped.jsonl"
# What `--overwrite` removes: the files and folders a run writes (never anything else in the folder).
RUN_FILES = (RUN_CONFIG, RESUME_CONFIG.format("*"), TASKS_FILE, TOKENIZER_DIR, CHECKPOINT_DIR, LEARNING_CURVE,
             LEARNING_CURVE_PICTURE, METRICS, TEST_PREDICTIONS, TRAIN_KEYS, SKIPPED, "metrics.csv", "hparams.yaml", "tensorboard", "confusion.json", "confusion",
             "report.md", "report.json")


def curve_rows(text: str) -> list[dict[str, Any]]:
    """The rows of a learning_curve.jsonl; a last line cut short (the run killed while appending it) is left out."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return rows


def existing_run(run_dir: Path) -> list[str]:
    """The run files `run_dir` holds, when a run lives there: one that saved a checkpoint or finished (a
    start that failed before its first checkpoint leaves nothing worth keeping, and does not count)."""
    if not (any((run_dir / CHECKPOINT_DIR).glob("*.ckpt")) or (run_dir / METRICS).exists()):
        return []
    return [path.name for pattern in RUN_FILES for path in sorted(run_dir.glob(pattern))]


def resume_configs(run_dir: Path) -> list[Path]:
    """config.yaml, then each resume's config, in order."""
    numbered = []
    for path in run_dir.glob(RESUME_CONFIG.format("*")):
        number = path.name[len("config.resume-") : -len(".yaml")]
        if number.isdigit():
            numbered.append((int(number), path))
    return [run_dir / RUN_CONFIG, *(path for _, path in sorted(numbered))]


def latest_run_config(run_dir: Path) -> Path:
    """The resolved config the run last trained with: its last resume's, else config.yaml."""
    existing = [path for path in resume_configs(run_dir) if path.is_file()]
    return existing[-1] if existing else run_dir / RUN_CONFIG


def next_resume_config(run_dir: Path) -> Path:
    return run_dir / RESUME_CONFIG.format(len(resume_configs(run_dir)))


def claim_run_dir(run_dir: Path, resume: str | None, overwrite: bool, rank: int = 0) -> None:
    """Make sure starting a run in `run_dir` loses nothing: refuse a folder that holds a run unless the run
    is resumed (`resume`) or `overwrite` is set, which removes the old run's files first, and refuse an
    osum export (``osum export --out``) always. Only the job's first process (`rank` 0) decides and
    removes: a rank that starts later (another node, Lightning's relaunched ranks) must not take the run's
    own first checkpoint for an old run."""
    import shutil

    if is_export(run_dir):
        raise ValueError(f"out={run_dir} holds an osum export ({INFO_FILE}); a run needs a folder of its own "
                         "(choose another --out)")
    found = existing_run(run_dir)
    if not found or resume or rank != 0:
        return
    if not overwrite:
        raise ValueError(f"out={run_dir} holds a run ({', '.join(found)}); give --resume {run_dir} to continue it, "
                         "--overwrite to start again there (its run files are removed), or another --out")
    for name in found:
        path = run_dir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_of_checkpoint(path: Path) -> Path:
    """The run directory a checkpoint (a .ckpt file, or DeepSpeed's .ckpt folder) belongs to."""
    return path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a Lightning checkpoint: a file, or the folder DeepSpeed's engine writes."""
    return path.is_file() or is_deepspeed_checkpoint(path)


def find_run_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory or a checkpoint inside one."""
    if is_checkpoint(path):
        return run_of_checkpoint(path), path
    ckpt = path / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not is_checkpoint(ckpt):
        candidates = sorted(c for c in (path / CHECKPOINT_DIR).glob("*.ckpt") if is_checkpoint(c))
        if not candidates:
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (export) and no {CHECKPOINT_DIR}/*.ckpt (run)")
        ckpt = candidates[-1]
    return path, ckpt


def resume_checkpoint(resume: str | None) -> str | None:
    """The Lightning checkpoint to continue from: a .ckpt file or DeepSpeed's folder, or a run directory's
    checkpoints/last.ckpt; refused here, before Lightning (or DeepSpeed) unpickles it, unless every file of
    it holds tensors and plain data only."""
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        path = path / CHECKPOINT_DIR / LAST_CHECKPOINT
    if is_deepspeed_checkpoint(path):
        check_deepspeed_checkpoint(path)
    elif path.is_file():
        safe_load(path, "checkpoint to resume", mmap=True)
    else:
        raise FileNotFoundError(f"resume={resume}: no {path}")
    return str(path)


def read_run_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Lightning's checkpoint from a .ckpt file or DeepSpeed's folder, tensors and plain data only."""
    return deepspeed_lightning_checkpoint(ckpt) if is_deepspeed_checkpoint(ckpt) else safe_load(ckpt, mmap=True)


def load_run_checkpoint(path: Path, overrides: Sequence[str] = (), device: str = "cpu") -> LoadedCheckpoint:
    """A Lightning checkpoint of an ``osum fit`` run, with the run's config.yaml and tokenizer/. The frozen
    parts the checkpoint left out are rebuilt as the run built them (their source, then the run's --init)
    and must be the weights it was trained with."""
    run, ckpt = find_run_checkpoint(Path(path))
    if not (run / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{run}: no {RUN_CONFIG} next to {ckpt} (is it an osum fit run directory?)")
    cfg = load_config("fit", [latest_run_config(run)], list(overrides))
    tokenizer = load_tokenizer(run / TOKENIZER_DIR)
    model = build_for_tokenizer(cfg["model"], tokenizer)
    checkpoint = read_run_checkpoint(ckpt)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    recorded = checkpoint.get(RECORD_KEY) or {}
    where = str(ckpt)
    if recorded:
        init = cfg["init"]
        if init and (Path(init) / CONFIG_FILE).is_file():
            init_from_checkpoint(model, init)
        elif init:
            where += f" (its run started from init={init}, which is gone)"
        set_trainable(model, cfg["model"]["train"])
        check_frozen_parts(recorded, frozen_record(model, parts=recorded), where)
    check_state_keys(model.state_dict().keys(), state.keys(), recorded, where)
    model.load_state_dict(state, strict=False)
    tasks_file = run / TASKS_FILE
    tasks = json.loads(tasks_file.read_text()) if tasks_file.is_file() else []
    weights = model_states_file(ckpt) if is_deepspeed_checkpoint(ckpt) else ckpt
    return LoadedCheckpoint(model.to(device).eval(), tokenizer, cfg, tasks, str(ckpt), file_sha256([weights]))

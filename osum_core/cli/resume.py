"""``osum fit --resume RUN``: the run continues as it was configured.

The run's last resolved config (config.yaml, or its last resume's config.resume-N.yaml) is the base; the
presets, stages, strategies, ``--config`` files and ``key=value`` overrides given now apply over it, and
nothing else: the data, the tokenizer (never trained again) and every setting of the run stay. Its folder
is the run directory.

A resume continues the epoch the checkpoint was in from its recorded position, which the epoch's plan
turns into batches; so a change to what the plan or the model is made of is refused, naming each key with
its old and new value (`FIXED_KEYS`). What a cluster changes between jobs is not: the number of ranks
(``trainer.devices``, ``trainer.num_nodes``, the strategy) and ``data.num_workers`` (the epoch continues
with exactly the items not yet trained, dealt to the new streams: `osum_core.data.loader`), nor budgets of
time and steps, checkpointing, logging, evaluation, the optimiser's settings or the loss's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from osum_core.checkpoints.run_dir import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    TASKS_FILE,
    is_checkpoint,
    latest_run_config,
    run_of_checkpoint,
)
from osum_core.config import load_config, preset_files
from osum_core.config.load import absolute_data_paths
from osum_core.plugins import load_tasks

# Keys whose change would re-plan the epoch (seed, data, budgets, buckets, accumulation) or rebuild a
# model the checkpoint does not fit; each entry covers the keys below it. `FREE_KEYS` are the exceptions.
FIXED_KEYS = (
    "seed", "tasks", "data.train", "data.max_frames", "data.max_tokens", "data.frames_per_token", "data.sort_window",
    "data.buckets", "data.shuffle_buffer", "data.prompt_language", "data.too_long", "data.n_mels",
    "trainer.accumulate_grad_batches", "model", "loss.ctc_target",
)
# Inside `model`: where a part's weights are read from (a moved folder) and how, not what it is.
FREE_KEYS = ("model.encoder.path", "model.llm.path", "model.llm.tokenizer", "model.llm.attention",
             "model.gradient_checkpointing")


# Settings added to osum after a run may have started, with the value that run was planned and trained under.
EARLIER_DEFAULTS = {"model.packed": "false", "optim.fused": "false"}


class ResumeRefused(ValueError):
    """A resume that would not continue the run it names; the message says why, in one line."""


def resumed_run(resume: str) -> Path:
    """The run directory that ``--resume`` names (the directory, or a checkpoint inside it: a .ckpt file, or
    the folder DeepSpeed writes)."""
    path = Path(resume)
    if is_checkpoint(path):
        return run_of_checkpoint(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such run directory or checkpoint")
    if not is_checkpoint(path / CHECKPOINT_DIR / LAST_CHECKPOINT):
        raise FileNotFoundError(f"--resume {resume}: no {path / CHECKPOINT_DIR / LAST_CHECKPOINT} (a run writes it every "
                                "checkpoint.every_n_steps steps, when stopped by a signal, and at its end)")
    return path


def flat(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf (lists and empty sections are leaves)."""
    items: dict[str, Any] = {}
    for name, value in cfg.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{name}."))
        else:
            items[f"{prefix}{name}"] = value
    return items


def fixed(key: str) -> bool:
    def under(prefixes: Sequence[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    return under(FIXED_KEYS) and not under(FREE_KEYS)


def changed_keys(old: dict[str, Any], new: dict[str, Any], compared: Callable[[str], bool]) -> list[str]:
    """'key old -> new' for each dotted key that `compared` accepts and whose value differs."""
    before, after = flat(old), flat(new)
    return [f"{key} {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if compared(key) and before.get(key) != after.get(key)]


def changed_fixed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key old -> new' for each key of `FIXED_KEYS` whose value differs."""
    return changed_keys(old, new, fixed)


def stored_run_config(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(the resolved config a run stored at `path`, with its data paths absolute and the settings osum added
    since at the values it ran under; those settings as ``key=value``)."""
    stored = flat(OmegaConf.to_container(OmegaConf.load(path)) or {})
    earlier = [f"{key}={value}" for key, value in EARLIER_DEFAULTS.items() if key not in stored]
    return absolute_data_paths(load_config("fit", [path], earlier)), earlier  # (an older osum stored paths as given)


def resume_config(resume: str, tasks: str | None, presets: Sequence[str] = (), stages: Sequence[str] = (),
                  strategies: Sequence[str] = (), files: Sequence[str] = (), overrides: Sequence[str] = (),
                  out: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """(the config the resumed run trains with, its task names), or `ResumeRefused` saying what differs."""
    run = resumed_run(resume)
    base = latest_run_config(run)
    if not base.is_file():
        raise FileNotFoundError(f"--resume {resume}: {run} has no config.yaml (is it an osum fit run directory?)")
    if out is not None and Path(out).resolve() != run.resolve():
        raise ResumeRefused(f"--resume {resume} continues the run in {run}; --out {out} names another folder "
                            "(leave --out out, or start a new run there with --init from an export)")
    old, earlier = stored_run_config(base)
    # Compared as the run stored them: data paths absolute, `--tasks all` as the names it stands for (the
    # whole original command plus --resume, as a requeued job repeats it, changes nothing).
    cfg = absolute_data_paths(load_config("fit", [base, *preset_files(presets, stages, strategies)],
                                          [*earlier, *overrides, f"out={run}", f"resume={resume}", "overwrite=false"],
                                          user_files=files))
    run_tasks = json.loads((run / TASKS_FILE).read_text()) if (run / TASKS_FILE).is_file() else []
    names = [task.name for task in load_tasks().select(tasks.split(","))] if tasks else run_tasks
    problems = changed_fixed_keys(old, cfg)
    if run_tasks and sorted(names) != sorted(run_tasks):
        problems.insert(0, f"--tasks {','.join(run_tasks)} -> {','.join(names)}")
    if problems:
        raise ResumeRefused(f"--resume {resume}: refused, it would change what the run's plan and model are made "
                            f"of: {'; '.join(problems)} (start a new run, e.g. with --init from an export, to "
                            "change them)")
    return cfg, run_tasks or names

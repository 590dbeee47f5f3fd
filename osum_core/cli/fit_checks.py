"""Checks of an ``osum fit`` config as a whole, run after loading it and before anything is built or written:
the paths it names exist, and its settings do not contradict each other.

`load_config` has already checked each key and the kind of each value; what is left are the problems that
only show in the whole config, which would otherwise surface after minutes of model loading (a CTC option
without the CTC head), at the end of training (an unknown ``eval.normalizer``) or never (``loss.ctc_weight``
without a CTC head trains no CTC loss). `check_fit_config` runs every check in `CHECKS` and raises one
`ConfigError` listing every problem found, each naming its config key(s).

A check is a function from the config to a list of messages; the names it compares against come from the
code that consumes the setting (imported when the check runs, so loading a config stays light).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

from osum_core.config.load import ConfigError

Check = Callable[[dict[str, Any]], Iterator[str]]

SPLITS = ("train", "val", "test")

# A Hugging Face Hub id, ``name`` or ``owner/name`` (as huggingface_hub.utils.validate_repo_id accepts): a
# model path that is not one of these can only be a local file or directory, so it must exist. A path that
# could be an id and is not on disk is left to the loader (it may be downloaded, or say why it could not).
HUB_ID = re.compile(r"^(?:[\w.-]*\w/)?\w[\w.-]*$")


def could_be_hub_id(value: str) -> bool:
    return (len(value) <= 96 and bool(HUB_ID.match(value)) and ".." not in value and "--" not in value
            and not value.endswith(".git") and not value.startswith((".", "-")))


def _entries(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


# -- paths ------------------------------------------------------------------------------------------------

def data_paths(cfg: dict[str, Any]) -> Iterator[str]:
    """``data.train/val/test``: with all three null, ``osum fit`` synthesises the demo corpus and points them
    at it (`osum_core.demo.prepare.resolve_demo_data`); otherwise each must be set, and every path in it
    must exist and be a kind of data file osum reads (manifest, shard list, mixture)."""
    from osum_core.data.sources import SourceError, path_kind

    data = cfg["data"]
    given = [split for split in SPLITS if data[split]]
    if not given:
        return
    for split in SPLITS:
        key = f"data.{split}"
        if not data[split]:
            yield (f"{key} is not set, but {', '.join(f'data.{s}' for s in given)} is: the demo corpus stands in "
                   "only when data.train, data.val and data.test are all null; give a manifest for each")
            continue
        for number, entry in enumerate(_entries(data[split])):
            where = key if not isinstance(data[split], list) else f"{key}[{number}]"
            if not isinstance(entry, str) or not entry:
                yield f"{where}: expected a path, got {entry!r}"
            elif not Path(entry).exists():
                # A --config file's relative paths were resolved against its folder already (`data_paths_from`).
                searched = "" if Path(entry).is_absolute() else f" (a relative path on the command line is taken from the current folder, {Path.cwd()})"
                yield f"{where}: {entry} not found{searched}"
            else:
                try:
                    path_kind(Path(entry))
                except SourceError as error:
                    yield f"{where}: {error}"


def checkpoint_paths(cfg: dict[str, Any]) -> Iterator[str]:
    """``init`` (an osum checkpoint directory, as ``osum export`` writes) and ``resume`` (a .ckpt file, or a
    run directory with checkpoints/last.ckpt), when set."""
    from osum_core.checkpoints.directory import CONFIG_FILE
    from osum_core.checkpoints.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT

    if cfg["init"]:
        init = Path(cfg["init"])
        if not init.is_dir():
            yield f"init={cfg['init']}: no such directory (an osum checkpoint directory; `osum export RUN` writes one)"
        elif not (init / CONFIG_FILE).is_file():
            yield f"init={cfg['init']}: not an osum checkpoint directory (no {CONFIG_FILE}; `osum export RUN` writes one)"
    if cfg["resume"]:
        from osum_core.checkpoints.run_dir import is_checkpoint

        resume = Path(cfg["resume"])
        if not is_checkpoint(resume) and not is_checkpoint(resume / CHECKPOINT_DIR / LAST_CHECKPOINT):
            yield (f"resume={cfg['resume']}: neither a checkpoint (a file, or DeepSpeed's folder) nor a run directory "
                   f"with {CHECKPOINT_DIR}/{LAST_CHECKPOINT}")


def model_paths(cfg: dict[str, Any]) -> Iterator[str]:
    """``model.encoder.path``, ``model.llm.path`` and ``model.llm.tokenizer``, when set: a value that cannot
    be a Hugging Face id (``/abs/dir``, ``./dir``, ``~/dir``, ``a/b/c``) or an encoder ``.pt`` file must exist."""
    model = cfg["model"]
    for key, value in (("model.encoder.path", model["encoder"]["path"]), ("model.llm.path", model["llm"]["path"]),
                       ("model.llm.tokenizer", model["llm"]["tokenizer"])):
        if not value or Path(value).expanduser().exists():
            continue
        if key == "model.encoder.path" and value.endswith(".pt"):
            yield f"{key}={value}: no such file (an OpenAI or WeNet Whisper .pt checkpoint)"
        elif not could_be_hub_id(value):
            yield f"{key}={value}: no such directory (and not a Hugging Face model id)"


# -- settings -----------------------------------------------------------------------------------------------

def training_length(cfg: dict[str, Any]) -> Iterator[str]:
    """``trainer.max_steps`` / ``trainer.max_epochs``: 0 trains nothing; ``loss.ce_start_step`` must come
    before ``trainer.max_steps``, or the LLM's loss never joins the CTC loss."""
    trainer, loss = cfg["trainer"], cfg["loss"]
    steps = trainer.get("max_steps", -1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < -1:
        yield f"trainer.max_steps must be a whole number of steps, or -1 for no limit; got {steps!r}"
        steps = -1
    elif steps == 0:
        yield "trainer.max_steps=0 trains nothing (`osum test --ckpt DIR` evaluates a checkpoint)"
    if trainer.get("max_epochs") == 0:
        yield "trainer.max_epochs=0 trains nothing (`osum test --ckpt DIR` evaluates a checkpoint)"
    start = loss["ce_start_step"]
    if start < 0:
        yield f"loss.ce_start_step must be 0 or more, got {start}"


def ctc_settings(cfg: dict[str, Any]) -> Iterator[str]:
    """The CTC options need the CTC head (`SpeechLLM` refuses compression and embeddings without it, and
    without it ``loss.ctc_weight`` has no loss to weigh); before ``loss.ce_start_step`` only the CTC loss
    trains, so it needs one."""
    model, loss = cfg["model"], cfg["loss"]
    head = model["ctc_head"]
    for key in ("ctc_compression", "ctc_embeddings"):
        if model[key] and not head:
            yield f"model.{key} needs the CTC head: set model.ctc_head=true"
    if model["time_embeddings"] and not model["ctc_compression"]:
        yield "model.time_embeddings are for CTC compression: set model.ctc_compression=true (or turn them off)"
    if model["time_embedding_ends"] and not model["time_embeddings"]:
        yield "model.time_embedding_ends go with the time embeddings: set model.time_embeddings=true (or turn them off)"
    if model["ctc_max_run"] < 0:
        yield f"model.ctc_max_run must be 0 (merge whole runs) or more, got {model['ctc_max_run']}"
    if model["summary_steps"] < 0:
        yield f"model.summary_steps must be 0 (none) or more, got {model['summary_steps']}"
    if loss["ctc_weight"] < 0:
        yield f"loss.ctc_weight must be 0 or more, got {loss['ctc_weight']}"
    elif loss["ctc_weight"] > 0 and not head:
        yield f"loss.ctc_weight={loss['ctc_weight']} needs the CTC head (model.ctc_head=true): without it no CTC loss is computed"
    if loss["ce_start_step"] > 0 and not (head and loss["ctc_weight"] > 0):
        yield (f"loss.ce_start_step={loss['ce_start_step']}: before that step only the CTC loss trains, and there is "
               "none (it needs model.ctc_head=true and loss.ctc_weight > 0); set loss.ce_start_step=0")
    if loss["ctc_target"] not in ("transcript", "target"):  # as osum_core.data.dataset.SpeechDataset reads it
        yield f"loss.ctc_target must be transcript or target, got {loss['ctc_target']!r}"


def model_settings(cfg: dict[str, Any]) -> Iterator[str]:
    """Names the model builder looks up (dtypes, trainable parts), the encoder's two front-end strides, the
    mel bins of an encoder built from ``model.encoder.config`` against ``data.n_mels``, and a chat template
    that a demo tokenizer (no ``model.llm.path``, ``model.llm.tokenizer`` or ``init``) would not have."""
    from transformers import WhisperConfig

    from osum_core.model.build import DTYPES
    from osum_core.model.freezing import PARTS

    model = cfg["model"]
    for key, value in (("model.encoder.dtype", model["encoder"]["dtype"]), ("model.llm.dtype", model["llm"]["dtype"])):
        if value not in DTYPES:
            yield f"{key} must be one of {', '.join(DTYPES)}, got {value!r}"
    strides = model["encoder"]["conv_strides"]
    if len(strides) != 2 or any(s < 1 for s in strides):
        yield f"model.encoder.conv_strides: Whisper's two front-end convolutions take two strides of 1 or more, got {strides}"
    if not model["encoder"]["path"]:
        bins = model["encoder"]["config"].get("num_mel_bins", WhisperConfig().num_mel_bins)
        if bins != cfg["data"]["n_mels"]:
            yield (f"data.n_mels={cfg['data']['n_mels']} but the encoder built from model.encoder.config takes "
                   f"num_mel_bins={bins}: set both alike")
    parts = model["train"]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        yield f"model.train: unknown part(s) {', '.join(map(str, unknown))}; choose from {', '.join(PARTS)}"
    elif not parts:
        yield f"model.train is empty: nothing would train (parts: {', '.join(PARTS)})"
    llm = model["llm"]
    if llm["chat_template"] and not (llm["path"] or llm["tokenizer"] or cfg["init"]):
        yield ("model.llm.chat_template=true needs a tokenizer with a chat template (model.llm.path or "
               "model.llm.tokenizer); the demo tokenizer trained without them has none")


def data_settings(cfg: dict[str, Any]) -> Iterator[str]:
    """Dataloader workers, torch threads, ``data.frames_per_token``, the skipped-items ceiling and the
    duration buckets."""
    from osum_core.data.batching import check_buckets

    data = cfg["data"]
    if data["num_workers"] < 0:
        yield f"data.num_workers must be 0 (load in the main process) or more, got {data['num_workers']}"
    if cfg["threads"] is not None and cfg["threads"] < 0:
        yield f"threads must be 1 or more (or null: torch's default), got {cfg['threads']}"
    if not 0 <= data["max_skipped_fraction"] <= 1:
        yield f"data.max_skipped_fraction must be a share from 0 to 1 (1: never stop), got {data['max_skipped_fraction']}"
    if data["min_items_before_skip_check"] < 1:
        yield f"data.min_items_before_skip_check must be 1 or more, got {data['min_items_before_skip_check']}"
    if data["frames_per_token"] is not None and data["frames_per_token"] < 0:
        yield f"data.frames_per_token must be a positive number (or null: the model's strides), got {data['frames_per_token']}"
    try:
        check_buckets(data["buckets"])
    except (ValueError, TypeError, KeyError) as error:
        yield str(error)


def optim_and_eval_settings(cfg: dict[str, Any]) -> Iterator[str]:
    """The learning-rate schedule's and the transcript normaliser's names (the normaliser is otherwise
    looked up only after training), and decoding lengths that cannot both hold."""
    from osum_core.task.normalize import TRANSCRIPT_NORMALIZERS
    from osum_core.train.schedule import lr_multiplier

    try:
        lr_multiplier(cfg["optim"]["schedule"], 1, 2, 0.0)
    except ValueError as error:
        yield str(error)
    if cfg["eval"]["normalizer"] not in TRANSCRIPT_NORMALIZERS:
        yield f"eval.normalizer must be one of {', '.join(TRANSCRIPT_NORMALIZERS)}, got {cfg['eval']['normalizer']!r}"
    generation = cfg["eval"]["generation"]
    if generation["min_new_tokens"] > generation["max_new_tokens"]:
        yield (f"eval.generation.min_new_tokens={generation['min_new_tokens']} is above "
               f"eval.generation.max_new_tokens={generation['max_new_tokens']}")


def lightning_precisions() -> list[Any]:
    """The values lightning.Trainer takes as ``precision`` (its type annotation; [] where it moved)."""
    try:
        from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
    except ImportError:
        return []
    return [value for group in get_args(_PRECISION_INPUT) for value in get_args(group)]


def trainer_settings(cfg: dict[str, Any]) -> Iterator[str]:
    """What Lightning would refuse only once the run directory is written: an unknown precision, a
    fractional ``val_check_interval`` without ``check_val_every_n_epoch``; and osum's strategies' needs
    (fsdp2: numeric devices and nodes; deepspeed_zero2: its ``deepspeed:`` section and precision) and
    ``checkpoint.every_n_steps``."""
    from osum_core.train.strategies import deepspeed_config

    trainer = cfg["trainer"]
    known = lightning_precisions()
    precision = trainer.get("precision", "32-true")
    if known and precision not in known:
        yield f"trainer.precision: unknown value {precision!r}; Lightning takes {', '.join(map(str, known))}"
    interval = trainer.get("val_check_interval")
    if isinstance(interval, float) and trainer.get("check_val_every_n_epoch") is None:
        yield (f"trainer.val_check_interval={interval} is a fraction of an epoch, which needs "
               "trainer.check_val_every_n_epoch (e.g. 1); or give a whole number of steps")
    strategy = trainer.get("strategy", "auto")
    if strategy == "fsdp2":
        for key in ("devices", "num_nodes"):
            value = trainer.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool):
                yield f"trainer.strategy=fsdp2 needs trainer.{key} as a number, got {value!r}"
    elif strategy == "deepspeed_zero2":
        try:
            deepspeed_config(trainer, cfg["deepspeed"])
        except ValueError as error:
            yield str(error)
    if trainer.get("reload_dataloaders_every_n_epochs") != 1:
        yield ("trainer.reload_dataloaders_every_n_epochs must stay 1: epochs differ in length, and Lightning reads a "
               "loader's length only when it builds it (another value trains part of some epochs)")
    if cfg["optim"]["schedule"] == "cosine" and trainer.get("max_steps", -1) == -1 and trainer.get("max_epochs") in (-1, None):
        yield ("optim.schedule=cosine needs an end to decay to: set trainer.max_steps or trainer.max_epochs "
               "(or optim.schedule=constant / inverse_sqrt)")
    every = cfg["checkpoint"]["every_n_steps"]
    if every is not None and every < 0:
        yield f"checkpoint.every_n_steps must be a number of steps (or null: at the end only), got {every}"


CHECKS: tuple[Check, ...] = (
    data_paths, checkpoint_paths, model_paths,
    training_length, ctc_settings, model_settings, data_settings, optim_and_eval_settings, trainer_settings,
)


def fit_config_warnings(cfg: dict[str, Any]) -> list[str]:
    """Settings that are allowed but probably not meant: a short run (a smoke test) may stop before
    ``loss.ce_start_step``, or before its first validation."""
    steps, start = cfg["trainer"].get("max_steps", -1), cfg["loss"]["ce_start_step"]
    found = []
    if isinstance(steps, int) and steps > 0 and isinstance(start, int) and start >= steps:
        found.append(f"loss.ce_start_step={start} is not below trainer.max_steps={steps}: the LLM's loss never joins "
                     "the CTC loss in this run (loss.ce_start_step=0 trains it from the first step)")
    interval = cfg["trainer"].get("val_check_interval")
    # Lightning counts val_check_interval in training batches, max_steps in optimiser steps of
    # accumulate_grad_batches batches each.
    accumulate = cfg["trainer"].get("accumulate_grad_batches", 1)
    batches = steps * accumulate if isinstance(steps, int) and isinstance(accumulate, int) else -1
    if (batches > 0 and isinstance(interval, int) and interval > batches
            and cfg["trainer"].get("limit_val_batches") != 0):
        found.append(f"trainer.val_check_interval={interval} (training batches) is above the {batches} batches of "
                     f"trainer.max_steps={steps} x trainer.accumulate_grad_batches={accumulate}: this run never "
                     f"validates and writes no learning curve (e.g. trainer.val_check_interval={batches})")
    return found


def fit_config_problems(cfg: dict[str, Any]) -> list[str]:
    """Every problem `CHECKS` find in an ``osum fit`` config, as messages naming their keys."""
    return [problem for check in CHECKS for problem in check(cfg)]


def check_fit_config(cfg: dict[str, Any]) -> None:
    """Raise a `ConfigError` listing every problem of an ``osum fit`` config (as `fit_config` returns it):
    paths that do not exist and settings that contradict each other. Call it before building or writing
    anything; it reads the file system but changes nothing, and leaves `cfg` as it is."""
    for warning in fit_config_warnings(cfg):
        warnings.warn(warning, UserWarning, stacklevel=2)
    problems = fit_config_problems(cfg)
    if problems:
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise ConfigError(f"the config has {count}:\n" + "\n".join(f"  - {p}" for p in problems))

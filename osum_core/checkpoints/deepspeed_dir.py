"""The checkpoint Lightning's DeepSpeedStrategy saves: ``last.ckpt`` is a folder that DeepSpeed's engine writes.

    last.ckpt/latest              the tag of the last save, as text (Lightning's is always ``checkpoint``)
    last.ckpt/zero_to_fp32.py     DeepSpeed's conversion script (osum never runs it)
    last.ckpt/<tag>/mp_rank_00_model_states.pt
                                  ``module``: the model's state dict (under ZeRO-1/2 every weight, whole, in
                                  the dtype the engine trains in: bf16 with bf16-mixed), DeepSpeed's records
                                  (``param_shapes``, ``ds_config``, ...) and Lightning's checkpoint beside them
                                  (step, loops, callbacks, schedule, osum's own keys), without its state_dict
                                  and optimiser states
    last.ckpt/<tag>/[bf16_]zero_pp_rank_N_mp_rank_00_optim_states.pt
                                  each data-parallel rank's part of the optimiser: fp32 master weights, AdamW
                                  moments, and DeepSpeed's loss scaler, stage and slice records

ZeRO-3 writes ``zero_pp_rank_N_mp_rank_00_model_states.pt`` instead, each with its rank's shard only.

Resuming is Lightning's own path (``Trainer.fit(ckpt_path=FOLDER)``: DeepSpeed reads the files); osum checks
first that every file is a torch file with tensors and plain data only (`check_deepspeed_checkpoint`).
DeepSpeed's optimiser files also hold a few of its own data classes, which are read as plain records here
(`DEEPSPEED_RECORDS`); any other class or function a file names is refused. ``osum export`` and ``osum test``
read the weights from ``module`` (`deepspeed_lightning_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from osum_core.model.safe_load import safe_load

LATEST_FILE = "latest"
DEFAULT_TAG = "checkpoint"  # Lightning's DeepSpeedStrategy.save_checkpoint(tag="checkpoint")
MODEL_STATES = "mp_rank_00_model_states.pt"
SHARDED_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIMIZER_STATES = "*_optim_states.pt"
LEGACY_PREFIX = "_forward_module."  # module keys of checkpoints from Lightning < 2.1 (a wrapper module)


class DeepSpeedRecord:
    """Stands in for one of DeepSpeed's data classes in its checkpoint files: its attributes, nothing else."""


# The only classes DeepSpeed's ZeRO-1/2 files name beyond torch's safe set (DeepSpeed 0.9-0.19:
# stage_1_and_2.py state_dict, engine._save_zero_checkpoint); each holds numbers, or is an int.
DEEPSPEED_RECORDS = [
    (DeepSpeedRecord, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (DeepSpeedRecord, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (DeepSpeedRecord, "deepspeed.utils.tensor_fragment.fragment_address"),
    (int, "deepspeed.runtime.zero.config.ZeroStageEnum"),
]


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint folder DeepSpeed wrote (Lightning's test: a folder with a tag folder)."""
    path = Path(path)
    return path.is_dir() and ((path / LATEST_FILE).is_file() or (path / DEFAULT_TAG).is_dir())


def deepspeed_tag_dir(path: Path) -> Path:
    """The folder of the last save: the tag `latest` names (a plain name inside `path`), else Lightning's."""
    latest = Path(path) / LATEST_FILE
    tag = latest.read_text(encoding="utf-8").strip() if latest.is_file() else DEFAULT_TAG
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise ValueError(f"{latest}: not a DeepSpeed tag (a folder name inside {path}): {tag[:80]!r}")
    folder = Path(path) / tag
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: a DeepSpeed checkpoint without its folder {tag}/ (named by {latest})")
    return folder


def load_deepspeed_file(path: Path, mmap: bool = False) -> Any:
    """One of DeepSpeed's .pt files through `safe_load`, its own data classes read as `DeepSpeedRecord`s."""
    with torch.serialization.safe_globals(DEEPSPEED_RECORDS):
        return safe_load(path, "DeepSpeed checkpoint file", mmap=mmap)


def model_states_file(path: Path) -> Path:
    folder = deepspeed_tag_dir(path)
    file = folder / MODEL_STATES
    if not file.is_file():
        if (folder / SHARDED_MODEL_STATES).is_file():
            raise ValueError(f"{path}: a DeepSpeed ZeRO-3 checkpoint (each rank's shard of the weights); osum reads "
                             "ZeRO-1/2 checkpoints. Gather it first with Lightning's "
                             "convert_zero_checkpoint_to_fp32_state_dict")
        raise FileNotFoundError(f"{path}: a DeepSpeed checkpoint without {folder.name}/{MODEL_STATES}")
    return file


def check_deepspeed_checkpoint(path: Path) -> None:
    """Refuse a DeepSpeed checkpoint folder that lacks its model or optimiser files, or any of whose .pt files
    holds more than tensors, plain data and DeepSpeed's records (each is mapped, not read whole)."""
    model_file = model_states_file(path)
    optimizer_files = sorted(model_file.parent.glob(OPTIMIZER_STATES))
    if not optimizer_files:
        raise FileNotFoundError(f"{path}: a DeepSpeed checkpoint without optimiser states ({model_file.parent.name}/"
                                f"{OPTIMIZER_STATES}); it cannot be resumed")
    for file in sorted(model_file.parent.glob("*.pt")):
        load_deepspeed_file(file, mmap=True)


def deepspeed_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """Lightning's checkpoint as DeepSpeed keeps it: the client state, with ``module`` as its ``state_dict``
    (keys as the LightningModule names them)."""
    states = load_deepspeed_file(model_states_file(path), mmap=True)  # tensors read as they are copied
    module = states.get("module")
    if not isinstance(module, dict):
        raise ValueError(f"{model_states_file(path)}: no module state dict (not a DeepSpeed model-states file)")
    return {**states, "state_dict": {key.removeprefix(LEGACY_PREFIX): tensor for key, tensor in module.items()}}

"""Any checkpoint path a user gives (``--ckpt``) loaded for inference: an osum checkpoint directory
(`directory.py`), a run directory or a run's .ckpt file (`run_dir.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from osum_core.checkpoints.directory import CONFIG_FILE, LoadedCheckpoint, load_checkpoint_dir
from osum_core.checkpoints.run_dir import load_run_checkpoint


def load_checkpoint(path: str | Path, overrides: Sequence[str] = (), device: str = "cpu") -> LoadedCheckpoint:
    """An osum checkpoint directory, a run directory or a run's .ckpt file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--ckpt {path}: no such file or directory")
    if (path / CONFIG_FILE).is_file():
        return load_checkpoint_dir(path, overrides, device)
    return load_run_checkpoint(path, overrides, device)

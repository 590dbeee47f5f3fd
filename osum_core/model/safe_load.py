"""Loading a torch file without running code from it: every checkpoint osum reads goes through `safe_load`.

``torch.load(weights_only=True)`` unpickles only tensors and plain data; a file that names anything else
(a class, a function: what a malicious pickle needs to run code) is refused. osum's message says the file
is not a safe checkpoint and what it tried to load, and never advises loading it with ``weights_only=False``
(which is how such a file would run its code)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpoint(ValueError):
    """A file that holds Python objects beyond tensors and plain data; the message names the file."""


def safe_load(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """The contents of a torch file, tensors and plain data only, on CPU. `mmap` maps tensors lazily
    (a large file is then checked without being read whole)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(error)) or re.search(r"Unsupported global:?\s+([\w.]+)", str(error))
        named = f" (it names {found.group(1)})" if found else ""
        raise UnsafeCheckpoint(
            f"{path}: not a safe {what}: it holds Python objects beyond tensors and plain data{named}, which "
            "loading would have to run. osum loads tensors only; re-save the weights as a state dict or safetensors"
        ) from None

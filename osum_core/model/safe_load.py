"""Loading a torch file without running code from it: every checkpoint osum reads goes through `safe_load`.

``torch.load(weights_only=True)`` unpickles only tensors and plain data; a file that names anything else
(a class, a function: what a malicious pickle needs to run code) is refused. osum's message says the file
is not a safe checkpoint and what it tried to load, and never advises loading it with ``weights_only=False``
(which is how such a file would run its code). Both of torch.save's formats are read: the zip format (since
torch 1.6) and the legacy one (``_use_new_zipfile_serialization=False``); any other file, a plain pickle
among them, is refused with one line naming it."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

ZIP_FORMAT = b"PK\x03\x04"  # a zip archive's first local header
# The legacy format opens with torch's magic number, pickled with protocol 2 or 3 (the protocol byte differs).
LEGACY_FORMAT = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[2:]


class UnsafeCheckpoint(ValueError):
    """A file that holds Python objects beyond tensors and plain data; the message names the file."""


class NotATorchFile(ValueError):
    """A file that torch.save did not write (a plain pickle, another format) or that is damaged; the message
    names the file."""


def torch_format(path: str | Path) -> str | None:
    """``"zip"`` or ``"legacy"`` for the two formats of torch.save, None for any other file."""
    with open(path, "rb") as file:
        head = file.read(2 + len(LEGACY_FORMAT))
    if head.startswith(ZIP_FORMAT):
        return "zip"
    return "legacy" if head[:1] == b"\x80" and head[2:] == LEGACY_FORMAT else None


def safe_load(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """The contents of a torch file, tensors and plain data only, on CPU. `mmap` maps tensors lazily
    (a large file is then checked without being read whole); only the zip format can be mapped, so a
    legacy-format file is read whole."""
    kind = torch_format(path)
    if kind is None:
        raise NotATorchFile(
            f"{path}: not a {what}: torch.save did not write it (neither its zip nor its legacy format; a plain"
            " pickle, or another kind of file). osum reads state dicts saved with torch.save"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(error)) or re.search(r"Unsupported global:?\s+([\w.]+)", str(error))
        named = f" (it names {found.group(1)})" if found else ""
        raise UnsafeCheckpoint(
            f"{path}: not a safe {what}: it holds Python objects beyond tensors and plain data{named}, which "
            "loading would have to run. osum loads tensors only; re-save the weights as a state dict or safetensors"
        ) from None
    except (RuntimeError, EOFError) as error:  # a damaged file: a truncated zip archive or pickle
        raise NotATorchFile(f"{path}: a damaged {what} ({kind} torch format): {str(error).splitlines()[0]}") from None

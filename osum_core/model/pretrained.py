"""Loading pretrained weights by Hugging Face id or local directory, with a message that helps offline.

Without network access, transformers fails deep inside HTTP code (``ConnectError: Name or service not
known``); `pretrained` turns that into a message naming the model id, the config key that set it, and that
a local directory can be given instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class PretrainedNotFound(FileNotFoundError):
    """A model id or directory that could not be loaded; the message names it and its config key."""


def pretrained(load: Callable[..., T], source: str | Path, key: str, **kwargs: Any) -> T:
    """``load(source, **kwargs)`` (a ``from_pretrained``), re-raising a failure to find or download
    `source` as `PretrainedNotFound` naming `source` and the config `key` that chose it."""
    try:
        return load(str(source), **kwargs)
    except (OSError, ValueError, ConnectionError) as error:
        if Path(str(source)).exists() and not isinstance(error, OSError):
            raise  # a local directory that loads but is wrong: the library's own message says why
        hint = (
            f"'{source}' is not a local directory, so it was taken as a Hugging Face model id and could not be "
            "downloaded (no network, or no such model)"
            if not Path(str(source)).exists()
            else f"'{source}' could not be loaded"
        )
        raise PretrainedNotFound(
            f"config key '{key}': {hint}. Give a local directory holding the model instead "
            f"({key}=/path/to/model, with its config.json and *.safetensors). Cause: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from None

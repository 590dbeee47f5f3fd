"""The ``trainer:`` section: keyword arguments of lightning.Trainer, checked against its signature."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import lightning as L

from osum_core.config.load import ConfigError

# Built by osum itself from other settings (the run directory, its checkpoints and learning curve).
SET_BY_OSUM = ("self", "logger", "callbacks", "default_root_dir")


def trainer_arguments(section: Mapping[str, Any]) -> dict[str, Any]:
    """The section as Trainer keyword arguments; a key the Trainer does not take is a `ConfigError`."""
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - set(SET_BY_OSUM)
    unknown = [k for k in section if k not in accepted]
    if unknown:
        raise ConfigError(f"unknown config key 'trainer.{unknown[0]}': not an argument of lightning.Trainer")
    return dict(section)

"""The ``trainer:`` section: keyword arguments of lightning.Trainer, checked against its signature."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from osum_core.config.load import ConfigError, closest_key

# Built by osum itself from other settings (the run directory, its checkpoints and learning curve).
SET_BY_OSUM = ("self", "logger", "callbacks", "default_root_dir")


def trainer_arguments(section: Mapping[str, Any]) -> dict[str, Any]:
    """The section as Trainer keyword arguments; a key the Trainer does not take is a `ConfigError` naming
    the closest argument it does take (``trainer.max_step`` -> ``trainer.max_steps``)."""
    import lightning as L  # the config package loads without Lightning (`osum tasks` reads configs)

    accepted = [name for name in inspect.signature(L.Trainer.__init__).parameters if name not in SET_BY_OSUM]
    unknown = [k for k in section if k not in accepted]
    if unknown and unknown[0] in SET_BY_OSUM:
        raise ConfigError(f"config key 'trainer.{unknown[0]}': set by osum itself from the run's settings, not by "
                          "the config")
    if unknown:
        key = f"trainer.{unknown[0]}"
        suggestion = closest_key(key, [f"trainer.{name}" for name in accepted])
        hint = f"; did you mean '{suggestion}'?" if suggestion else ""
        raise ConfigError(f"unknown config key '{key}': not an argument of lightning.Trainer{hint}")
    return dict(section)

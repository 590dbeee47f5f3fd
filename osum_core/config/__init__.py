"""The config: defaults from ``configs/``, presets, stages, ``extends:``, ``key=value`` overrides, the
checks of the sections whose keys come from elsewhere (tasks, lightning.Trainer), and the checks of a whole
``osum fit`` config (paths, contradictions) before anything is built."""

from osum_core.config.checks import check_fit_config
from osum_core.config.load import (
    CONFIG_DIR,
    DEFAULT_PRESET,
    ConfigError,
    fit_config,
    load_config,
    preset_files,
    to_yaml,
)
from osum_core.config.tasks import configured_tasks
from osum_core.config.trainer import trainer_arguments

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_PRESET",
    "ConfigError",
    "check_fit_config",
    "configured_tasks",
    "fit_config",
    "load_config",
    "preset_files",
    "to_yaml",
    "trainer_arguments",
]

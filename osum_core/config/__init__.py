"""The config: defaults from ``configs/``, presets, stages, ``extends:``, ``key=value`` overrides, the
checks of the sections whose keys come from elsewhere (tasks, lightning.Trainer). (The checks of a whole
``osum fit`` config, which need every room's names, are `osum_core.cli.fit_checks`.)"""

from osum_core.config.load import (
    CONFIG_DIR,
    DEFAULT_PRESET,
    ConfigError,
    fit_config,
    load_config,
    preset_files,
    to_yaml,
)
from osum_core.config.tasks import configured_tasks, shared_tags
from osum_core.config.trainer import trainer_arguments

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_PRESET",
    "ConfigError",
    "configured_tasks",
    "shared_tags",
    "fit_config",
    "load_config",
    "preset_files",
    "to_yaml",
    "trainer_arguments",
]

"""Loading the config: defaults from the shipped configs, then presets, stages and user files, then
``key=value`` overrides; the result is one plain dict (the only form of config the rest of osum reads).

Every default lives in ``configs/`` (shipped inside the package as `osum_configs`). A key that the defaults
do not have is an error, wherever it comes from, except inside the few sections that are open by nature
(`OPEN_SECTIONS`), which are checked where they are used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from osum_configs import CONFIG_DIR

# Sections whose keys are not known in advance: per-task overrides (task names come from plugins), the
# Hugging Face config kwargs of a randomly initialised encoder or LLM, and lightning.Trainer's arguments.
OPEN_SECTIONS = ("tasks", "model.encoder.config", "model.llm.config", "trainer", "data.demo.options")

# Keys that moved: a file or override that uses the old name still works (run directories written by an
# older osum keep loading), and a warning names the new one.
RENAMED_KEYS = {
    "data.demo.event_positions": "data.demo.options.event_positions",
    "data.demo.content_cues": "data.demo.options.content_cues",
}

# `osum fit` without --preset trains the embedded demo model.
DEFAULT_PRESET = "demo"


class ConfigError(ValueError):
    pass


def read_yaml(path: Path) -> DictConfig:
    """A YAML file read with YAML's safe loader (no Python objects) into an omegaconf node."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:  # yaml errors carry line and column
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return OmegaConf.create(data)


def default_config(name: str = "fit") -> DictConfig:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no default config {path}")
    return read_yaml(path)


def _lock(cfg: DictConfig) -> DictConfig:
    OmegaConf.set_struct(cfg, True)
    for section in OPEN_SECTIONS:
        node = OmegaConf.select(cfg, section)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)
    return cfg


def _rename_old_keys(node: DictConfig, origin: str) -> DictConfig:
    for old, new in RENAMED_KEYS.items():
        value = OmegaConf.select(node, old, default=_MISSING)
        if value is _MISSING:
            continue
        warnings.warn(f"{origin}: config key '{old}' is now '{new}'", FutureWarning, stacklevel=3)
        parent, _, leaf = old.rpartition(".")
        OmegaConf.select(node, parent).pop(leaf)
        OmegaConf.update(node, new, value, force_add=True)
    return node


_MISSING = object()


def _merge(cfg: DictConfig, other: DictConfig, origin: str) -> DictConfig:
    other = _rename_old_keys(other, origin)
    try:
        return _lock(OmegaConf.merge(cfg, other))
    except ConfigKeyError as error:
        raise ConfigError(f"unknown config key '{error.full_key}' in {origin}") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad value in {origin}: {error.msg} (key '{error.full_key}')") from None


def preset_files(presets: Sequence[str], stages: Sequence[str] = (), strategies: Sequence[str] = ()) -> list[Path]:
    """configs/presets/<name>.yaml, configs/stages/<name>.yaml and configs/strategies/<name>.yaml, in that order."""
    files = []
    for folder, names in (("presets", presets), ("stages", stages), ("strategies", strategies)):
        for name in names:
            path = CONFIG_DIR / folder / f"{name}.yaml"
            if not path.is_file():
                known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml")))
                raise ConfigError(f"no {folder[:-1]} {name!r} (configs/{folder}/: {known})")
            files.append(path)
    return files


def read_with_bases(file: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """A config file, preceded by the preset it names as ``extends: NAME`` (configs/presets/NAME.yaml), and
    that preset's own base, and so on: a preset states only how it differs from another."""
    if not file.is_file():
        raise ConfigError(f"config file {file} not found")
    if file.resolve() in seen:
        raise ConfigError(f"{file}: 'extends' goes round in a circle")
    loaded = read_yaml(file)
    base = loaded.pop("extends", None)
    if base is None:
        return [(file, loaded)]
    return [*read_with_bases(CONFIG_DIR / "presets" / f"{base}.yaml", (*seen, file.resolve())), (file, loaded)]


def load_config(name: str = "fit", files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, merged with each file in `files`, then with the dotlist `overrides` (``a.b=1``); returned as
    plain dicts and lists. Interpolations (``${...}``) are not resolved: a config is data."""
    cfg = _lock(default_config(name))
    for file in files:
        for path, loaded in read_with_bases(Path(file)):
            cfg = _merge(cfg, loaded, str(path))
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad override: {error.msg}") from None
    cfg = _merge(cfg, dotlist, "command-line overrides")
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def fit_config(
    presets: Sequence[str] = (), stages: Sequence[str] = (), files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
    strategies: Sequence[str] = (),
) -> dict[str, Any]:
    """The config of an ``osum fit`` run: defaults, the presets (the demo preset when none is named), the
    stages, the strategy presets, the user's files, the overrides."""
    chosen = list(presets) or [DEFAULT_PRESET]
    return load_config("fit", [*preset_files(chosen, stages, strategies), *files], overrides)


def to_yaml(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)

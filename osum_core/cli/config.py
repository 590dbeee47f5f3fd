"""Loading the config: defaults from configs/, then a user file, then ``key=value`` overrides.

Every default lives in configs/. A key that the defaults do not have is an error, wherever it comes
from, except inside the few sections that are open by nature (`OPEN_SECTIONS`), which are checked where
they are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# Sections whose keys are not known in advance: per-task overrides (task names come from plugins), the
# Hugging Face config kwargs of a randomly initialised encoder or LLM, and lightning.Trainer's arguments.
OPEN_SECTIONS = ("tasks", "model.encoder.config", "model.llm.config", "trainer")


class ConfigError(ValueError):
    pass


def default_config(name: str = "fit") -> DictConfig:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no default config {path}")
    return OmegaConf.load(path)


def _lock(cfg: DictConfig) -> DictConfig:
    OmegaConf.set_struct(cfg, True)
    for section in OPEN_SECTIONS:
        node = OmegaConf.select(cfg, section)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)
    return cfg


def _merge(cfg: DictConfig, other: DictConfig, origin: str) -> DictConfig:
    try:
        return _lock(OmegaConf.merge(cfg, other))
    except ConfigKeyError as error:
        raise ConfigError(f"unknown config key '{error.full_key}' in {origin}") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad value in {origin}: {error.msg} (key '{error.full_key}')") from None


def read_with_bases(file: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """A config file, preceded by the preset it names as ``extends: NAME`` (configs/presets/NAME.yaml), and
    that preset's own base, and so on: a preset states only how it differs from another."""
    if not file.is_file():
        raise ConfigError(f"config file {file} not found")
    if file.resolve() in seen:
        raise ConfigError(f"{file}: 'extends' goes round in a circle")
    try:
        loaded = OmegaConf.load(file)
    except Exception as error:  # yaml errors carry line and column
        raise ConfigError(f"{file}: not valid YAML ({error})") from None
    base = loaded.pop("extends", None) if isinstance(loaded, DictConfig) else None
    if base is None:
        return [(file, loaded)]
    return [*read_with_bases(CONFIG_DIR / "presets" / f"{base}.yaml", (*seen, file.resolve())), (file, loaded)]


def load_config(name: str = "fit", files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults, merged with each file in `files`, then with the dotlist `overrides` (``a.b=1``)."""
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
    return _merge(cfg, dotlist, "command-line overrides")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (what the rest of osum reads)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: DictConfig | dict[str, Any]) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)

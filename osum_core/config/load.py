"""Loading the config: defaults from the shipped configs, then presets, stages and user files, then
``key=value`` overrides; the result is one plain dict (the only form of config the rest of osum reads).

Every default lives in ``configs/`` (shipped inside the package as `osum_configs`). A key that the defaults
do not have is an error, wherever it comes from, with the closest known key suggested, except inside the
few sections that are open by nature (`OPEN_SECTIONS`), which are checked where they are used. A value
must have the kind of its default (`VALUE_TYPES` for the keys whose default is null or that take more than
one kind): the YAML defaults carry no types, so omegaconf alone would let ``data.max_frames=abc`` through.
Every problem of one file (or of the overrides) is reported together, each naming its key and origin.

A config is data. Files are read with YAML's safe loader, so a Python tag (``!!python/object/apply:...``)
is refused with an error naming the file and nothing is constructed. Interpolations and resolvers
(``${...}``, ``${oc.env:HOME}``, ``${eval:...}``) are never resolved, here or later: such a value stays
the literal string it is (and so is a type error where a number or a list is expected).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from osum_configs import CONFIG_DIR

# Sections whose keys are not known in advance: per-task overrides (task names come from plugins), the
# Hugging Face config kwargs of a randomly initialised encoder or LLM, and lightning.Trainer's arguments.
OPEN_SECTIONS = ("tasks", "model.encoder.config", "model.llm.config", "trainer", "data.demo.options")

# The kinds of value a key takes where its default does not say it: keys whose default is null (optional;
# null stays allowed) and keys that take more than one kind. Every other key takes the kind of its default
# (an int where a float is expected is fine; a bool is not a number).
VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "threads": (int,),
    "init": (str,),                                 # an osum checkpoint directory
    "resume": (str,),                               # a run directory or a .ckpt
    "data.train": (str, list),                      # a path, or a list of paths (osum_core.data.sources)
    "data.val": (str, list),
    "data.test": (str, list),
    "data.frames_per_token": (int, float),
    "data.buckets": (list,),                        # of {max_seconds, batch_size | max_frames, max_tokens}
    "model.encoder.path": (str,),                   # a Hugging Face id, a directory or a .pt file
    "model.llm.path": (str,),
    "model.llm.tokenizer": (str,),
    "checkpoint.every_n_steps": (int,),
    "serve.model_name": (str,),                     # configs/serve.yaml
    "serve.api_key": (str,),
}

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


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file read with YAML's safe loader: plain dicts, lists and scalars, never Python objects."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as error:  # a tag the safe loader does not build (!!python/...)
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML for a config: {error.problem}{where}; a config holds plain data, and "
            "Python objects in it are refused"
        ) from None
    except yaml.YAMLError as error:  # yaml errors carry line and column
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return data


def default_config(name: str = "fit") -> dict[str, Any]:
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


def _rename_old_keys(data: dict[str, Any], origin: str) -> dict[str, Any]:
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        warnings.warn(f"{origin}: config key '{old}' is now '{new}'", FutureWarning, stacklevel=4)
        value = node.pop(leaf)
        *parents, leaf = new.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
              dict: "a mapping"}


def _kind(value: Any) -> str:
    return "null" if value is None else KIND_NAMES.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    """A value as the config spells it (null, true), with its kind."""
    if value is None:
        return "null"
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return f"{text} ({_kind(value)})"


def _kinds(kinds: tuple[type, ...]) -> str:
    """``a number`` for (int, float); ``a string or a list``; null is left unsaid."""
    names = [KIND_NAMES[k] for k in kinds if k is not type(None) and not (k is int and float in kinds)]
    return " or ".join(names)


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, not to a config
        return bool in kinds
    return isinstance(value, kinds)


def _expected(key: str, default: Any) -> tuple[type, ...] | None:
    """The kinds of value `key` takes (null always allowed where given here), or None for anything."""
    if key in VALUE_TYPES:
        return (*VALUE_TYPES[key], type(None))
    if default is None:
        return None
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    return (type(default),)


def _type_problem(key: str, value: Any, default: Any, origin: str) -> str | None:
    kinds = _expected(key, default)
    if kinds is not None and not _is_kind(value, kinds):
        hint = ""
        if isinstance(value, str) and (int in kinds or float in kinds):
            try:
                float(value)
                hint = " (text to YAML: write numbers without quotes, and 1e-4 as 1.0e-4)"
            except ValueError:
                pass
        return f"config key '{key}' in {origin}: expected {_kinds(kinds)}, got {_shown(value)}{hint}"
    if isinstance(value, list) and isinstance(default, list) and default and key not in VALUE_TYPES:
        element = _expected(key, default[0])
        if element is not None and all(_is_kind(item, element) for item in default):
            for number, item in enumerate(value):
                if not _is_kind(item, element):
                    return f"config key '{key}' in {origin}: item {number} should be {_kinds(element)}, got {_shown(item)}"
    return None


def known_keys(defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of the defaults, sections and leaves (those of open sections too: suggestions)."""
    keys = []
    for name, value in defaults.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if isinstance(value, dict):
            keys += known_keys(value, f"{key}.")
    return keys


def closest_key(key: str, known: Sequence[str]) -> str | None:
    """The known key `key` most likely meant: a close name beside it, else a key elsewhere with (nearly)
    its last name (``max_steps`` -> ``trainer.max_steps``); None when nothing is close."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.7)
    if match:
        return f"{parent}.{match[0]}" if parent else match[0]
    by_leaf: dict[str, str] = {}
    for k in known:
        by_leaf.setdefault(k.rpartition(".")[2], k)
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)
    return by_leaf[match[0]] if match else None


def config_problems(data: dict[str, Any], defaults: dict[str, Any], origin: str, known: Sequence[str] | None = None,
                    prefix: str = "") -> list[str]:
    """Unknown keys and values of the wrong kind in `data` (from `origin`), against the `defaults`."""
    known = known_keys(defaults) if known is None else known
    problems = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in defaults:
            suggestion = closest_key(key, known)
            if suggestion == key:  # `trainer.max_steps: 5` in a file: a dotted name is not a nested key
                hint = "; in a file, nest the keys (one name per level) instead of joining them with dots"
            else:
                hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            problems.append(f"unknown config key '{key}' in {origin}{hint}")
            continue
        default = defaults[name]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                problems.append(f"config key '{key}' in {origin}: expected a mapping (a section), got {_shown(value)}")
            elif key not in OPEN_SECTIONS:
                problems += config_problems(value, default, origin, known, f"{key}.")
            continue
        problem = _type_problem(key, value, default, origin)
        if problem:
            problems.append(problem)
    return problems


def _first_line(error: OmegaConfBaseException) -> str:
    return (error.msg or str(error)).splitlines()[0]


def _merge(cfg: DictConfig, data: dict[str, Any], origin: str, defaults: dict[str, Any]) -> DictConfig:
    """`cfg` with `data` (a file's or the overrides' plain dict) merged in, after checking its keys and kinds."""
    data = _rename_old_keys(data, origin)
    problems = config_problems(data, defaults, origin)
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return _lock(cast(DictConfig, OmegaConf.merge(cfg, OmegaConf.create(data))))  # a dict merged into a dict
    except ConfigKeyError as error:
        raise ConfigError(f"unknown config key '{error.full_key}' in {origin}") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad value in {origin}: {_first_line(error)} (key '{error.full_key}')") from None


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


def read_with_bases(file: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
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


DATA_PATH_KEYS = ("train", "val", "test")


def data_paths_from(file: Path, loaded: dict[str, Any]) -> dict[str, Any]:
    """`loaded` (a user's config file) with its relative ``data.train/val/test`` paths resolved against the
    file's folder, as a mixture's paths are against the mixture's: a config file means the same wherever it
    is used from."""
    data = loaded.get("data")
    if not isinstance(data, dict):
        return loaded

    def anchored(value: Any) -> Any:
        if isinstance(value, list):
            return [anchored(item) for item in value]
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(file.parent.absolute() / value)
        return value

    return {**loaded, "data": {k: anchored(v) if k in DATA_PATH_KEYS else v for k, v in data.items()}}


def absolute_data_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with its ``data.train/val/test`` paths made absolute (relative ones taken from the current
    folder): how a run stores them, so that its config means the same from any folder."""

    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(item) for item in value]
        return str(Path(value).absolute()) if isinstance(value, str) and value else value

    return {**cfg, "data": {k: absolute(v) if k in DATA_PATH_KEYS else v for k, v in cfg["data"].items()}}


def load_config(name: str = "fit", files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                user_files: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Defaults, merged with each file in `files`, then each of `user_files` (a user's ``--config`` files,
    whose relative data paths are resolved against the file: `data_paths_from`), then the dotlist
    `overrides` (``a.b=1``); returned as plain dicts and lists. Interpolations (``${...}``) are not resolved:
    a config is data."""
    defaults = default_config(name)
    cfg = _lock(OmegaConf.create(defaults))
    for file in files:
        for path, loaded in read_with_bases(Path(file)):
            cfg = _merge(cfg, loaded, str(path), defaults)
    for file in user_files:
        for path, loaded in read_with_bases(Path(file)):
            cfg = _merge(cfg, data_paths_from(path, loaded) if path == Path(file) else loaded, str(path), defaults)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    dotlist = OmegaConf.create({})
    for item in overrides:  # one at a time, so that an error names its override
        try:
            dotlist.merge_with_dotlist([item])
        except OmegaConfBaseException as error:
            raise ConfigError(f"bad override {item!r}: {_first_line(error)}") from None
        except yaml.constructor.ConstructorError as error:  # omegaconf reads values with YAML's safe loader
            raise ConfigError(f"bad override {item!r}: {error.problem}; a config holds plain data, and Python "
                              "objects in it are refused") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"bad override {item!r}: not a valid YAML value ({error})") from None
    data = OmegaConf.to_container(dotlist, resolve=False)
    cfg = _merge(cfg, data, "command-line overrides", defaults)  # type: ignore[arg-type]
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def fit_config(
    presets: Sequence[str] = (), stages: Sequence[str] = (), files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
    strategies: Sequence[str] = (),
) -> dict[str, Any]:
    """The config of an ``osum fit`` run: defaults, the presets (the demo preset when none is named), the
    stages, the strategy presets, the user's files (their data paths relative to themselves), the overrides."""
    chosen = list(presets) or [DEFAULT_PRESET]
    return load_config("fit", preset_files(chosen, stages, strategies), overrides, user_files=files)


def to_yaml(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)

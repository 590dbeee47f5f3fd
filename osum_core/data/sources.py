"""What ``data.train`` / ``data.val`` / ``data.test`` name: manifests, shard lists, mixtures.

A path is a jsonl manifest (``.jsonl``), a list of tar shards (``.list``, one shard per line) or a mixture
YAML (``.yaml``/``.yml``) in OSUM's form, ``name: {path: ..., weight: w}``, whose paths are manifests or
shard lists relative to the YAML's folder. A list of paths is read as one: plain paths together form one
source (every item once per epoch), and each mixture entry is a source of its own with its weight.
Mixture weights are sampling probabilities over sources (`osum_core.data.epoch_plan` says how they are
applied); plain paths beside a mixture have no weight and are an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osum_core.data.bad_items import BadItem
from osum_core.data.length_index import read_shard_list, shard_entries
from osum_core.data.manifest import read_manifest

OnError = Callable[[BadItem], None] | None

MANIFEST_SUFFIXES = (".jsonl", ".json")
SHARD_LIST_SUFFIXES = (".list", ".txt")
MIXTURE_SUFFIXES = (".yaml", ".yml")


class SourceError(ValueError):
    """A data path or mixture that cannot be used; the message names the file (and entry)."""


@dataclass
class DataSource:
    """One weighted source: manifests and shards whose items it draws from."""

    name: str
    weight: float
    manifests: list[Path] = field(default_factory=list)
    shards: list[tuple[Path, Path]] = field(default_factory=list)  # (shard list, shard)

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self.manifests] + sorted({str(lst) for lst, _ in self.shards})


def path_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return "manifest"
    if suffix in SHARD_LIST_SUFFIXES:
        return "shards"
    if suffix in MIXTURE_SUFFIXES:
        return "mixture"
    raise SourceError(
        f"{path}: unknown kind of data file; expected a manifest (.jsonl), a shard list (.list) or a mixture (.yaml)"
    )


def add_path(source: DataSource, path: Path, on_error: OnError = None) -> None:
    if not path.exists():
        raise SourceError(f"{path}: not found")
    kind = path_kind(path)
    if kind == "manifest":
        source.manifests.append(path)
    elif kind == "shards":
        source.shards.extend((path, shard) for shard in read_shard_list(path, on_error))
    else:
        raise SourceError(f"{path}: a mixture cannot name another mixture")


def read_mixture(path: Path, on_error: OnError = None) -> list[DataSource]:
    """The sources of an OSUM mixture YAML: ``name: {path: ..., weight: w}`` (weight defaults to 1)."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SourceError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(spec, dict) or not spec:
        raise SourceError(f"{path}: a mixture maps source names to {{path: ..., weight: ...}}")
    sources = []
    for name, entry in spec.items():
        where = f"{path}: source {name!r}"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise SourceError(f"{where}: needs a path (and optionally a weight)")
        unknown = set(entry) - {"path", "weight"}
        if unknown:
            raise SourceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: path, weight")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
            raise SourceError(f"{where}: weight must be a number >= 0, got {weight!r}")
        source = DataSource(str(name), float(weight))
        entry_paths = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        for item in entry_paths:
            item_path = Path(str(item))
            try:
                add_path(source, item_path if item_path.is_absolute() else path.parent / item_path, on_error)
            except ValueError as error:
                raise SourceError(f"{where}: {error}") from None
        sources.append(source)
    return sources


def resolve_sources(spec: Any, key: str, on_error: OnError = None) -> list[DataSource]:
    """The sources a ``data.<split>`` value names (`key` is that config key, for messages). A shard list
    line naming a missing shard raises, or goes to `on_error` and is passed over."""
    if not spec:
        raise SourceError(f"{key} is not set: give a manifest, a shard list, a mixture or a list of these")
    paths: Sequence[Any] = spec if isinstance(spec, list | tuple) else [spec]
    plain = DataSource("data", 1.0)
    weighted: list[DataSource] = []
    for item in paths:
        path = Path(str(item))
        try:
            if path.exists() and path_kind(path) == "mixture":
                weighted.extend(read_mixture(path, on_error))
            else:
                add_path(plain, path, on_error)
        except ValueError as error:
            raise SourceError(f"{key}: {error}") from None
    if weighted and (plain.manifests or plain.shards):
        raise SourceError(f"{key}: {plain.paths} stand beside a mixture without a weight; add them to the mixture")
    names = [s.name for s in weighted]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(f"{key}: source name(s) {', '.join(duplicates)} appear in more than one mixture")
    if weighted and sum(s.weight for s in weighted) <= 0:
        raise SourceError(f"{key}: every source of the mixture has weight 0")
    return weighted or [plain]


def split_records(spec: Any, key: str, on_error: OnError = None) -> Iterator[dict[str, Any]]:
    """Every record (label fields and where the audio is) that a ``data.<split>`` value names, in order,
    read lazily. A line or shard that cannot be read raises, or goes to `on_error` and is passed over."""
    for source in resolve_sources(spec, key, on_error):
        for manifest in source.manifests:
            yield from read_manifest(manifest, on_error)
        for shard_list, shard in source.shards:
            for entry in shard_entries(shard_list, shard, on_error):
                yield entry.record(shard)

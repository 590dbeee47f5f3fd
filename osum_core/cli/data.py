"""``osum data shard``, ``osum data check``, ``osum data batch-sizes`` and ``osum data prepare``.

`add_commands` runs whenever osum builds its parser (``osum --help`` too): each command imports the data
pipeline (and torch with it) when it runs, not here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from osum_core.plugins import TaskRegistry


def cmd_shard(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from osum_core.data.manifest import manifest_lines
    from osum_core.data.sharding import shard_manifests

    total = sum(1 for manifest in args.manifests for _ in manifest_lines(manifest))
    with tqdm(total=total, unit="utt", desc="sharding", disable=args.quiet) as bar:
        list_file = shard_manifests(args.manifests, args.out_dir, args.per_shard, progress=bar.update)
    shards = list_file.read_text(encoding="utf-8").split()
    print(json.dumps({"list": str(list_file), "shards": len(shards), "utterances": total}))
    return 0


def cmd_check(args: argparse.Namespace, registry: TaskRegistry) -> int:
    from tqdm import tqdm

    from osum_core.data.check import check_data

    tasks = registry.select(args.tasks.split(","))
    with tqdm(unit="utt", desc="checking", disable=args.quiet) as bar:
        report = check_data(args.path, tasks, progress=bar.update, known_tasks=list(registry.tasks.values()))
    summary = report.to_json()
    if args.json:
        print(json.dumps({**summary, "error_list": report.errors}, indent=2, ensure_ascii=False))
    else:
        print(f"{args.path}: {summary['items']} items, {summary['hours']} h, "
              f"{summary['unselected']} not taken by any selected task, {summary['errors']} errors")
        for name, count in summary["tasks"].items():
            labels = summary["labels"].get(name)
            detail = ", ".join(f"{label or '-'} {n}" for label, n in labels.items()) if labels else ""
            print(f"  {name}: {count}" + (f"  ({detail})" if detail else ""))
        print("  durations: " + ", ".join(f"{b} {n}" for b, n in summary["durations"].items()))
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def cmd_batch_sizes(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from osum_core.config import fit_config, to_yaml
    from osum_core.train.batch_sizes import find_batch_sizes, parse_bytes

    cfg = fit_config(args.preset, args.stage, args.config, list(args.overrides))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seconds = [float(x) for x in args.buckets.split(",")]
    cap = parse_bytes(args.memory_cap) if args.memory_cap else None
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731  (stdout carries the YAML)
    buckets = find_batch_sizes(cfg, seconds, device, cap, args.prompt_tokens, args.target_tokens, args.safety,
                               args.limit, log)
    text = to_yaml({"data": {"buckets": buckets}})
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        log(f"wrote {args.out}: train with --config {args.out}")
    print(text, end="")
    return 0


def cmd_prepare(args: argparse.Namespace, registry: TaskRegistry) -> int:
    if args.list:
        if not registry.corpora:
            print("no corpus recipe is installed")
        for name, recipe in sorted(registry.corpora.items()):
            print(f"{name:<20} {','.join(recipe.tasks):<12} {registry.corpus_packages[name]:<14} {recipe.description}")
        return 0
    if not (args.name and args.source and args.out_dir):
        print("osum data prepare: give NAME SRC_DIR OUT_DIR (or --list)", file=sys.stderr)
        return 2
    recipe = registry.corpora.get(args.name)
    if recipe is None:
        print(f"osum data prepare: no recipe {args.name!r}; installed: {', '.join(sorted(registry.corpora)) or 'none'}"
              " (osum data prepare --list)", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from osum_core.data.corpus_preparation import PrepareError, prepare_corpus, summary_lines

    bars = []

    def progress(split: str):
        bar = tqdm(unit="file", desc=f"{split}: reading audio", disable=args.quiet)
        bars.append(bar)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        return update

    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    try:
        report = prepare_corpus(recipe, args.source, args.out_dir, registry.tasks, splits, args.workers, args.shard,
                                args.per_shard, log=log, progress=progress)
    except PrepareError as error:
        print(f"osum data prepare {args.name}: {error}", file=sys.stderr)
        return 2
    finally:
        for bar in bars:
            bar.close()
    print("\n".join(summary_lines(report)))
    print(f"report: {args.out_dir}/prepare_report.json")
    return 0


def add_commands(data: argparse._SubParsersAction, with_registry) -> None:
    shard = data.add_parser("shard", help="jsonl manifests -> OSUM/WeNet tar shards, OUT_DIR/shards.list and the index")
    shard.add_argument("manifests", nargs="+", metavar="MANIFEST")
    shard.add_argument("out_dir", metavar="OUT_DIR")
    shard.add_argument("--per-shard", type=int, default=1000, help="utterances per shard (default 1000, as OSUM)")
    shard.add_argument("--quiet", action="store_true", help="no progress bar")
    shard.set_defaults(run=cmd_shard)

    check = data.add_parser("check", help="read every item of a manifest, shard list or mixture; exit 1 on errors")
    check.add_argument("path", help="a manifest (.jsonl), shard list (.list) or mixture (.yaml)")
    check.add_argument("--tasks", default="all", help="tasks that form the targets (default: all installed)")
    check.add_argument("--json", action="store_true", help="print the report as JSON (errors included)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(run=with_registry(cmd_check))

    sizes = data.add_parser("batch-sizes", help="the largest batch per duration bucket that trains on this device")
    sizes.add_argument("--preset", action="append", default=[], help="model preset, as for osum fit")
    sizes.add_argument("--stage", action="append", default=[], help="stage, as for osum fit")
    sizes.add_argument("--config", action="append", default=[], help="YAML merged over the defaults, as for osum fit")
    sizes.add_argument("--buckets", default="5,10,20,30", help="bucket edges in seconds (default 5,10,20,30)")
    sizes.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default auto)")
    sizes.add_argument("--memory-cap", help="e.g. 8GB: the most a step may use (needed on CPU; optional on GPU)")
    sizes.add_argument("--prompt-tokens", type=int, default=40, help="prompt length of the trial batch (default 40)")
    sizes.add_argument("--target-tokens", type=int, default=64, help="target length of the trial batch (default 64)")
    sizes.add_argument("--safety", type=float, default=0.9, help="configured size = largest x this (default 0.9)")
    sizes.add_argument("--limit", type=int, default=4096, help="largest batch size tried (default 4096)")
    sizes.add_argument("--out", help="also write the data.buckets keys to this YAML (use it as --config FILE)")
    sizes.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for osum fit")
    sizes.set_defaults(run=cmd_batch_sizes)

    prepare = data.add_parser("prepare", help="a public corpus as released -> manifests (or shards) and a report")
    prepare.add_argument("name", nargs="?", metavar="NAME", help="the recipe (osum data prepare --list)")
    prepare.add_argument("source", nargs="?", metavar="SRC_DIR", help="the corpus folder as its release unpacks")
    prepare.add_argument("out_dir", nargs="?", metavar="OUT_DIR", help="where <subset>.jsonl and the report go")
    prepare.add_argument("--list", action="store_true", help="list the installed recipes: name, tasks, package")
    prepare.add_argument("--splits", help="comma-separated subsets (default: every one found in SRC_DIR)")
    prepare.add_argument("--workers", type=int, default=4, help="processes reading audio (default 4)")
    prepare.add_argument("--shard", action="store_true", help="write tar shards and <subset>/shards.list instead")
    prepare.add_argument("--per-shard", type=int, default=1000, help="utterances per shard (default 1000)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(run=with_registry(cmd_prepare))

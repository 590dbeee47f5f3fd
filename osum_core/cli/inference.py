"""``osum predict`` and ``osum test``: a checkpoint (export, import or run directory) -> batched decoding."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from osum_core.checkpoints.directory import load_checkpoint
from osum_core.config import ConfigError, configured_tasks
from osum_core.data.manifest import read_manifest
from osum_core.data.sources import split_records
from osum_core.demo.prepare import resolve_demo_data
from osum_core.inference.evaluate import evaluate
from osum_core.inference.predict import DecodeStats, Request, predict
from osum_core.inference.report import write_report
from osum_core.model.speech_llm import GenerationSettings
from osum_core.plugins import TaskRegistry
from osum_core.task.normalize import transcript_normalizer


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def stats_line(stats: DecodeStats, batch_size: int) -> str:
    return (
        f"decoded {stats.utterances} utterances ({stats.audio_seconds:.1f} s of audio) in {stats.decode_seconds:.2f} s "
        f"at batch size {batch_size}: real-time factor {stats.real_time_factor:.4f}"
    )


def prediction_requests(args, cfg: dict[str, Any], registry: TaskRegistry) -> list[Request]:
    task = None
    if args.task:
        task = configured_tasks(registry, [args.task], cfg["tasks"])[args.task]
    elif not args.prompt:
        raise ConfigError("give --task NAME (its prompt and parser), --prompt TEXT (free-form), or both")
    prompt = args.prompt or task.prompt_bank(cfg["data"]["prompt_language"])[0]
    sources = [(Path(f).stem, f) for f in args.files]
    if args.manifest:
        sources += [(str(line["key"]), str(line["wav"])) for line in read_manifest(args.manifest)]
    if not sources:
        raise ConfigError("no input: give audio files or --manifest FILE")
    return [Request(key, file, task, prompt) for key, file in sources]


def eval_settings(args, cfg) -> tuple[str, int]:
    """The device and batch size: the command's flags, else ``eval.device`` and ``eval.batch_size``."""
    device = pick_device(args.device or cfg["eval"]["device"])
    batch_size = args.batch_size or cfg["eval"]["batch_size"]
    return device, batch_size


def cmd_predict(args, registry: TaskRegistry) -> int:
    loaded = load_checkpoint(args.ckpt, [f"eval.generation.{item}" for item in args.set])
    cfg = loaded.config
    device, batch_size = eval_settings(args, cfg)
    loaded.model.to(device)
    requests = prediction_requests(args, cfg, registry)
    settings = GenerationSettings(**cfg["eval"]["generation"])
    stats = DecodeStats()
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        answers = predict(
            loaded.model, loaded.tokenizer, requests, settings, n_mels=cfg["data"]["n_mels"],
            batch_size=batch_size, device=device, stats=stats, progress=args.output is not None,
        )
        for answer in answers:
            output.write(json.dumps(answer.as_json(), ensure_ascii=False) + "\n")
    finally:
        if output is not sys.stdout:
            output.close()
    print(stats_line(stats, batch_size), file=sys.stderr)
    return 0


def cmd_test(args, registry: TaskRegistry) -> int:
    loaded = load_checkpoint(args.ckpt, list(args.overrides))
    cfg = loaded.config
    device, batch_size = eval_settings(args, cfg)
    loaded.model.to(device)
    names = args.tasks.split(",")
    tasks = configured_tasks(registry, names, cfg["tasks"])
    data = cfg["data"]
    if not data["test"]:
        if data["train"] or data["val"]:
            raise ConfigError("give the test manifests as data.test=FILE (or a list: 'data.test=[a.jsonl,b.jsonl]')")
        # A model trained on the demo corpus is tested on the demo corpus's test split.
        resolve_demo_data(cfg, tasks, registry.recipes, lambda m: print(m, file=sys.stderr))
    manifests = data["test"] if isinstance(data["test"], list) else [data["test"]]
    settings = GenerationSettings(**cfg["eval"]["generation"])
    with transcript_normalizer(cfg["eval"]["normalizer"]):
        evaluation = evaluate(
            loaded.model, loaded.tokenizer, tasks, list(split_records(manifests, "data.test")), settings,
            prompt_language=data["prompt_language"], n_mels=data["n_mels"], batch_size=batch_size, device=device,
            progress=True,
        )
    if not evaluation.metrics:
        raise ConfigError(f"no line of {manifests} belongs to the tasks {names}")
    report_settings = {
        "checkpoint": loaded.source,
        "checkpoint_sha256": loaded.checksum,
        "tasks": list(tasks),
        "manifests": manifests,
        "normalizer": cfg["eval"]["normalizer"],
        "prompt_language": data["prompt_language"],
        "generation": cfg["eval"]["generation"],
        "batch_size": batch_size,
        "device": device,
    }
    out = Path(args.out)
    write_report(out, evaluation, report_settings)
    print(stats_line(evaluation.stats, batch_size), file=sys.stderr)
    print(f"test metrics ({out}/metrics.json, report {out}/report.md):")
    print(json.dumps(evaluation.metrics, indent=2))
    return 0

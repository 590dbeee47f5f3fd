"""``osum predict`` and ``osum test``: a checkpoint (export, import or run directory) -> batched decoding."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from osum_core.checkpoints.directory import LoadedCheckpoint
from osum_core.checkpoints.loading import load_checkpoint
from osum_core.config import ConfigError, configured_tasks
from osum_core.data.bad_items import SkipLog
from osum_core.data.dataset import TaskPrompts
from osum_core.data.manifest import read_manifest
from osum_core.demo.prepare import resolve_demo_data
from osum_core.inference.evaluate import evaluate
from osum_core.inference.predict import DecodeStats, Request, decoding_buckets, predict
from osum_core.inference.report import metrics_json, write_report
from osum_core.model.speech_llm import GenerationSettings
from osum_core.plugins import TaskRegistry
from osum_core.task.normalize import transcript_normalizer
from osum_core.train.datamodule import SpeechDataModule


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def stats_line(stats: DecodeStats, batch_size: int) -> str:
    return (
        f"decoded {stats.utterances} utterances ({stats.audio_seconds:.1f} s of audio) in {stats.decode_seconds:.2f} s "
        f"at batch size {batch_size}: real-time factor {stats.real_time_factor:.4f}"
    )


def prediction_requests(args, loaded: LoadedCheckpoint, registry: TaskRegistry) -> list[Request]:
    cfg = loaded.config
    task = None
    if args.task:
        task = configured_tasks(registry.tasks, [args.task], cfg["tasks"])[args.task]
    elif not args.prompt:
        trained = f"; this checkpoint's tasks: {', '.join(loaded.tasks)}" if loaded.tasks else ""
        raise ConfigError(f"give --task NAME (its prompt and parser{trained}), --prompt TEXT (free-form), or both")
    if args.prompt:
        prompt = args.prompt
    else:
        prompts = TaskPrompts.of_tasks({task.name: task}, loaded.tokenizer, cfg["data"]["prompt_language"])
        prompt = prompts.evaluation_text(task.name)
    requests = [Request(Path(f).stem, f, task, prompt) for f in args.files]
    if args.manifest:
        requests += [Request(str(line["key"]), str(line["wav"]), task, prompt, source=line["_source"])
                     for line in read_manifest(args.manifest)]
    if not requests:
        raise ConfigError("no input: give audio files or --manifest FILE")
    return requests


def eval_settings(args, cfg) -> tuple[str, int]:
    """The device and batch size: the command's flags, else ``eval.device`` and ``eval.batch_size``."""
    device = pick_device(args.device or cfg["eval"]["device"])
    batch_size = args.batch_size or cfg["eval"]["batch_size"]
    return device, batch_size


def cmd_predict(args, registry: TaskRegistry) -> int:
    loaded = load_checkpoint(args.ckpt, [f"eval.generation.{item}" for item in args.set])
    cfg = loaded.config
    data = cfg["data"]
    device, batch_size = eval_settings(args, cfg)
    loaded.model.to(device)
    requests = prediction_requests(args, loaded, registry)
    settings = GenerationSettings(**cfg["eval"]["generation"])
    stats = DecodeStats()
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        answers = predict(
            loaded.model, loaded.tokenizer, requests, settings, n_mels=data["n_mels"], batch_size=batch_size,
            device=device, stats=stats, progress=args.output is not None, workers=data["num_workers"],
            too_long=data["too_long"], frames_per_token=data["frames_per_token"],
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
    tasks = configured_tasks(registry.tasks, names, cfg["tasks"])
    data = cfg["data"]
    if not data["test"]:
        if data["train"] or data["val"]:
            raise ConfigError("give the test manifests as data.test=FILE (or a list: 'data.test=[a.jsonl,b.jsonl]')")
        # A model trained on the demo corpus is tested on the demo corpus's test split.
        resolve_demo_data(cfg, tasks, registry.recipes, lambda m: print(m, file=sys.stderr))
    manifests = data["test"] if isinstance(data["test"], list) else [data["test"]]
    settings = GenerationSettings(**cfg["eval"]["generation"])
    # The test loader of `osum fit`, its batches `batch_size` utterances each. Bad items are handed back
    # rather than raised inside a dataloader worker, where the message would be lost in a traceback; the
    # evaluation stops at the first (osum test is strict), so none is ever skipped.
    skips = SkipLog()
    decoding = {**cfg, "data": {**data, "on_error": "skip", "buckets": decoding_buckets(batch_size)}}
    datamodule = SpeechDataModule.for_model(decoding, tasks, loaded.tokenizer, loaded.model,
                                            known_tasks=list(registry.tasks.values()), skips=skips)
    loader = datamodule.loader("test")
    with transcript_normalizer(cfg["eval"]["normalizer"]):
        evaluation = evaluate(
            loaded.model, loaded.tokenizer, tasks, loader, settings,
            prompts={name: datamodule.prompts.evaluation_text(name) for name in tasks}, skips=skips,
            unselected=datamodule.unselected["test"], device=device, progress=True,
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
    write_report(out, evaluation, report_settings, skipped=skips.summary())
    print(stats_line(evaluation.stats, batch_size), file=sys.stderr)
    print(f"test metrics ({out}/metrics.json, report {out}/report.md):")
    print(json.dumps(metrics_json(evaluation, skips.summary()), indent=2))
    return 0

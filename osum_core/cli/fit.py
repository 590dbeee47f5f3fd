"""``osum fit``: config -> tasks, tokenizer, data, model -> Lightning Trainer -> fit, then test.

The run directory ends up holding ``config.yaml`` (the resolved config), ``tokenizer/``, ``checkpoints/``,
``metrics.csv`` (Lightning's CSV log), ``learning_curve.jsonl`` and ``metrics.json`` (each task's metrics
on ``data.test`` after training).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from osum_core.cli.config import ConfigError, to_plain, to_yaml
from osum_core.data.dataset import assign_tasks
from osum_core.data.demo_corpus import CorpusSpec, corpus_is_complete, synthesize_corpus
from osum_core.data.demo_tokenizer import train_demo_tokenizer
from osum_core.data.manifest import read_manifests
from osum_core.model.build import build_speech_llm
from osum_core.model.freezing import set_trainable
from osum_core.model.speech_llm import GenerationSettings
from osum_core.plugins import TaskRegistry
from osum_core.task import Task
from osum_core.train.datamodule import SpeechDataModule
from osum_core.train.learning_curve import LearningCurve, curve_table
from osum_core.train.module import SpeechLLMModule

TASK_WEIGHTS = ("loss_weight", "label_loss_weight", "sampling_weight")


def configured_tasks(registry: TaskRegistry, names: Sequence[str], overrides: dict[str, Any]) -> dict[str, Task]:
    """The selected tasks with the config's weight overrides applied (``tasks.<name>.<weight>``)."""
    tasks = {task.name: task for task in registry.select(names)}
    for name, weights in overrides.items():
        if name not in registry.tasks:
            raise ConfigError(f"config key 'tasks.{name}': no installed task {name!r} ({', '.join(sorted(registry.tasks))})")
        unknown = [k for k in (weights or {}) if k not in TASK_WEIGHTS]
        if unknown:
            raise ConfigError(f"unknown config key 'tasks.{name}.{unknown[0]}'; a task takes {', '.join(TASK_WEIGHTS)}")
        if name in tasks and weights:
            tasks[name] = tasks[name].with_weights(**{k: float(v) for k, v in weights.items()})
    return tasks


def corpus_spec(demo: dict[str, Any], seed: int) -> CorpusSpec:
    """The demo corpus settings of the config (``data.demo``) as a `CorpusSpec`."""
    return CorpusSpec(
        seed=seed,
        train_per_task=demo["train_per_task"],
        eval_per_task=demo["eval_per_task"],
        event_positions=tuple(demo["event_positions"]),
    )


def resolve_demo_data(cfg: dict[str, Any], log) -> None:
    """With no manifests given, point data.train/val/test at the demo corpus, synthesising it if needed."""
    data = cfg["data"]
    if any(data[split] for split in ("train", "val", "test")):
        return
    corpus = Path(data["demo"]["dir"])
    if not corpus_is_complete(corpus):
        log(f"synthesising the demo corpus into {corpus} (once) ...")
        counts = synthesize_corpus(corpus, corpus_spec(data["demo"], cfg["seed"]))
        log(f"demo corpus: {counts}")
    data["train"], data["val"], data["test"] = (str(corpus / f"{s}.jsonl") for s in ("train", "dev", "test"))


def load_tokenizer(cfg: dict[str, Any], tasks: dict[str, Task], run_dir: Path):
    """The LLM's tokenizer, or (tiny demo model) a BPE trained on the training targets and prompts."""
    from transformers import AutoTokenizer

    llm = cfg["model"]["llm"]
    source = llm["tokenizer"] or llm["path"]
    if source:
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        examples, _ = assign_tasks(read_manifests(cfg["data"]["train"]), list(tasks.values()))
        targets = [task.build_target(example) for example, task in examples]
        prompts = [p for task in tasks.values() for p in task.prompt_bank(cfg["data"]["prompt_language"])]
        tags = {t.suffix for t in targets if t.suffix} | {f"<{label}>" for t in tasks.values() for label in t.labels}
        texts = [t.transcript for t in targets] + prompts
        tokenizer = train_demo_tokenizer(texts, tags, llm["demo_tokenizer_vocab"])
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # as OSUM does for Qwen2
    tokenizer.save_pretrained(run_dir / "tokenizer")
    return tokenizer


def trainer_arguments(section: dict[str, Any]) -> dict[str, Any]:
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    unknown = [k for k in section if k not in accepted]
    if unknown:
        raise ConfigError(f"unknown config key 'trainer.{unknown[0]}': not an argument of lightning.Trainer")
    return section


def fit(cfg_node, task_names: Sequence[str], registry: TaskRegistry, log=print) -> dict[str, Any]:
    """Run training and the final test; returns the metrics written to metrics.json."""
    cfg = to_plain(cfg_node)
    tasks = configured_tasks(registry, task_names, cfg["tasks"])
    trainer_kwargs = trainer_arguments(dict(cfg["trainer"]))
    resolve_demo_data(cfg, log)
    run_dir = Path(cfg["out"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "learning_curve.jsonl").unlink(missing_ok=True)

    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    tokenizer = load_tokenizer(cfg, tasks, run_dir)
    model = build_speech_llm(cfg["model"], len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    trainable = set_trainable(model, cfg["model"]["train"])
    total = sum(p.numel() for p in model.parameters())
    log(f"parameters: {total / 1e6:.2f}M, training {sum(trainable.values()) / 1e6:.2f}M {trainable}")

    datamodule = SpeechDataModule(cfg["data"], tasks, tokenizer, cfg["seed"], cfg["loss"]["ctc_target"])
    module = SpeechLLMModule(
        model,
        tasks,
        tokenizer,
        cfg["optim"],
        ctc_weight=cfg["loss"]["ctc_weight"],
        generation=GenerationSettings(**cfg["eval"]["generation"]),
        total_steps=int(trainer_kwargs.get("max_steps") or 0),
        ce_start_step=cfg["loss"]["ce_start_step"],
    )
    loggers: list[Any] = [CSVLogger(run_dir, name="", version="")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        import tensorboard  # noqa: F401  (optional)

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ImportError:
        pass
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    curve = LearningCurve(run_dir / "learning_curve.jsonl")
    trainer = L.Trainer(
        **trainer_kwargs, default_root_dir=run_dir, logger=loggers, callbacks=[checkpoints, curve]
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = module.results.get("test", {})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (run_dir / "test_predictions.jsonl").open("w", encoding="utf-8") as out:
        for row in module.examples.get("test", []):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    log("learning curve (validation on data.val):\n" + curve_table(curve.rows))
    return metrics


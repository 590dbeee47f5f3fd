"""``osum fit``: config -> tasks, tokenizer, data, model -> Lightning Trainer -> fit, then test.

The run directory ends up holding ``config.yaml`` (the resolved config), ``tokenizer/``, ``checkpoints/``,
``tasks.json`` (the task names), ``metrics.csv`` (Lightning's CSV log), ``learning_curve.jsonl`` and ``metrics.json`` (each task's metrics
on ``data.test`` after training), ``confusion.json`` (the classification tasks' confusion matrices on the
test set) and ``test_predictions.jsonl``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Sequence
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
from osum_core.model.build import build_for_tokenizer
from osum_core.model.freezing import set_trainable
from osum_core.model.speech_llm import GenerationSettings
from osum_core.plugins import TaskRegistry
from osum_core.task import Target, Task
from osum_core.task.normalize import transcript_normalizer
from osum_core.train.checkpoint_dir import init_from_checkpoint
from osum_core.train.datamodule import SpeechDataModule
from osum_core.train.learning_curve import LearningCurve, curve_table
from osum_core.train.module import SpeechLLMModule

TASK_WEIGHTS = ("loss_weight", "label_loss_weight", "sampling_weight")


def configured_tasks(registry: TaskRegistry, names: Sequence[str], overrides: dict[str, Any]) -> dict[str, Task]:
    """The selected tasks with the config's overrides applied: ``tasks.<name>.<weight>`` for the weights
    every task has, ``tasks.<name>.<option>`` for a task's own options (`Task.options`)."""
    tasks = {task.name: task for task in registry.select(names)}
    for name, settings in overrides.items():
        if name not in registry.tasks:
            raise ConfigError(f"config key 'tasks.{name}': no installed task {name!r} ({', '.join(sorted(registry.tasks))})")
        settings = dict(settings or {})
        task = registry.tasks[name]
        unknown = [k for k in settings if k not in TASK_WEIGHTS and k not in task.options]
        if unknown:
            takes = ", ".join([*TASK_WEIGHTS, *task.options])
            raise ConfigError(f"unknown config key 'tasks.{name}.{unknown[0]}'; task {name!r} takes {takes}")
        if name in tasks:
            weights = {k: float(v) for k, v in settings.items() if k in TASK_WEIGHTS}
            options = {k: v for k, v in settings.items() if k not in TASK_WEIGHTS}
            try:
                tasks[name] = tasks[name].with_options(**options).with_weights(**weights)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"config key 'tasks.{name}': {error}") from None
    return tasks


def corpus_spec(demo: dict[str, Any], seed: int, tag: str) -> CorpusSpec:
    """The demo corpus settings of the config (``data.demo``) for one task tag, as a `CorpusSpec`."""
    return CorpusSpec(
        tags=(tag,),
        seed=seed,
        train_per_task=demo["train_per_task"],
        eval_per_task=demo["eval_per_task"],
        event_positions=tuple(demo["event_positions"]),
        content_cues=float(demo["content_cues"]),
    )


def synthesize_demo(
    root: Path, tasks: Iterable[Task], recipes: dict, demo: dict[str, Any], seed: int, log, workers: int = 2
) -> dict[str, Path]:
    """The demo corpus of each task in ``root/<task name>``, synthesised where missing or made with other
    settings. Returns the directories by task name."""
    dirs = {}
    for task in tasks:
        if task.tag not in recipes:
            raise ConfigError(
                f"task {task.name!r} ({task.tag}) has no demo-corpus recipe; give manifests as data.train/val/test"
            )
        spec = corpus_spec(demo, seed, task.tag)
        out = dirs[task.name] = root / task.name
        if not corpus_is_complete(out, spec):
            log(f"synthesising the demo corpus for {task.name} into {out} ...")
            counts = synthesize_corpus(out, spec, recipes, workers=workers)
            log(f"demo corpus {task.name}: {counts}")
    return dirs


def resolve_demo_data(cfg: dict[str, Any], tasks: dict[str, Task], recipes: dict, log) -> None:
    """With no manifests given, point data.train/val/test at the demo corpora of the selected tasks."""
    data = cfg["data"]
    if any(data[split] for split in ("train", "val", "test")):
        return
    dirs = synthesize_demo(Path(data["demo"]["dir"]), tasks.values(), recipes, data["demo"], cfg["seed"], log)
    for key, split in (("train", "train"), ("val", "dev"), ("test", "test")):
        data[key] = [str(d / f"{split}.jsonl") for d in dirs.values()]


def target_tags(targets: Iterable[Target]) -> set[str]:
    """Every ``<...>`` marker in the targets (labels, timestamps, ``<开始回答>``): whole tokens of the demo tokenizer."""
    return {tag for target in targets for tag in re.findall(r"<[^<>]+>", target.text)}


def load_tokenizer(cfg: dict[str, Any], tasks: dict[str, Task], run_dir: Path):
    """The LLM's tokenizer (``model.llm.tokenizer``, else the ``init`` checkpoint's, else the LLM's), or (tiny
    demo model) a BPE trained on the training targets and prompts."""
    from transformers import AutoTokenizer

    llm = cfg["model"]["llm"]
    # Starting from a checkpoint, its tokenizer comes along (a demo tokenizer cannot be trained twice alike).
    init_tokenizer = Path(cfg["init"]) / "tokenizer" if cfg["init"] else None
    source = llm["tokenizer"] or (init_tokenizer if init_tokenizer and init_tokenizer.is_dir() else llm["path"])
    if source:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    else:
        examples, _ = assign_tasks(read_manifests(cfg["data"]["train"]), list(tasks.values()))
        targets = [task.build_target(example) for example, task in examples]
        prompts = [p for task in tasks.values() for p in task.prompt_bank(cfg["data"]["prompt_language"])]
        tags = target_tags(targets) | {f"<{label}>" for t in tasks.values() for label in t.labels}
        texts = [re.sub(r"<[^<>]+>", " ", t.text) for t in targets] + prompts
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


def resume_checkpoint(resume: str | None) -> str | None:
    """The Lightning checkpoint to continue from: a .ckpt file, or a run directory's checkpoints/last.ckpt."""
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no {path}")
    return str(path)


def fit(cfg_node, task_names: Sequence[str], registry: TaskRegistry, log=print) -> dict[str, Any]:
    """Run training and the final test; returns the metrics written to metrics.json."""
    cfg = to_plain(cfg_node)
    tasks = configured_tasks(registry, task_names, cfg["tasks"])
    trainer_kwargs = trainer_arguments(dict(cfg["trainer"]))
    resume = resume_checkpoint(cfg["resume"])
    resolve_demo_data(cfg, tasks, registry.recipes, log)
    run_dir = Path(cfg["out"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "learning_curve.jsonl").unlink(missing_ok=True)
    (run_dir / "tasks.json").write_text(json.dumps(list(tasks)) + "\n")

    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    tokenizer = load_tokenizer(cfg, tasks, run_dir)
    model = build_for_tokenizer(cfg["model"], tokenizer)
    if cfg["init"]:
        loaded = init_from_checkpoint(model, cfg["init"])
        log(f"initialised from {cfg['init']}; fresh (not in it): {len(loaded['missing'])} tensors "
            f"{loaded['missing'][:4]}; in it but unused: {loaded['unexpected'][:4]}")
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
    # One last.ckpt per run directory, also when a copied or resumed run writes it again.
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0, enable_version_counter=False
    )
    curve = LearningCurve(run_dir / "learning_curve.jsonl")
    trainer = L.Trainer(
        **trainer_kwargs, default_root_dir=run_dir, logger=loggers, callbacks=[checkpoints, curve]
    )
    with transcript_normalizer(cfg["eval"]["normalizer"]):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = module.results.get("test", {})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    confusions = module.confusions.get("test", {})
    (run_dir / "confusion.json").write_text(json.dumps(confusions, indent=1, ensure_ascii=False) + "\n")
    with (run_dir / "test_predictions.jsonl").open("w", encoding="utf-8") as out:
        for row in module.examples.get("test", []):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    log("learning curve (validation on data.val):\n" + curve_table(curve.rows))
    return metrics


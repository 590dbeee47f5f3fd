"""``osum fit``: config -> tasks, tokenizer, model, data -> lightning.Trainer -> fit, then test.

What the run directory holds is listed in `osum_core.checkpoints.run_dir`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LambdaCallback

from osum_core.checkpoints.atomic import atomic_write_text
from osum_core.checkpoints.directory import init_from_checkpoint, load_tokenizer
from osum_core.checkpoints.run_dir import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    RUN_CONFIG,
    SKIPPED,
    TASKS_FILE,
    TEST_PREDICTIONS,
    TOKENIZER_DIR,
    claim_run_dir,
    next_resume_config,
    resume_checkpoint,
)
from osum_core.cli.console import quiet_console
from osum_core.cli.fit_checks import check_fit_config
from osum_core.config import ConfigError, configured_tasks, shared_tags, to_yaml
from osum_core.config.load import absolute_data_paths
from osum_core.data.bad_items import SkipLog
from osum_core.demo.prepare import resolve_demo_data
from osum_core.inference.report import write_report
from osum_core.model.build import build_for_tokenizer
from osum_core.model.freezing import set_trainable
from osum_core.model.speech_llm import GenerationSettings
from osum_core.plugins import TaskRegistry
from osum_core.task.normalize import transcript_normalizer
from osum_core.train.datamodule import SpeechDataModule
from osum_core.train.learning_curve import curve_table
from osum_core.train.loop_state import LoopStateResume
from osum_core.train.module import SpeechLLMModule
from osum_core.train.preemption import Preempted, PreemptionCheckpoint
from osum_core.train.skipped_items import SkipCeiling, SkippedItems
from osum_core.train.tokenizer import run_tokenizer
from osum_core.train.trainer import build_trainer, stop_started_ranks


def fit(cfg: dict[str, Any], task_names: Sequence[str], registry: TaskRegistry,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test; returns the test metrics (also in the run's metrics.json, with the bad items
    skipped by reason under ``"skipped"``), or only ``"skipped"`` when no test batch ran."""
    quiet_console()
    check_fit_config(cfg)  # every path and contradiction, before anything is built or written
    tasks = configured_tasks(registry.tasks, task_names, cfg["tasks"])
    overlaps = shared_tags(list(tasks.values()))
    if overlaps:
        raise ConfigError("; ".join(overlaps))
    resume = resume_checkpoint(cfg["resume"])
    run_dir = Path(cfg["out"])
    checkpoint = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    # Lightning checks its own arguments here (trainer.max_step=5): still nothing written.
    trainer, curve = build_trainer(cfg["trainer"], run_dir, cfg["checkpoint"]["every_n_steps"], cfg["data"]["log_keys"],
                                   cfg["deepspeed"], extra_callbacks=[PreemptionCheckpoint(checkpoint), LoopStateResume()])
    claim_run_dir(run_dir, resume, cfg["overwrite"], trainer.global_rank)
    if not trainer.is_global_zero:  # one report of the run, the first process's (its errors still go to stderr)
        log = lambda _: None  # noqa: E731
    resolve_demo_data(cfg, tasks, registry.recipes, log)
    cfg = absolute_data_paths(cfg)  # the run's config means the same from any folder (a resume elsewhere)
    if trainer.is_global_zero:  # the files every rank shares: written once
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(run_dir / RUN_CONFIG, to_yaml(cfg))
            atomic_write_text(run_dir / TASKS_FILE, json.dumps(list(tasks)) + "\n")
            (run_dir / SKIPPED).write_text("")  # the run's list of bad items starts empty
    if resume and trainer.is_global_zero:
        # Written once the checkpoint is restored and checked (its frozen parts among them), so that a refused
        # resume leaves the run as it was; config.yaml stays the run's original.
        trainer.callbacks.append(LambdaCallback(
            on_train_start=lambda *_: atomic_write_text(next_resume_config(run_dir), to_yaml(cfg))))
    skips = SkipLog(run_dir / SKIPPED, write=trainer.is_global_zero)
    ceiling = SkipCeiling(cfg["data"]["max_skipped_fraction"], cfg["data"]["min_items_before_skip_check"])
    trainer.callbacks.insert(0, SkippedItems(skips, ceiling))

    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    # A resumed run's tokenizer is the run's own: never trained again (its rows are the embeddings' meaning).
    tokenizer = (load_tokenizer(run_dir / TOKENIZER_DIR) if resume
                 else run_tokenizer(cfg, tasks, run_dir / TOKENIZER_DIR if trainer.is_global_zero else None))
    model = build_for_tokenizer(cfg["model"], tokenizer)
    if cfg["init"]:
        loaded = init_from_checkpoint(model, cfg["init"])
        log(f"initialised from {cfg['init']}; fresh (not in it): {len(loaded['missing'])} tensors "
            f"{loaded['missing'][:4]}; in it but unused: {loaded['unexpected'][:4]}")
    trainable = set_trainable(model, cfg["model"]["train"])
    if trainer.world_size > 1:
        # Every rank has built the same weights from one seed; from here each draws its own dropout masks.
        L.seed_everything(cfg["seed"] + trainer.global_rank, workers=True, verbose=False)
    total = sum(p.numel() for p in model.parameters())
    log(f"parameters: {total / 1e6:.2f}M, training {sum(trainable.values()) / 1e6:.2f}M {trainable}")

    data = cfg["data"]
    datamodule = SpeechDataModule.for_model(cfg, tasks, tokenizer, model, known_tasks=list(registry.tasks.values()),
                                            skips=skips)
    if trainer.is_global_zero:  # the summary reads every shard's index again: once, not on every rank
        unusable = f"; unusable so far: {skips.summary()} (listed in {run_dir / SKIPPED})" if skips.counts else ""
        log(f"training data (data.train): {datamodule.plan('train').summary()}{unusable}")
    prompts = {name: datamodule.prompts.evaluation_text(name) for name in tasks}
    module = SpeechLLMModule(
        model, tasks, tokenizer, cfg["optim"], ctc_weight=cfg["loss"]["ctc_weight"],
        generation=GenerationSettings(**cfg["eval"]["generation"]), total_steps=max(trainer.max_steps, 0),
        ce_start_step=cfg["loss"]["ce_start_step"], eval_prompts=prompts,
    )
    try:
        with transcript_normalizer(cfg["eval"]["normalizer"]):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            trainer.test(module, datamodule=datamodule, verbose=False)
    except Preempted:
        raise  # every rank saved and stopped together
    except BaseException:
        stop_started_ranks(trainer)
        raise
    log("learning curve (validation on data.val):\n" + curve_table(curve.rows))
    if skips.counts:
        log(f"bad items skipped: {skips.summary()} (each listed in {run_dir / SKIPPED})")
    if module.skipped_steps:
        log(f"optimiser steps skipped for a NaN or infinite loss or gradient: {module.skipped_steps}")
    evaluation = module.evaluations.get("test")
    if evaluation is None:  # Lightning ran no test loop (trainer.limit_test_batches=0): nothing to report
        log(f"not tested: no test batch ran (trainer.limit_test_batches={cfg['trainer'].get('limit_test_batches')}),"
            f" so no {run_dir}/metrics.json; osum test --ckpt {run_dir} --tasks {','.join(tasks)} --out DIR "
            f"tests it later")
        return {"skipped": skips.summary()}
    settings = {
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "tasks": list(tasks),
        "manifests": data["test"],
        "normalizer": cfg["eval"]["normalizer"],
        "prompt_language": data["prompt_language"],
        "generation": cfg["eval"]["generation"],
        "step": trainer.global_step,
    }
    if trainer.is_global_zero:
        write_report(run_dir, evaluation, settings, predictions=TEST_PREDICTIONS, skipped=skips.summary())
    metrics = {**evaluation.metrics, "skipped": skips.summary()}
    log(f"test metrics ({run_dir}/metrics.json):\n{json.dumps(metrics, indent=2)}")
    log(f"next: osum export --ckpt {run_dir} --out DIR  (an osum checkpoint directory, for --init and sharing); "
        f"osum test --ckpt {run_dir} --tasks {','.join(tasks)} data.test=FILE; "
        f"osum predict --ckpt {run_dir} --task {next(iter(tasks))} AUDIO...")
    return metrics

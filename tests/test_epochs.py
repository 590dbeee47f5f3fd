"""Each training epoch draws anew: batch order, task mix and prompts change with the epoch (Lightning sets
the epoch on ``batch_sampler.sampler`` only), and the same seed gives the same epochs."""

from pathlib import Path

import lightning as L
import torch

from osum_core.config import fit_config
from osum_core.demo.tokenizer import train_demo_tokenizer
from osum_core.model.build import build_for_tokenizer
from osum_core.model.speech_llm import GenerationSettings
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule
from osum_core.train.module import SpeechLLMModule


class RecordBatches(L.Callback):
    def __init__(self):
        self.epochs: dict[int, list[tuple]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        prompts = [tuple(row[:length]) for row, length in zip(batch["prompt_ids"].tolist(), batch["prompt_lengths"])]
        self.epochs.setdefault(trainer.current_epoch, []).append((tuple(batch["keys"]), tuple(prompts)))


def train_three_epochs(corpus: Path, tmp_path: Path, workers: int) -> dict[int, list[tuple]]:
    cfg = fit_config(overrides=[
        f"data.train={corpus / 'train.jsonl'}", f"data.val={corpus / 'dev.jsonl'}", f"data.num_workers={workers}",
        "model.encoder.config.encoder_layers=1", "model.llm.config.num_hidden_layers=1", "data.max_frames=2000",
        "tasks.asr.sampling_weight=0.5",
    ])
    tasks = {t.name: t for t in load_tasks().select(["asr", "ved"])}
    tasks["asr"] = tasks["asr"].with_weights(sampling_weight=0.5)
    prompts = [p for t in tasks.values() for p in t.prompt_bank("en")]
    tokenizer = train_demo_tokenizer(["zero one two three four five six seven eight nine oh", *prompts],
                                     [f"<{label}>" for label in tasks["ved"].labels], 120)
    L.seed_everything(cfg["seed"])
    model = build_for_tokenizer(cfg["model"], tokenizer)
    data = SpeechDataModule(cfg["data"], tasks, tokenizer, cfg["seed"], cfg["loss"]["ctc_target"], model.sequence_length)
    module = SpeechLLMModule(model, tasks, tokenizer, cfg["optim"], ctc_weight=0.3,
                             generation=GenerationSettings(**cfg["eval"]["generation"]), total_steps=0, ce_start_step=0)
    record = RecordBatches()
    trainer = L.Trainer(max_epochs=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    return record.epochs


def test_every_epoch_draws_new_batches_and_prompts_reproducibly(tiny_corpus, tmp_path):
    torch.set_num_threads(1)
    epochs = train_three_epochs(tiny_corpus, tmp_path / "a", workers=1)
    assert sorted(epochs) == [0, 1, 2]
    orders = [[keys for keys, _ in epochs[e]] for e in range(3)]
    assert orders[0] != orders[1] != orders[2] != orders[0]  # batch order and grouping change
    # asr has sampling weight 0.5: each epoch draws another subset of its examples.
    asr_seen = [{k for keys in order for k in keys if "transcribe-" in k} for order in orders]
    assert asr_seen[0] != asr_seen[1] or asr_seen[1] != asr_seen[2]
    # The same key meets other prompts in other epochs.
    prompt_of = [{k: p for keys, prompts in epochs[e] for k, p in zip(keys, prompts)} for e in range(3)]
    shared = set(prompt_of[0]) & set(prompt_of[1]) & set(prompt_of[2])
    assert any(len({prompt_of[e][k] for e in range(3)}) > 1 for k in shared)
    # Reproducible for the seed, with or without worker processes.
    assert train_three_epochs(tiny_corpus, tmp_path / "b", workers=0) == epochs

"""`SpeechLLMModule`: the LightningModule that meets the backbone (tensors) and the tasks (text).

Batch loss, for a batch with examples i, target tokens t, task weights and CTC (the first term joins at
``loss.ce_start_step``):

    loss = sum_i sum_t w_it * CE_it / sum_i T_i  +  ctc_weight * mean_i CTC_i / U_i

where w_it = loss_weight(task_i), times label_loss_weight(task_i) for the label suffix and the end-of-text
token after it; T_i is the number of target tokens and U_i the transcript length in tokens.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy
import torch

from osum_core.inference.scoring import Evaluation, Scorer
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Task
from osum_core.train.schedule import lr_multiplier


def numpy_state_as_tensors() -> dict[str, Any]:
    """numpy's generator state in types a ``weights_only`` load accepts (no numpy arrays)."""
    kind, keys, *rest = numpy.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(numpy.int64)), "rest": list(rest)}


class SpeechLLMModule(L.LightningModule):
    def __init__(
        self,
        model: SpeechLLM,
        tasks: Mapping[str, Task],
        tokenizer: Any,
        optim: Mapping[str, Any],
        ctc_weight: float,
        generation: GenerationSettings,
        total_steps: int,
        ce_start_step: int,
        eval_prompts: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tasks = dict(tasks)
        self.tokenizer = tokenizer
        self.optim = dict(optim)
        self.ctc_weight = ctc_weight
        self.generation = generation
        self.total_steps = total_steps
        self.ce_start_step = ce_start_step
        self.scorers: dict[str, Scorer] = {}  # stage (val, test) -> the evaluation under way
        self.evaluations: dict[str, Evaluation] = {}  # stage -> the last finished evaluation
        self.eval_prompts = dict(eval_prompts or {})  # task -> the prompt evaluation uses (for reports)
        self.eval_loss: dict[str, float] = {}
        self._loss_sums: dict[str, list[float]] = {}
        self._started = time.monotonic()

    # -- exact resume ---------------------------------------------------------------------------------
    # Lightning's checkpoint holds weights, optimiser, schedule, loop and loader positions, but not the
    # random generators: without them, dropout after a resume would differ from an uninterrupted run.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": numpy_state_as_tensors(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied at the first training batch, not now: restoring the loop and the loader still draws
        # from the generators (the loader's base seed), which an uninterrupted run did before the save.
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        states, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if not states:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        numpy_state = states["numpy"]
        numpy.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(numpy.uint32),
                                *numpy_state["rest"]))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int) -> dict:
        # Only tensors move; task names, keys and targets stay Python objects.
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # -- training ---------------------------------------------------------------------------------------
    def batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(**batch)
        ce = out["token_loss"].sum() / out["token_count"].sum().clamp(min=1)
        parts = {"ce": ce}
        # Before ce_start_step (training only) the encoder learns from CTC alone, so the LLM first meets
        # speech embeddings that already carry the words.
        loss = ce if not self.training or self.global_step >= self.ce_start_step else ce.detach() * 0
        if self.ctc_weight and "ctc_loss" in out:
            parts["ctc"] = out["ctc_loss"].mean()
            loss = loss + self.ctc_weight * parts["ctc"]
        return loss, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.batch_loss(batch)
        size = len(batch["keys"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.optim["lr"],
            betas=tuple(self.optim["betas"]),
            eps=self.optim["eps"],
            weight_decay=self.optim["weight_decay"],
        )
        multiplier = lr_multiplier(
            self.optim["schedule"], self.optim["warmup_steps"], self.total_steps, self.optim["min_lr_ratio"]
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation -------------------------------------------------------------------------------------
    def decode(self, batch: dict[str, Any]) -> list[str]:
        ids = self.model.generate(settings=self.generation, **batch)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def evaluate_batch(self, stage: str, batch: dict[str, Any]) -> None:
        loss, _ = self.batch_loss(batch)
        sums = self._loss_sums.setdefault(stage, [0.0, 0])
        sums[0] += float(loss) * len(batch["keys"])
        sums[1] += len(batch["keys"])
        texts = self.decode(batch)
        scorer = self.scorers.setdefault(stage, Scorer(self.tasks))
        for key, task_name, text, target in zip(batch["keys"], batch["tasks"], texts, batch["targets"], strict=True):
            scorer.add(task_name, key, text, target)

    def finish_evaluation(self, stage: str) -> None:
        evaluation = self.scorers.pop(stage, Scorer(self.tasks)).evaluation(prompts=self.eval_prompts)
        loss_sum, count = self._loss_sums.pop(stage, [0.0, 0])
        if count:
            self.log(f"{stage}/loss", loss_sum / count, sync_dist=True)
            self.eval_loss[stage] = loss_sum / count
        for task_name, scores in evaluation.metrics.items():
            for metric_name, value in scores.items():
                self.log(f"{stage}/{task_name}/{metric_name}", float(value), sync_dist=True)
        self.evaluations[stage] = evaluation

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate_batch("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.finish_evaluation("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate_batch("test", batch)

    def on_test_epoch_end(self) -> None:
        self.finish_evaluation("test")

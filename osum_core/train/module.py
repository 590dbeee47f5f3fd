"""`SpeechLLMModule`: the LightningModule that meets the backbone (tensors) and the tasks (text).

Batch loss, for a batch with examples i, target tokens t, task weights and CTC (the first term joins at
``loss.ce_start_step``):

    loss = sum_i sum_t w_it * CE_it / sum_i T_i  +  ctc_weight * mean_i c_i * CTC_i / U_i

where w_it = loss_weight(task_i), times label_loss_weight(task_i) for the label suffix and the end-of-text
token after it; c_i = ctc_loss_weight(task_i); T_i is the number of target tokens and U_i the CTC target's
length in tokens.

A step whose loss or gradient is NaN or infinite is skipped: the optimiser does not step, so weights and
its state stay as they were, and ``train/skipped_steps`` counts it; ``optim.max_nonfinite_steps`` such
steps in a row stop the run (`TrainingDiverged`). A checkpoint is never written with non-finite weights.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning as L
import numpy
import torch

from osum_core.checkpoints.frozen_parts import (
    RECORD_KEY,
    check_frozen_parts,
    check_state_keys,
    frozen_keys,
    frozen_record,
    part_sources,
)
from osum_core.data.batching import FRAMES_PER_SECOND
from osum_core.inference.predict import DecodeStats, generated_texts
from osum_core.inference.scoring import Evaluation, Scorer
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Task
from osum_core.train.schedule import lr_multiplier


class TrainingDiverged(ValueError):
    """Too many optimiser steps in a row had a NaN or infinite loss or gradient (or the weights became
    non-finite); the message says which steps and what to try."""


def numpy_state_as_tensors() -> dict[str, Any]:
    """numpy's generator state in types a ``weights_only`` load accepts (no numpy arrays)."""
    kind, keys, *rest = numpy.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(numpy.int64)), "rest": list(rest)}


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators (torch, Python, numpy and `device`'s CUDA generator)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state_as_tensors(),
            **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}


def restore_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    numpy.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(numpy.uint32), *numpy_state["rest"]))
    cuda = state.get("cuda")
    if cuda is not None and device.type == "cuda":
        if isinstance(cuda, list):  # a checkpoint from before per-rank states: every device's generator
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda, device)


def rank_rng_state(saved: list[Mapping[str, Any]] | Mapping[str, Any] | None, rank: int) -> Mapping[str, Any] | None:
    """Rank `rank`'s generators in a checkpoint's ``rng_states``: a list in rank order, or (a checkpoint from
    before per-rank states) rank 0's alone; None where the checkpoint has none for it."""
    ranks = [saved] if isinstance(saved, Mapping) else list(saved or [])
    return ranks[rank] if rank < len(ranks) else None


def seed_rank(seed: int, rank: int) -> None:
    """Seeds this process's generators from `seed` and `rank` alone (numpy's SeedSequence mixes the two)."""
    mixed = int(numpy.random.SeedSequence([seed, rank]).generate_state(1)[0])
    torch.manual_seed(mixed)  # CUDA's generators too
    random.seed(mixed)
    numpy.random.seed(mixed)


def check_optimiser_size(checkpoint: dict[str, Any], trained: int, where: str) -> None:
    """Refuse a checkpoint whose optimiser state is for another number of trained tensors, naming why (torch
    would say only that a parameter group's size does not match). Lightning restores the optimiser after
    this hook; DeepSpeed's checkpoints keep theirs elsewhere and are not checked here."""
    states = checkpoint.get("optimizer_states") or []
    if not states or "param_groups" not in states[0]:
        return
    saved = sum(len(group["params"]) for group in states[0]["param_groups"])
    if saved != trained:
        raise ValueError(
            f"{where}: its optimiser state is for {saved} trained tensors, and this model trains {trained}: the "
            "parts that train changed since it was saved (since 2026-12-05 the `adapter` part also trains the time "
            "embedding, model.time_embeddings, which runs before left at zero). Resume it with the osum that saved "
            "it, or export it (osum export --ckpt RUN_DIR --out DIR) and start a new run from its weights with --init DIR"
        )


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
        self._answers: dict[str, list[tuple]] = {}  # stage (val, test) -> (task, key, text, target) so far
        self.evaluations: dict[str, Evaluation] = {}  # stage -> the last finished evaluation
        self.eval_prompts = dict(eval_prompts or {})  # task -> the prompt evaluation uses (for reports)
        self.eval_loss: dict[str, float] = {}
        self._loss_sums: dict[str, list[float]] = {}
        self._decode_stats: dict[str, list[float]] = {}  # stage -> [decode seconds, audio seconds, utterances]
        self._started = time.monotonic()
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or gradient, this process
        self._nonfinite_in_a_row = 0
        self._rng_to_restore: Any = None  # a resumed checkpoint's "rng_states", until the first training batch
        self.epoch_steps: float | None = None  # an epoch-based run's optimiser steps per epoch (its schedule's)
        self._frozen: dict[str, dict[str, Any]] | None = None  # this model's frozen_record, once taken

    # -- exact resume ---------------------------------------------------------------------------------
    # Lightning's checkpoint holds weights, optimiser, schedule, loop and loader positions, but not the
    # random generators: without them, dropout after a resume would differ from an uninterrupted run. Each
    # rank draws from its own, so the checkpoint holds every rank's ("rng_states", in rank order) and each
    # rank restores its own. Resumed on more ranks than saved theirs, a rank without a saved state is seeded
    # from the run's seed (torch.initial_seed(): seed_everything's) and its rank: the run goes on, reproducibly,
    # but not as an uninterrupted run would have (the ranks' streams differ from any such run anyway).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A collective: Lightning calls this hook on every rank (`dump_checkpoint`, under every strategy),
        # and rank 0's dict is the one written (its unsharded part under fsdp2 and DeepSpeed). Gathered
        # before the refusal below, so no rank is left waiting in it.
        rng_states = self.gathered(rng_state(self.device))
        state = checkpoint.get("state_dict", {})
        record = self.frozen_record() if self.global_rank == 0 and self.leaves_out_frozen() else {}
        if record:
            for part in record.values():
                for key in part["keys"]:
                    state.pop(f"model.{key}", None)
            checkpoint[RECORD_KEY] = record
        bad = [name for name, value in state.items()
               if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all())]
        if bad:
            raise TrainingDiverged(f"not saving a checkpoint at step {self.global_step}: {len(bad)} weight tensor(s) "
                                   f"are NaN or infinite ({', '.join(bad[:3])}); the previous checkpoint is kept")
        checkpoint["skipped_steps"] = self.skipped_steps
        checkpoint["rng_states"] = rng_states
        checkpoint["epoch_steps"] = self.epoch_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning loads the weights without strict checking (`strict_loading`): the frozen parts the
        # checkpoint left out must be the ones it was trained with, and nothing else may be missing.
        # (Under fsdp2 the strategy has loaded them already; DeepSpeed loads them itself, after this hook.)
        where = f"checkpoint {self._trainer.ckpt_path}" if self._trainer is not None else "checkpoint"
        recorded = checkpoint.get(RECORD_KEY) or {}
        if recorded:
            check_frozen_parts(recorded, self.frozen_record(), where)
        if "state_dict" in checkpoint:  # absent from DeepSpeed's (its engine holds the weights)
            check_state_keys(self.model.state_dict().keys(), [k.removeprefix("model.") for k in checkpoint["state_dict"]],
                             recorded, where)
        check_optimiser_size(checkpoint, sum(1 for p in self.model.parameters() if p.requires_grad), where)
        # Applied at the first training batch, not now: restoring the loop and the loader still draws
        # from the generators (the loader's base seed), which an uninterrupted run did before the save.
        self._rng_to_restore = checkpoint.get("rng_states", [])
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))
        self.epoch_steps = checkpoint.get("epoch_steps")

    @property
    def strict_loading(self) -> bool:
        # Lightning checks the weights it loads, except where this model's checkpoints leave frozen parts out
        # (osum_core.checkpoints.frozen_parts: rebuilt from their source before a checkpoint is loaded); then
        # on_load_checkpoint checks the rest.
        return not (isinstance(self.model, SpeechLLM) and frozen_keys(self.model, part_sources(self.model)))

    def setup(self, stage: str) -> None:
        # fsdp2 shards the model next (configure_model); the fingerprints need whole tensors: taken now.
        if stage == "fit" and getattr(self, "_device_mesh", None) is not None:
            self.frozen_record()

    def frozen_record(self) -> dict[str, dict[str, Any]]:
        """The frozen parts this model's checkpoints leave out, with their fingerprints (taken once: frozen
        weights do not change)."""
        if self._frozen is None:
            self._frozen = frozen_record(self.model) if isinstance(self.model, SpeechLLM) else {}
        return self._frozen

    def leaves_out_frozen(self) -> bool:
        """Whether this run's checkpoints leave the frozen parts out: always, except under DeepSpeed, whose
        engine saves every parameter unless told otherwise (DeepSpeedStrategy(exclude_frozen_parameters=True))."""
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        return not isinstance(strategy, DeepSpeedStrategy) or strategy.exclude_frozen_parameters

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        saved, self._rng_to_restore = self._rng_to_restore, None
        if saved is None:
            return
        state = rank_rng_state(saved, self.global_rank)
        if state is None:
            seed_rank(torch.initial_seed(), self.global_rank)
        else:
            restore_rng_state(state, self.device)

    # -- sharding (trainer.strategy=fsdp2) -----------------------------------------------------------
    def configure_model(self) -> None:
        """Under `ModelParallelStrategy` (osum's ``fsdp2``): torch's ``fully_shard`` on each Transformer
        layer of the encoder and the LLM (every ``layers`` list), then on the whole model, over the
        data-parallel ranks. Any other strategy leaves the model as it is."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        data_parallel = mesh["data_parallel"]
        for name, module in self.model.named_modules():
            if name.endswith("layers") and isinstance(module, torch.nn.ModuleList):
                for layer in module:
                    fully_shard(layer, mesh=data_parallel, reshard_after_forward=True)
        # The root keeps its parameters after forward (backward needs them at once): fully_shard's default for
        # a root, stated because `whole_model` restores it.
        fully_shard(self.model, mesh=data_parallel, reshard_after_forward=False)
        if hasattr(self.model, "set_reduce_scatter_unused_params"):  # torch >= 2.8
            # A parameter no gradient reached on one rank (that rank's batch took another branch) is still
            # reduced as zeros, so every rank's reductions keep the same sizes.
            self.model.set_reduce_scatter_unused_params(True)
        self._sharded = True

    @contextlib.contextmanager
    def whole_model(self) -> Iterator[None]:
        """Under fsdp2, every sharded module's parameters gathered for the block and kept through its forwards
        (a no-op otherwise), so that an evaluation batch costs the same collectives on every rank: these
        gathers, whatever the batch holds, and even for a rank's empty batch. With the layers still sharded,
        a forward gathers each layer, and transformers' generate adds an all-reduce per token (its
        ``synced_gpus``, on for an FSDP model, which `evaluate_items` turns off): a rank with nothing to
        evaluate would not join them. Costs the unsharded model's memory during evaluation."""
        if not getattr(self, "_sharded", False):
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in self.model.modules() if isinstance(m, FSDPModule)]  # the same order on every rank
        for module in sharded:
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()
        try:
            yield
        finally:
            for module in sharded:
                module.reshard()
                module.set_reshard_after_forward(module is not self.model, recurse=False)
            forget_forward_order(self.model)

    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int) -> dict:
        # Only tensors move; task names, keys and targets stay Python objects.
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # -- training ---------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Processes training together (1 when the module is used without a Trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    def step_totals(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Target tokens and examples of this optimiser step, over its micro-batches and every rank."""
        local = torch.tensor([batch["step_tokens"], batch["step_items"]], dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(local, reduce_op="sum") if self.world_size > 1 else local
        return total[0].float(), total[1].float()

    def batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to back-propagate and its parts as this batch alone gives them (for logs).

        In training, the normaliser is the whole optimiser step's target-token count (and example count, for
        CTC) over its micro-batches and all ranks, multiplied back by the ranks (DDP averages gradients)
        and the micro-batches (Lightning divides by them): the gradient is then the one of the formula above
        over the whole step, whatever the split across ranks and micro-batches."""
        ctc_alone = self.training and self.global_step < self.ce_start_step
        # In one process, a step whose LLM loss does not count skips the LLM (it would get no gradient anyway).
        out = self.model(**batch, ctc_only=ctc_alone and self.world_size == 1 and bool(self.ctc_weight))
        ce = out["token_loss"].sum() / out["token_count"].sum().clamp(min=1)
        ctc = out["ctc_loss"] if self.ctc_weight and "ctc_loss" in out else None
        parts = {"ce": ce.detach()}
        if ctc is not None:
            parts["ctc"] = ctc.mean().detach()
        training = self.training and bool(batch.get("step_tokens"))
        if training:
            tokens, items = self.step_totals(batch)
            factor = self.world_size * self.trainer.accumulate_grad_batches
            if self.trainer.strategy.handles_gradient_accumulation:
                # DeepSpeed's engine divides by the accumulation once more (Lightning has divided already:
                # loops/optimization/automatic.py), so the gradient and its clipping match the formula.
                factor *= self.trainer.accumulate_grad_batches
            ce_term = out["token_loss"].sum() * factor / tokens.clamp(min=1)
            ctc_term = ctc.sum() * factor / items.clamp(min=1) if ctc is not None else None
        else:
            ce_term, ctc_term = ce, ctc.mean() if ctc is not None else None
        # Before ce_start_step (training only) the encoder learns from CTC alone, so the LLM first meets
        # speech embeddings that already carry the words. Under DDP the LLM keeps a zero gradient rather
        # than none (DDP requires every trained parameter to get one).
        if ctc_alone:
            ce_term = ce_term * 0 if self.world_size > 1 else ce_term.detach() * 0
            parts["ce"] = parts["ce"] * 0
        loss = ce_term if ctc_term is None else ce_term + self.ctc_weight * ctc_term
        return loss, parts

    def empty_batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a batch whose every item was skipped (`collate_examples`): zero, yet reaching every
        trained parameter (DDP wants a gradient for each) after joining the step's collective as the
        other ranks do. Under fsdp2 the other ranks' forward and backward gather and reduce each sharded
        module, so this rank runs the same forward on a placeholder example and gives its loss times zero."""
        if getattr(self, "_sharded", False) and self.world_size > 1:
            steps = {k: batch[k] for k in ("step_tokens", "step_items") if k in batch}
            loss, _ = self.batch_loss({**placeholder_batch(self.model, self.device), **steps})
            return loss * 0.0
        if self.world_size > 1 and batch.get("step_tokens"):
            self.step_totals(batch)
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), zero)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """``loss`` to back-propagate (scaled by the step's normaliser) and ``batch_loss``, this batch's own
        loss as ``train/loss`` logs it (for callbacks: ``outputs["batch_loss"]``; 0 for an empty batch)."""
        if not batch["keys"]:
            return {"loss": self.empty_batch_loss(batch), "batch_loss": torch.zeros((), device=self.device)}
        loss, parts = self.batch_loss(batch)
        size = len(batch["keys"])
        logged = parts["ce"] + self.ctc_weight * parts["ctc"] if "ctc" in parts else parts["ce"]
        self.log("train/loss", logged, prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=size)
        return {"loss": loss, "batch_loss": logged.detach()}

    def gradients_finite(self, loss: Any) -> bool:
        """Whether this step's loss and every gradient are finite, on every rank (one device sync)."""
        flags = [torch.isfinite(torch.as_tensor(loss, device=self.device)).all()] if loss is not None else []
        # fsdp2: this rank's shard of each gradient.
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                 for p in self.model.parameters() if p.grad is not None]
        grads = [g for g in grads if g.numel()]  # fsdp2 leaves a rank an empty shard of a parameter of few rows
        if grads:
            # The largest magnitude of each gradient, in one multi-tensor kernel: NaN or infinite exactly when the
            # gradient holds one (a max cannot overflow, as a sum of squares could).
            largest = torch._foreach_norm(grads, ord=float("inf"))
            flags.append(torch.isfinite(torch.stack([x.float() for x in largest])).all())
        bad = (~torch.stack(flags).all()).float() if flags else torch.zeros((), device=self.device)
        if self.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return float(bad) == 0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step, unless the loss or a gradient is NaN or infinite: then the optimiser does not
        step (Lightning's documented way to skip: run the closure, do not call ``step``). Left to the
        strategy where it skips by itself: a GradScaler (fp16) and DeepSpeed."""
        from lightning.pytorch.strategies import DeepSpeedStrategy

        trainer = self.trainer
        if isinstance(trainer.strategy, DeepSpeedStrategy) or getattr(trainer.precision_plugin, "scaler", None):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        loss = optimizer_closure() if optimizer_closure is not None else None  # forward and backward
        if self.gradients_finite(loss):
            self._nonfinite_in_a_row = 0
            optimizer.step()
            return
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        # Lightning still counts it as a step (global_step, trainer.max_steps, the schedule): steps are attempts.
        step = self.global_step + 1  # the step being taken (global_step counts those finished)
        print(f"osum: warning: step {step}: NaN or infinite loss or gradient; step skipped "
              f"({self._nonfinite_in_a_row} in a row, {self.skipped_steps} in all)", file=sys.stderr)
        limit = self.optim["max_nonfinite_steps"]
        if self._nonfinite_in_a_row >= limit:
            raise TrainingDiverged(
                f"steps {step - self._nonfinite_in_a_row + 1} to {step}: {self._nonfinite_in_a_row} in a row had a NaN or infinite "
                f"loss or gradient (optim.max_nonfinite_steps={limit}); the run stopped. Its last "
                "checkpoint holds the weights from before them. Try a lower optim.lr, more optim.warmup_steps, or "
                "float32 (trainer.precision=32-true)")

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.optim["lr"],
            betas=tuple(self.optim["betas"]),
            eps=self.optim["eps"],
            weight_decay=self.optim["weight_decay"],
            # One kernel over all parameters instead of a dozen per tensor (3x faster on a CPU, where torch's
            # default is the per-tensor loop); sharded (DTensor) parameters keep torch's default.
            fused=self.optim["fused"] and not self.sharded_parameters(params),
        )
        # A fused AdamW offers to unscale fp16 gradients itself, and Lightning's mixed precision then refuses
        # to clip them (trainer.gradient_clip_val). Declined: a GradScaler unscales before clipping, as for
        # any optimiser, and bf16 has nothing to unscale; the fused kernel steps on plain gradients.
        optimizer._step_supports_amp_scaling = False
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_schedule(self.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @staticmethod
    def sharded_parameters(params: list[torch.Tensor]) -> bool:
        return any(hasattr(p, "to_local") for p in params)

    def lr_schedule(self, total_steps: float) -> Callable[[int], float]:
        return lr_multiplier(self.optim["schedule"], self.optim["warmup_steps"], total_steps, self.optim["min_lr_ratio"])

    def on_train_start(self) -> None:
        # An epoch-based run (total_steps not positive: trainer.max_steps=-1) learns its length here, from
        # Lightning's count of the optimiser steps in its first epoch (batches, accumulation,
        # limit_train_batches) times its epochs. Epochs differ in length, so the count is kept in every
        # checkpoint: a resumed run, whose loader is the current epoch's, decays on the same curve (over
        # its own trainer.max_epochs). Not counted in configure_optimizers: asking there sets the train
        # loader up before a resume restores its position, which is then lost (Lightning issue #20550).
        # The rate before the first step does not depend on the length; a resume restores the one it had.
        if self.total_steps > 0:
            return
        epochs = max(self.trainer.max_epochs or 1, 1)
        if self.epoch_steps is None:
            self.epoch_steps = self.trainer.estimated_stepping_batches / epochs
        self.lr_schedulers().lr_lambdas = [self.lr_schedule(self.epoch_steps * epochs)]

    # -- evaluation -------------------------------------------------------------------------------------
    def evaluate_batch(self, stage: str, batch: dict[str, Any]) -> None:
        with self.whole_model():  # on every rank, for an empty batch too (`whole_model`)
            if batch["keys"]:
                self.evaluate_items(stage, batch)

    def evaluate_items(self, stage: str, batch: dict[str, Any]) -> None:
        loss, _ = self.batch_loss(batch)
        sums = self._loss_sums.setdefault(stage, [0.0, 0])
        sums[0] += float(loss) * len(batch["keys"])
        sums[1] += len(batch["keys"])
        began = time.perf_counter()
        # Sharded, the whole model is gathered (`whole_model`): generating needs no collective, and a rank whose
        # batch is empty would not join transformers' per-token all-reduce.
        sharded = getattr(self, "_sharded", False)
        texts = generated_texts(self.model, self.tokenizer, batch, self.generation, synced_gpus=False if sharded else None)
        # The report's real-time factor, as `osum test` measures it: decoding time per second of audio.
        stats = self._decode_stats.setdefault(stage, [0.0, 0.0, 0])
        stats[0] += time.perf_counter() - began
        stats[1] += float(batch["feature_lengths"].sum()) / FRAMES_PER_SECOND
        stats[2] += len(texts)
        answers = self._answers.setdefault(stage, [])
        answers.extend(zip(batch["tasks"], batch["keys"], texts, batch["targets"], strict=True))

    def gathered(self, value: Any) -> list[Any]:
        """`value` from every rank, in rank order (just `[value]` in one process)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.trainer.world_size
        dist.all_gather_object(values, value)
        return values

    def finish_evaluation(self, stage: str) -> None:
        """Score every rank's answers together: WER is all errors over all reference words, accuracy all
        hits over all examples, confusion matrices summed; each rank ends with the same evaluation."""
        scorer = Scorer(self.tasks)
        for answers in self.gathered(self._answers.pop(stage, [])):
            for task_name, key, text, target in answers:
                scorer.add(task_name, key, text, target)
        decoded = self.gathered(self._decode_stats.pop(stage, [0.0, 0.0, 0]))
        stats = DecodeStats(audio_seconds=sum(d[1] for d in decoded), decode_seconds=sum(d[0] for d in decoded),
                            utterances=sum(d[2] for d in decoded))
        evaluation = scorer.evaluation(prompts=self.eval_prompts, stats=stats)
        sums = self.gathered(self._loss_sums.pop(stage, [0.0, 0]))
        loss_sum, count = sum(s[0] for s in sums), sum(s[1] for s in sums)
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


def placeholder_batch(model: SpeechLLM, device: torch.device, frames: int = 64) -> dict[str, torch.Tensor]:
    """One made-up example that takes the path of a real one through `model` (encoder, CTC head, adapter,
    LLM): `frames` frames of zero features, a one-token prompt, a one-token target and a one-token CTC target that
    is not the CTC blank (so its loss is finite)."""
    mels = model.encoder.whisper.config.num_mel_bins
    vocab = model.ctc_head.out_features if model.ctc_head is not None else model.causal_lm.config.vocab_size
    token = model.eos_token_id if model.eos_token_id != model.pad_token_id else (model.pad_token_id + 1) % vocab
    ids = torch.full((1, 1), token, dtype=torch.long, device=device)
    one = torch.ones(1, dtype=torch.long, device=device)
    return {
        "features": torch.zeros(1, frames, mels, device=device), "feature_lengths": torch.tensor([frames], device=device),
        "prompt_ids": ids, "prompt_lengths": one, "target_ids": ids, "target_lengths": one,
        "target_weights": torch.ones(1, 1, device=device), "ctc_ids": ids, "ctc_lengths": one,
        "ctc_weights": torch.ones(1, device=device),
    }


def forget_forward_order(model: torch.nn.Module) -> None:
    """Clear the order in which FSDP saw its modules run forward. Evaluation's forwards add to it until the next
    training backward, which prefetches (gathers) the module before each one in that order: a rank that
    evaluated items would then gather once more than a rank whose evaluation batches were all empty, and wait
    for ever. Only these lists: torch's `reset_iter_state` would also drop gradient reductions in flight (a
    validation may fall between the micro-batches of a step). Private to torch's FSDP2, hence each looked up
    with care (the lists exist once the root has run a forward; older torch has one parameter group per
    module, ``_fsdp_param_group``); tests/test_distributed.py hangs without it."""
    from torch.distributed.fsdp import FSDPModule

    order = getattr(getattr(model._get_fsdp_state(), "_comm_ctx", None), "post_forward_order", None)  # type: ignore[operator]
    if order is not None:
        order.clear()
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:
            groups = [group for group in [getattr(state, "_fsdp_param_group", None)] if group is not None]
        for group in groups:
            indices = getattr(group, "_post_forward_indices", None)
            if indices is not None:
                indices.clear()

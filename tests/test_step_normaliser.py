"""The loss of an optimiser step is normalised by the step's target tokens, not each micro-batch's: the batch
sampler gives every item its step's token and example counts (`PlanBatchSampler`), and the training module
divides by them (`SpeechLLMModule.batch_loss`), so accumulating micro-batches gives the gradient of the loss
formula over the whole step at once."""

import copy
import json

import lightning as L
import pytest
import torch
from conftest import wav_bytes
from test_backbone import generation, model_cfg
from test_epoch_plan import Words, data_cfg

from osum_core.config import load_config
from osum_core.data.collate import collate_examples
from osum_core.data.loader import PlanBatchSampler
from osum_core.model.build import build_speech_llm
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule
from osum_core.train.module import SpeechLLMModule

CTC_WEIGHT = 0.5


def example(key: str, frames: int, targets: int, weight: float, g: torch.Generator) -> dict:
    """A dataset item (as `SpeechDataset` gives it) of random features and ids, with `targets` target tokens."""
    return {
        "key": key, "task": "asr", "target": None, "features": torch.randn(frames, 80, generator=g),
        "prompt_ids": torch.randint(3, 64, (3,), generator=g), "target_ids": torch.randint(3, 64, (targets,), generator=g),
        "target_weights": torch.full((targets,), weight), "ctc_ids": torch.randint(3, 64, (max(targets - 1, 1),), generator=g),
    }


def gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters()) if p.grad is not None])


def formula_gradient(model: torch.nn.Module, batches: list[dict]) -> torch.Tensor:
    """The gradient of the loss formula (module docstring) on each batch, averaged over the batches."""
    model.zero_grad()
    for batch in batches:
        out = model(**batch)
        loss = out["token_loss"].sum() / out["token_count"].sum() + CTC_WEIGHT * out["ctc_loss"].mean()
        (loss / len(batches)).backward()
    return gradients(model)


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_step():
    g = torch.Generator().manual_seed(0)
    # One step of six examples in three micro-batches of 2, 18 and 11 target tokens (1, 2 and 3 examples),
    # with loss weights other than 1.
    split = [[(40, 2, 1.0)], [(56, 9, 1.0), (48, 9, 2.0)], [(60, 3, 0.5), (44, 7, 1.0), (52, 1, 1.0)]]
    items = [[example(f"{n}.{i}", *spec, g) for i, spec in enumerate(specs)] for n, specs in enumerate(split)]
    step = {"step_tokens": 31, "step_items": 6}
    assert sum(len(item["target_ids"]) for batch in items for item in batch) == step["step_tokens"]
    micro = [collate_examples([{**item, **step} for item in batch]) for batch in items]
    whole = collate_examples([item for batch in items for item in batch])

    torch.manual_seed(0)
    model = build_speech_llm(model_cfg(), vocab_size=64, eos_token_id=2, pad_token_id=0)
    reference = copy.deepcopy(model)
    module = SpeechLLMModule(model, {}, None, load_config()["optim"], ctc_weight=CTC_WEIGHT,
                             generation=generation(max_new_tokens=1), total_steps=1, ce_start_step=0)
    taken = []

    class Gradients(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            taken.append(gradients(pl_module.model))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=len(micro), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Gradients()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(micro, batch_size=None))
    assert len(taken) == 1  # one optimiser step over the three micro-batches

    want = formula_gradient(reference, [whole])
    assert torch.linalg.norm(taken[0] - want) <= 1e-4 * torch.linalg.norm(want)
    # Each micro-batch normalised by its own tokens and examples (then averaged) is another gradient.
    per_micro_batch = formula_gradient(reference, micro)
    assert torch.linalg.norm(per_micro_batch - want) > 0.1 * torch.linalg.norm(want)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SpeechDataModule:
    """14 ASR items of 0.2 to 1.1 s and 1 to 5 words, in batches of 2 to 5 items."""
    folder = tmp_path_factory.mktemp("step_data")
    lines = []
    for n in range(14):
        (folder / f"{n}.wav").write_bytes(wav_bytes(0.2 + 0.07 * n))
        lines.append({"key": f"k{n}", "wav": f"{n}.wav", "txt": " ".join(["word"] * (1 + n * 7 % 5))})
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tasks = {task.name: task for task in load_tasks().select(["asr"])}
    return SpeechDataModule(data_cfg(str(folder / "train.jsonl"), max_frames=250), tasks, Words(), seed=5,
                            ctc_target="transcript", sequence_length=lambda frames, prompt, target, per_step: frames // 8)


@pytest.mark.parametrize("accumulate", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("epoch", [0, 1])
def test_each_batch_carries_the_tokens_and_items_of_its_step(data, accumulate, epoch):
    """A step is `accumulate` consecutive batches from the epoch's start (the last one maybe fewer); its
    tokens are the target tokens the model counts (end-of-text included), summed over those batches."""
    plan, dataset = data.plan("train"), data.dataset("train")
    sampler = PlanBatchSampler(plan, accumulate=accumulate)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    planned = list(plan.batches(epoch, 0, 1, 1))
    assert [[i.example.key for i in b] for b in batches] == [[i.example.key for i in b] for b in planned]
    assert len(batches) == 5 and len({len(b) for b in batches}) > 1  # steps of 5 % accumulate batches too
    tokens = [int(collate_examples([dataset[item] for item in batch])["target_lengths"].sum()) for batch in batches]
    assert len(set(tokens)) > 1
    for index, batch in enumerate(batches):
        first = index - index % accumulate
        step = range(first, min(first + accumulate, len(batches)))
        assert {item.step_tokens for item in batch} == {sum(tokens[j] for j in step)}, index
        assert {item.step_items for item in batch} == {sum(len(batches[j]) for j in step)}, index
        assert collate_examples([dataset[item] for item in batch])["step_tokens"] == batch[0].step_tokens


def test_each_examples_ctc_loss_weight_reaches_the_step_loss():
    """`tasks.<name>.ctc_loss_weight` travels from the dataset item through the batch to the loss formula:
    loss = CE + ctc_weight * mean_i c_i * CTC_i."""
    g = torch.Generator().manual_seed(0)
    items = [example("a", 40, 3, 1.0, g), example("b", 56, 5, 1.0, g), example("c", 48, 4, 1.0, g)]
    torch.manual_seed(0)
    model = build_speech_llm(model_cfg(), vocab_size=64, eos_token_id=2, pad_token_id=0)
    module = SpeechLLMModule(model, {}, None, load_config()["optim"], ctc_weight=CTC_WEIGHT,
                             generation=generation(max_new_tokens=1), total_steps=1, ce_start_step=0)
    with torch.no_grad():
        plain = model(**collate_examples(items))
    weighted = collate_examples([{**item, "ctc_weight": c} for item, c in zip(items, (0.0, 0.5, 2.0), strict=True)])
    assert weighted["ctc_weights"].tolist() == [0.0, 0.5, 2.0]
    loss, parts = module.batch_loss(weighted)
    ce = plain["token_loss"].sum() / plain["token_count"].sum()
    want = ce + CTC_WEIGHT * (plain["ctc_loss"] * torch.tensor([0.0, 0.5, 2.0])).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-6)
    # The example of weight 0 sends the CTC head nothing: its gradient is that of the other two alone.
    model.zero_grad()
    module.batch_loss(weighted)[0].backward()
    with_zero = model.ctc_head.weight.grad.clone()
    model.zero_grad()
    others = collate_examples([{**item, "ctc_weight": c} for item, c in zip(items[1:], (0.5, 2.0), strict=True)])
    ctc = model(**others)["ctc_loss"]
    (CTC_WEIGHT * ctc.sum() / 3).backward()
    torch.testing.assert_close(with_zero, model.ctc_head.weight.grad, rtol=1e-4, atol=1e-7)

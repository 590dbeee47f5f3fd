import math

import pytest
import torch

from osum_core.config import load_config
from osum_core.model.speech_llm import GenerationSettings
from osum_core.train.module import SpeechLLMModule
from osum_core.train.schedule import lr_multiplier


def generation(**changes) -> GenerationSettings:
    """The configured decoding settings (configs/fit.yaml), with `changes`."""
    return GenerationSettings(**{**load_config()["eval"]["generation"], **changes})


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    f = lr_multiplier("cosine", warmup_steps=10, total_steps=110, min_ratio=0.05)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f(110) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)


def test_inverse_sqrt_is_osum_warmup_lr():
    f = lr_multiplier("inverse_sqrt", warmup_steps=100, total_steps=0, min_ratio=0)
    assert f(49) == pytest.approx(0.5)
    assert f(399) == pytest.approx(math.sqrt(100 / 400))
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_multiplier("linear", 1, 1, 0)


class FakeModel(torch.nn.Module):
    """Stands in for SpeechLLM's loss terms only; the module's loss arithmetic is under test."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, **batch):
        return {
            "token_loss": self.w * torch.tensor([6.0, 2.0]),
            "token_count": torch.tensor([3.0, 1.0]),
            "ctc_loss": self.w * torch.tensor([1.0, 3.0]),
        }


def test_batch_loss_formula_and_ce_start_step():
    module = SpeechLLMModule(FakeModel(), {}, None, {}, ctc_weight=0.5,
                             generation=generation(max_new_tokens=1), total_steps=10, ce_start_step=5)
    module.eval()
    loss, parts = module.batch_loss({})
    assert float(parts["ce"]) == pytest.approx(8 / 4)
    assert float(loss) == pytest.approx(8 / 4 + 0.5 * 2.0)
    module.train()  # global_step is 0 < ce_start_step: only CTC trains
    loss, _ = module.batch_loss({})
    assert float(loss) == pytest.approx(0.5 * 2.0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_training_step_returns_the_loss_to_train_and_the_batch_loss_it_logs():
    module = SpeechLLMModule(FakeModel(), {}, None, {}, ctc_weight=0.5, generation=generation(max_new_tokens=1),
                             total_steps=10, ce_start_step=0)
    module.train()
    out = module.training_step({"keys": ["a", "b"]}, 0)
    assert out["loss"].requires_grad and not out["batch_loss"].requires_grad
    assert float(out["batch_loss"]) == pytest.approx(8 / 4 + 0.5 * 2.0)  # train/loss: ce + ctc_weight * ctc
    empty = module.training_step({"keys": []}, 0)
    assert float(empty["loss"]) == 0 and float(empty["batch_loss"]) == 0

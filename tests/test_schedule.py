"""The learning-rate schedule over a run as Lightning drives it: an epoch-based run (trainer.max_steps=-1)
decays over all its epochs, and a resumed one continues the same rates from the same batch."""

import math

import lightning as L
import pytest
import torch

from osum_core.train.module import SpeechLLMModule
from osum_core.train.schedule import lr_multiplier

OPTIM = {"lr": 1.0, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 2,
         "min_lr_ratio": 0.1, "max_nonfinite_steps": 10, "fused": True}
LENGTHS = [6, 4, 6]  # batches in each epoch: epochs differ in length, as osum's do
ACCUMULATE = 2
ESTIMATE = LENGTHS[0] // ACCUMULATE * len(LENGTHS)  # the run's length as its first epoch tells it: 9 steps
TAKEN = sum(LENGTHS) // ACCUMULATE  # the steps it takes: 8


class Squares(torch.nn.Module):
    """Stands in for SpeechLLM's loss terms on a batch of one number."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, **_):
        return {"token_loss": (self.w * x) ** 2, "token_count": torch.ones_like(x)}


class Batches:
    """One epoch's batches (one number each), resumable from the batch a checkpoint left off at."""

    def __init__(self, epoch: int):
        self.epoch, self.start, self.yielded = epoch, 0, 0

    def __len__(self):
        return LENGTHS[self.epoch]

    def __iter__(self):
        start, self.start = self.start, 0
        for i in range(start, len(self)):
            self.yielded = i + 1
            yield {"keys": [f"e{self.epoch}b{i}"], "x": torch.tensor([0.1 * (i + 1)])}

    def state_dict(self):
        return {"yielded": self.yielded}

    def load_state_dict(self, state):
        self.start = state["yielded"]


class Epochs(L.LightningDataModule):
    def train_dataloader(self):
        return Batches(self.trainer.current_epoch)


class Rates(L.Callback):
    """(optimiser step, batch key, learning rate) of every training batch."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.rows.append((trainer.global_step, batch["keys"][0], trainer.optimizers[0].param_groups[0]["lr"]))


def fit(tmp_path, resume=None):
    """An epoch-based run over `LENGTHS`, the loader rebuilt each epoch (as osum's is), a checkpoint every
    2 steps."""
    module = SpeechLLMModule(Squares(), {}, None, OPTIM, ctc_weight=0.0, generation=None, total_steps=0,
                             ce_start_step=0)
    rates = Rates()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_steps=-1, max_epochs=len(LENGTHS), accumulate_grad_batches=ACCUMULATE,
                        reload_dataloaders_every_n_epochs=1, callbacks=[rates, checkpoints], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=Epochs(), ckpt_path=resume)
    return rates.rows


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole")
    return path, fit(path)


def test_an_epoch_based_cosine_run_decays_over_all_its_epochs(whole):
    rows = whole[1]
    assert len(rows) == sum(LENGTHS)
    rates = {step: lr for step, _, lr in rows}
    cosine = lr_multiplier("cosine", OPTIM["warmup_steps"], ESTIMATE, OPTIM["min_lr_ratio"])
    assert rates == pytest.approx({step: cosine(step) for step in range(TAKEN)})
    # Not at the floor one step after warm-up: step 5 is 3 of the 7 decaying steps down the cosine.
    assert rates[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))
    assert rates[TAKEN - 1] > OPTIM["min_lr_ratio"]


# Step 2: in the middle of the first epoch. Step 4: in the middle of the second, shorter than the first, so
# the resumed run's loader (the second epoch's) tells another length than the first run's did.
@pytest.mark.parametrize("step", [2, 4])
def test_a_resumed_epoch_based_run_continues_the_same_batches_and_rates(step, whole, tmp_path):
    path, rows = whole
    resumed = fit(tmp_path, resume=path / f"step={step}.ckpt")
    assert resumed == [row for row in rows if row[0] >= step]

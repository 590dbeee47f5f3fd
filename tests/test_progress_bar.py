"""With max_steps, fit's progress bar counts the run's steps across epochs (not batches against epoch -1), its
rate counts only the steps this process trained, and it shows the items skipped."""

import lightning as L
import torch
from test_faults import Keyed, skipping_batches
from tqdm import tqdm

from osum_core.data.bad_items import SkipLog
from osum_core.train.skipped_items import SkippedItems
from osum_core.train.trainer import StepProgressBar


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Watch(L.Callback):
    def __init__(self, bar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, *args):
        self.seen.append((trainer.current_epoch, self.bar.train_progress_bar.n, self.bar.train_progress_bar.total))


def test_the_bar_runs_over_the_run_steps(tmp_path):
    bar = StepProgressBar()
    watch = Watch(bar)  # after the bar: sees what it shows after each step
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    trainer = L.Trainer(max_steps=5, callbacks=[bar, watch], logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, accelerator="cpu", enable_model_summary=False)
    trainer.fit(Tiny(), loader)
    assert watch.seen == [(0, 1, 5), (0, 2, 5), (1, 3, 5), (1, 4, 5), (2, 5, 5)]
    assert bar.train_progress_bar.desc.startswith("train (epoch 2)")


def fit_tiny(tmp_path, max_steps, *callbacks, ckpt_path=None):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    trainer = L.Trainer(max_steps=max_steps, callbacks=list(callbacks), logger=False, default_root_dir=tmp_path,
                        accelerator="cpu", enable_model_summary=False)
    trainer.fit(Tiny(), loader, ckpt_path=ckpt_path)
    return trainer


class Restored(L.Callback):
    def on_train_start(self, trainer, *args):
        self.step = trainer.global_step


def test_after_a_resume_the_rate_counts_only_the_steps_this_process_trained(tmp_path):
    first = fit_tiny(tmp_path, 3, StepProgressBar())  # its checkpoint is in the middle of epoch 1
    bar, restored = StepProgressBar(), Restored()
    fit_tiny(tmp_path, 7, restored, bar, ckpt_path=first.checkpoint_callback.best_model_path)
    shown = bar.train_progress_bar
    assert restored.step > 0 and (shown.n, shown.total, shown.initial) == (7, 7, restored.step)
    # tqdm's rate is (n - initial) / elapsed: over 1 second, the steps this process trained, not all 7.
    meter = tqdm.format_meter(**{**shown.format_dict, "elapsed": 1.0, "rate": None})
    assert f"{7 - restored.step:.2f}step/s" in meter, meter


def test_the_bar_shows_the_items_skipped_so_far(tmp_path):
    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=3, callbacks=[SkippedItems(SkipLog()), bar], logger=False, default_root_dir=tmp_path,
                        accelerator="cpu", enable_model_summary=False)
    trainer.fit(Keyed(), torch.utils.data.DataLoader(skipping_batches(3, 2, 1), batch_size=None))
    assert bar.train_progress_bar.postfix.endswith("skipped=3"), bar.train_progress_bar.postfix

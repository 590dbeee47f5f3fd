"""With max_steps, fit's progress bar counts the run's steps across epochs (not batches against epoch -1)."""

import lightning as L
import torch

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

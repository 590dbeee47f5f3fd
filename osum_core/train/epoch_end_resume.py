"""`EpochEndResume`: a checkpoint written at an epoch's last step resumes into the next epoch whole.

Such a checkpoint (a step checkpoint, a validation's or a preemption's that falls on the epoch's last
batch) records Lightning's batch progress with ``is_last_batch`` set. On a resume Lightning then counts the
next epoch as already at that many batches and ends it after the difference, or at once: the next epoch's
first batches, or all of it, are never trained (the run jumps from epoch 0 to epoch 2). osum's loader knows
where each epoch stands (`osum_core.data.loader`): cleared, the flag lets Lightning finish the restored epoch
as an interrupted one, whose loader has nothing left, and then plan the next epoch from its start."""

from __future__ import annotations

from typing import Any

import lightning as L


class EpochEndResume(L.Callback):
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called with the whole checkpoint before Lightning restores its loops from it.
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        if progress.get("is_last_batch"):
            progress["is_last_batch"] = False

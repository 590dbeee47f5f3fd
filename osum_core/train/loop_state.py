"""`LoopStateResume`: Lightning's loop state in a checkpoint made to agree with osum's data position
(`osum_core.data.loader`), before Lightning restores its loops from it.

- **A checkpoint at an epoch's last step** (a step checkpoint, or a preemption's, that falls on the epoch's
  last batch) records ``is_last_batch``. On a resume Lightning then counts the next epoch as already at that
  many batches and ends it after the difference, or at once: the next epoch's first batches, or all of it, are
  never trained (the run jumps from epoch 0 to epoch 2). Cleared, the flag lets Lightning finish the restored
  epoch as an interrupted one, whose loader has nothing left, and then plan the next epoch from its start.
- **A run stopped in the middle of an epoch** by ``trainer.max_steps`` or ``trainer.max_time`` writes its
  last checkpoint after Lightning has counted that epoch as finished, while the data position says how far it
  got. Resumed as it is, the rest of that epoch would never be trained; the epoch's counters are set back to
  those of a step checkpoint at the same batch.
- **A run whose ``trainer.max_time`` is spent** (the time budget counts the whole run, across resumes) would
  resume, train nothing and exit: it says so.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L


class LoopStateResume(L.Callback):
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        batches = loop.get("epoch_loop.batch_progress", {})
        if batches.get("is_last_batch"):
            batches["is_last_batch"] = False
        position = next((state["train_position"] for state in checkpoint.values()
                         if isinstance(state, dict) and "train_position" in state), None)
        epochs = loop.get("epoch_progress", {})
        if position and not position.get("finished", True) and epochs.get("current", {}).get("processed", 0) > position["epoch"]:
            epoch, trained = position["epoch"], sum(s["batches"] for s in position["segments"])
            for counts in (epochs["current"], epochs["total"]):
                counts.update(ready=epoch + 1, started=epoch + 1, processed=epoch, completed=epoch)
            if trained:  # as a step checkpoint at this batch records it (before the batch is counted complete)
                batches["current"].update(ready=trained, started=trained, processed=trained, completed=trained - 1)
                batches["total"]["completed"] = batches["total"]["processed"] - 1
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, L.pytorch.callbacks.Timer)), None)
        spent = checkpoint.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {}).get("train", 0.0)
        if timer is not None and timer._duration is not None and spent >= timer._duration:
            print(f"osum: warning: this run has used its time budget already (trainer.max_time: {timer._duration / 60:.0f} "
                  f"min of training across its resumes): it stops at once; give trainer.max_time=null or a longer one",
                  file=sys.stderr)

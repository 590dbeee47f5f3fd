"""What a run prints besides its own progress: osum's warnings as one plain line each, and none of
Lightning's tips, start-up notices or warnings about its own internals that osum has dealt with."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

OSUM_PACKAGES = ("osum_core", "osum_tasks")

# Lightning's warnings that say nothing a user of osum can act on: osum chose these settings on purpose.
LIGHTNING_NOISE = (
    r"The number of training batches .* is smaller than the logging interval",  # short demo epochs
    r"You have overridden `transfer_batch_to_device`",  # the module moves only tensors, on purpose
    r"The dirpath has changed from",  # a copied or resumed run writes its own last.ckpt
    r"You're resuming from a checkpoint that ended before the epoch ended",  # the datamodule restores the position
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, with this torch
    r"Experiment logs directory .* exists and is not empty",  # the run directory holds config.yaml
    r".*does not have many workers which may be a bottleneck",  # data.num_workers is the user's choice
    r"Checkpoint directory .* exists and is not empty",  # a resumed run writes its checkpoint again
)


def plain_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """osum's own warnings as ``osum: warning: …`` (no source line); others as Python shows them."""
    if any(part in Path(filename).parts for part in OSUM_PACKAGES):
        print(f"osum: warning: {message}", file=file or sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def quiet_console() -> None:
    """Set up what `osum fit`, `osum test` and friends print (idempotent)."""
    warnings.showwarning = plain_warning
    for pattern in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    # Lightning's start-up notices (accelerator found, cloud-logger tips, "Restoring states ..."): osum says
    # what it runs on and what it restores itself.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)

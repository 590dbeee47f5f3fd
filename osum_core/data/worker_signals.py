"""Imported first by the forkserver dataloader workers start from (`osum_core.data.loader.worker_context`),
which is what it is for: it makes that process, and so every worker forked from it, ignore SIGTERM and
SIGUSR1. A scheduler (SLURM) sends them to every process of the job; the rank saves a checkpoint and stops at
the end of its step (`osum_core.train.preemption`) and needs its workers, and the forkserver their parent,
until then. A forkserver that died of the signal would take the workers' pipes with it and fail the rank's
next batch. Workers still exit when their rank does (`exit_with_rank`)."""

import signal

for _name in ("SIGTERM", "SIGUSR1"):
    if hasattr(signal, _name):
        signal.signal(getattr(signal, _name), signal.SIG_IGN)

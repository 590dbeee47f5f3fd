"""Checkpoints on disk: the osum checkpoint directory (export), the run directory ``osum fit`` writes,
canonical state-dict keys, and the import of OSUM's released ``infer.pt``."""

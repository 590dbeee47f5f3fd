"""``trainer.strategy``: osum's names for Lightning's distributed strategies, built from the config.

- ``ddp``: Lightning's DDPStrategy (a name Lightning knows; passed through). ``find_unused_parameters``
  stays off: every trained parameter gets a gradient at every step (before ``loss.ce_start_step`` the
  LLM's is zero rather than none).
- ``fsdp2``: Lightning's `ModelParallelStrategy`, all ranks data-parallel; `SpeechLLMModule.configure_model`
  applies torch's ``fully_shard`` to each encoder and LLM layer and to the whole model. The checkpoint is
  gathered into one ``last.ckpt`` (``save_distributed_checkpoint=False``) so run directories look alike.
- ``deepspeed_zero2``: Lightning's `DeepSpeedStrategy` with ZeRO stage 2 and the ``deepspeed:`` section's
  bucket settings; it needs CUDA and the deepspeed package.
Any other value is handed to Lightning as it is (``auto``, ``ddp_spawn``, ``fsdp``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OSUM_STRATEGIES = ("fsdp2", "deepspeed_zero2")
DEEPSPEED_KEYS = ("allgather_bucket_size", "reduce_bucket_size", "overlap_comm", "contiguous_gradients")


def deepspeed_config(trainer: Mapping[str, Any], deepspeed: Mapping[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config of ``deepspeed_zero2``: ZeRO-2 with the ``deepspeed:`` section's settings.
    Clipping, accumulation and precision stay Lightning's (``trainer.*``), which passes them on."""
    unknown = sorted(set(deepspeed) - set(DEEPSPEED_KEYS))
    if unknown:
        raise ValueError(f"unknown config key 'deepspeed.{unknown[0]}'; known: {', '.join(DEEPSPEED_KEYS)}")
    precision = str(trainer.get("precision", "32-true"))
    if precision.startswith("16"):
        raise ValueError("deepspeed_zero2: use trainer.precision=bf16-mixed (OSUM's) or 32-true; fp16 needs loss scaling "
                         "settings osum does not set")
    return {
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 2, **{k: deepspeed[k] for k in DEEPSPEED_KEYS}},
    }


def build_strategy(trainer: Mapping[str, Any], deepspeed: Mapping[str, Any]) -> Any:
    """The ``strategy`` argument of lightning.Trainer for the ``trainer:`` section."""
    name = trainer.get("strategy", "auto")
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
        if not isinstance(devices, int) or not isinstance(nodes, int):
            raise ValueError(f"trainer.strategy=fsdp2 needs trainer.devices and trainer.num_nodes as numbers, got "
                             f"{devices!r} and {nodes!r}")
        # Every rank data-parallel (Lightning's "auto" would make the devices of a node tensor-parallel).
        return ModelParallelStrategy(data_parallel_size=devices * nodes, tensor_parallel_size=1,
                                     save_distributed_checkpoint=False)
    if name == "deepspeed_zero2":
        config = deepspeed_config(trainer, deepspeed)
        from lightning.fabric.utilities.exceptions import MisconfigurationException
        from lightning.pytorch.strategies import DeepSpeedStrategy

        try:
            return DeepSpeedStrategy(config=config)
        except (ImportError, MisconfigurationException) as error:  # Lightning's answer without deepspeed
            raise ValueError(f"trainer.strategy=deepspeed_zero2 needs the deepspeed package and CUDA ({error})") from None
    return name

"""Strategy presets: each is a config file, each builds the Lightning strategy it names (DeepSpeed's config
is checked here; running it needs CUDA and the deepspeed package)."""

import pytest

from osum_core.config import fit_config
from osum_core.train.strategies import build_strategy, deepspeed_config


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "deepspeed_zero2"])
def test_each_strategy_preset_sets_its_strategy(name):
    cfg = fit_config(strategies=[name])
    assert cfg["trainer"]["strategy"] == name
    assert cfg["trainer"]["use_distributed_sampler"] is False


def test_fsdp2_is_lightnings_model_parallel_strategy():
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = build_strategy({"strategy": "fsdp2"}, {})
    assert isinstance(strategy, ModelParallelStrategy)
    assert build_strategy({"strategy": "ddp"}, {}) == "ddp"  # Lightning's own names pass through


def test_deepspeed_zero2_config_is_osums_stage_2():
    cfg = fit_config(strategies=["deepspeed_zero2"])
    config = deepspeed_config(cfg["trainer"], cfg["deepspeed"])
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["overlap_comm"] is True
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["gradient_clip_val"] == 5.0
    assert cfg["trainer"]["accumulate_grad_batches"] == 4
    with pytest.raises(ValueError, match="unknown config key 'deepspeed.stage'"):
        deepspeed_config(cfg["trainer"], {**cfg["deepspeed"], "stage": 3})
    with pytest.raises(ValueError, match="bf16-mixed"):
        deepspeed_config({**cfg["trainer"], "precision": "16-mixed"}, cfg["deepspeed"])
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the deepspeed package"):
            build_strategy(cfg["trainer"], cfg["deepspeed"])
    else:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        assert isinstance(build_strategy(cfg["trainer"], cfg["deepspeed"]), DeepSpeedStrategy)

"""The checkpoint folder Lightning's DeepSpeedStrategy saves as last.ckpt: resume, export and test take it, each
of its files read safely. DeepSpeed needs CUDA and is not installed here: the folder is built as its engine
writes it under ZeRO-2 with bf16 (engine._save_checkpoint, _save_zero_checkpoint, stage_1_and_2.state_dict), its
own data classes under the names its files give them."""

import contextlib
import dataclasses
import enum
import json
import shutil
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from osum_core.checkpoints.loading import load_checkpoint
from osum_core.checkpoints.run_dir import find_run_checkpoint, resume_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict
from osum_core.cli.main import main
from osum_core.cli.resume import resumed_run
from osum_core.model.safe_load import UnsafeCheckpoint


class LossScaler:
    __module__ = "deepspeed.runtime.fp16.loss_scaler"

    def __init__(self, scale=1.0):
        self.cur_scale = scale
        self.dynamic = False


class ZeroStageEnum(int, enum.Enum):
    __module__ = "deepspeed.runtime.zero.config"
    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3


@dataclasses.dataclass
class fragment_address:  # noqa: N801 (DeepSpeed's name)
    __module__ = "deepspeed.utils.tensor_fragment"
    numel: int
    start: int


class RunsCode:
    """What a malicious file holds: unpickling it calls a function (a harmless one here)."""

    def __reduce__(self):
        import os

        return os.getcwd, ()


@contextlib.contextmanager
def deepspeed_modules():
    """DeepSpeed's modules, holding the classes above, while torch.save writes them (it names them as DeepSpeed
    does); removed afterwards, so nothing else takes DeepSpeed for installed."""
    with pytest.MonkeyPatch.context() as patch:
        for cls in (LossScaler, ZeroStageEnum, fragment_address):
            parts = cls.__module__.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    patch.setitem(sys.modules, name, types.ModuleType(name))
            patch.setattr(sys.modules[cls.__module__], cls.__name__, cls, raising=False)
        yield


DS_CONFIG = {"zero_allow_untested_optimizer": True, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
             "gradient_accumulation_steps": 1, "train_micro_batch_size_per_gpu": 1, "gradient_clipping": 0.0}


def write_deepspeed_folder(checkpoint: dict, folder: Path, prefix: str = "", extra_optimizer_state=None) -> Path:
    """Lightning's `checkpoint` as DeepSpeed's engine saves it (one data-parallel rank, bf16): the weights in
    the model-states file's "module", Lightning's other keys beside DeepSpeed's, the fp32 master weights and
    AdamW moments in the rank's optimiser file."""
    tag = folder / "checkpoint"
    tag.mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    (folder / "zero_to_fp32.py").write_text("# DeepSpeed's conversion script\n")
    module = OrderedDict((prefix + key, value.to(torch.bfloat16) if value.is_floating_point() else value)
                         for key, value in checkpoint["state_dict"].items())
    client = {key: value for key, value in checkpoint.items() if key not in ("state_dict", "optimizer_states")}
    torch.save({
        "module": module, "buffer_names": [], "optimizer": None,
        "param_shapes": [OrderedDict((key, value.shape) for key, value in module.items())],
        "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None, "lr_scheduler": None,
        "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(), "skipped_steps": 0,
        "global_steps": checkpoint["global_step"], "global_samples": 8 * checkpoint["global_step"],
        "dp_world_size": 1, "mp_world_size": 1, "ds_config": DS_CONFIG, "ds_version": "0.16.0", **client,
    }, tag / "mp_rank_00_model_states.pt")
    master = torch.cat([value.float().reshape(-1) for value in checkpoint["state_dict"].values()])
    starts = torch.tensor([0] + [value.numel() for value in module.values()]).cumsum(0).tolist()
    optimizer = {
        "loss_scaler": LossScaler(1.0), "dynamic_loss_scale": False, "overflow": False, "clip_grad": 0.0,
        "base_optimizer_state": {
            "state": {0: {"step": torch.tensor(float(checkpoint["global_step"])), "exp_avg": torch.zeros_like(master),
                          "exp_avg_sq": torch.zeros_like(master)}},
            "param_groups": [{"lr": 3e-3, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.01, "amsgrad": False,
                              "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                              "fused": None, "params": [0]}],
        },
        "single_partition_of_fp32_groups": [master], "zero_stage": ZeroStageEnum.gradients, "group_paddings": [0],
        "partition_count": [1], "ds_version": "0.16.0",
        "param_slice_mappings": [OrderedDict((key, fragment_address(value.numel(), start))
                                             for (key, value), start in zip(module.items(), starts, strict=False))],
        **(extra_optimizer_state or {}),
    }
    with deepspeed_modules():
        torch.save({"optimizer_state_dict": optimizer, "ds_config": DS_CONFIG, "ds_version": "0.16.0"},
                   tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return folder


def deepspeed_run(run_dir: Path, tmp_path: Path, **options) -> Path:
    """A copy of the session's run whose last.ckpt is DeepSpeed's folder."""
    run = tmp_path / "ds_run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("*.ckpt"))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    write_deepspeed_folder(checkpoint, run / "checkpoints" / "last.ckpt", **options)
    return run


def bf16_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The run's weights as the engine trains them under bf16, back in the model's dtype."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {key.removeprefix("model."): value.to(torch.bfloat16).to(value.dtype) if value.is_floating_point() else value
            for key, value in state.items()}


@pytest.mark.parametrize("prefix", ["", "_forward_module."])  # Lightning >= 2.1, and < 2.1 (a wrapper module)
def test_test_and_export_read_the_weights_of_a_deepspeed_folder(run_dir, tmp_path, prefix):
    run = deepspeed_run(run_dir, tmp_path, prefix=prefix)
    folder = run / "checkpoints" / "last.ckpt"
    expected = bf16_weights(run_dir)
    for path in (run, folder):  # `osum test --ckpt RUN` and `--ckpt RUN/checkpoints/last.ckpt`
        loaded = load_checkpoint(path)
        assert loaded.source == str(folder) and len(loaded.checksum) == 64
        state = loaded.model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[key], value) for key, value in expected.items())
    out = tmp_path / "export"
    assert main(["export", "--ckpt", str(run), "--out", str(out)]) == 0
    assert json.loads((out / "export.json").read_text())["source"] == str(folder)
    exported = canonical_state_dict(load_checkpoint(out).model)
    assert all(torch.equal(exported[key], value) for key, value in canonical_state_dict(load_checkpoint(run).model).items())


def test_resume_takes_a_deepspeed_folder_after_checking_each_file(run_dir, tmp_path):
    run = deepspeed_run(run_dir, tmp_path)
    folder = run / "checkpoints" / "last.ckpt"
    assert resume_checkpoint(str(run)) == resume_checkpoint(str(folder)) == str(folder)  # Lightning's ckpt_path
    assert resumed_run(str(run)) == resumed_run(str(folder)) == run
    assert find_run_checkpoint(run) == (run, folder)


@pytest.mark.parametrize("file", ["mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_deepspeed_file_that_would_run_code_is_refused_naming_it(run_dir, tmp_path, file):
    run = deepspeed_run(run_dir, tmp_path)
    path = run / "checkpoints" / "last.ckpt" / "checkpoint" / file
    with deepspeed_modules():
        contents = torch.load(path, weights_only=False)  # the test's own file
        contents["extra"] = RunsCode()
        torch.save(contents, path)
    with pytest.raises(UnsafeCheckpoint, match=f"{path}: not a safe DeepSpeed checkpoint file.*getcwd"):
        resume_checkpoint(str(run))
    if file.startswith("mp_rank"):
        with pytest.raises(UnsafeCheckpoint, match=str(path)):
            load_checkpoint(run)


def test_a_latest_file_naming_a_folder_elsewhere_is_refused(run_dir, tmp_path, capsys):
    run = deepspeed_run(run_dir, tmp_path)
    latest = run / "checkpoints" / "last.ckpt" / "latest"
    latest.write_text("../../elsewhere\n")
    with pytest.raises(ValueError, match=f"{latest}: not a DeepSpeed tag"):
        resume_checkpoint(str(run))
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "export")]) == 2
    assert f"osum: error: {latest}: not a DeepSpeed tag" in capsys.readouterr().err


def test_a_zero3_folder_is_named_for_export(run_dir, tmp_path, capsys):
    run = deepspeed_run(run_dir, tmp_path)
    tag = run / "checkpoints" / "last.ckpt" / "checkpoint"
    (tag / "mp_rank_00_model_states.pt").rename(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "export")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "a DeepSpeed ZeRO-3 checkpoint" in error and str(run) in error

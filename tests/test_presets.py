"""Model presets and training stages: valid configs, OSUM's recipe, `extends:`."""

import os
from pathlib import Path

import pytest

from osum_core.config import CONFIG_DIR, ConfigError, load_config


@pytest.mark.parametrize("preset", ["osum-7b", "osum-7b-instruct", "small-0.5b", "small-1.5b"])
@pytest.mark.parametrize("stage", ["adapter", "adapter-encoder", "adapter-encoder-lora"])
def test_presets_and_stages_are_valid_configs(preset, stage):
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config("fit", [root / "presets" / f"{preset}.yaml", root / "stages" / f"{stage}.yaml"])
    assert cfg["model"]["adapter"]["conv_strides"] == [1, 2, 2]  # inherited from osum-7b by every preset
    assert cfg["optim"]["schedule"] == "inverse_sqrt" and cfg["trainer"]["gradient_clip_val"] == 5.0
    assert cfg["model"]["llm"]["lora"]["enabled"] == (stage == "adapter-encoder-lora")
    assert ("encoder" in cfg["model"]["train"]) == (stage != "adapter")


def test_osum_7b_preset_is_osums_recipe():
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config("fit", [root / "presets" / "osum-7b.yaml"])
    model, optim = cfg["model"], cfg["optim"]
    assert model["llm"]["path"] == "Qwen/Qwen2-7B" and model["encoder"]["path"] == "openai/whisper-medium"
    assert model["llm"]["lora"] == {"enabled": True, "rank": 8, "alpha": 32, "dropout": 0.1,
                                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]}
    assert (model["adapter"]["layers"], model["adapter"]["ffn_size"]) == (4, 2560)
    assert (optim["lr"], optim["warmup_steps"], optim["betas"]) == (5e-5, 8000, [0.9, 0.99])
    assert cfg["trainer"]["accumulate_grad_batches"] == 4 and model["llm"]["dtype"] == "bfloat16"


def extends(file: Path, base: Path) -> None:
    """`file` says ``extends: <base>``, spelt relative to configs/presets/ as `extends:` reads it."""
    file.write_text(f"extends: {os.path.relpath(base.with_suffix(''), CONFIG_DIR / 'presets')}\nseed: 7\n")


def test_a_user_file_extends_a_preset_that_extends_another(tmp_path):
    mine = tmp_path / "mine.yaml"
    extends(mine, CONFIG_DIR / "presets" / "small-0.5b.yaml")  # itself extends osum-7b
    cfg = load_config("fit", [mine])
    assert cfg["seed"] == 7  # its own
    assert cfg["model"]["llm"]["path"] == "Qwen/Qwen2.5-0.5B"  # its base's
    assert cfg["optim"]["betas"] == [0.9, 0.99]  # osum-7b's, two bases down (fit.yaml's are [0.9, 0.98])


@pytest.mark.parametrize("length", [1, 2, 3])
def test_extends_that_goes_round_in_a_circle_is_an_error(tmp_path, length):
    files = [tmp_path / f"loop{n}.yaml" for n in range(length)]
    for n, file in enumerate(files):  # loop0 extends loop1 ... extends loop0 (itself, for one file)
        extends(file, files[(n + 1) % length])
    assert all(file.is_file() for file in files)
    with pytest.raises(ConfigError, match=r"loop0\.yaml: 'extends' goes round in a circle$"):
        load_config("fit", [files[0]])

"""bench/gpu_check.py: its model-FLOPs formula against torch's FLOP counter on tiny models, and its smoke run
(every part of the GPU check, on CPU at tiny sizes) writing one JSON that holds every part."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import PARTS, Example, make_batch, model_flops, shapes_of  # noqa: E402

from osum_core.config import load_config  # noqa: E402
from osum_core.model.build import build_speech_llm  # noqa: E402
from osum_core.model.freezing import set_trainable  # noqa: E402

VOCAB = 300


def tiny_model(train: list[str], lora: bool):
    """OSUM's layout in miniature, eager attention (whose matmuls the counter sees), no padding computed."""
    cfg = load_config("fit")["model"]
    cfg["encoder"]["config"] = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                                    num_mel_bins=80, max_source_positions=1500, dropout=0.0, attn_implementation="eager")
    cfg["adapter"].update(layers=1, heads=4, ffn_size=48, dropout=0.0)
    cfg["llm"].update(attention="eager", config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=4, num_key_value_heads=2,
                                                     tie_word_embeddings=False))
    cfg["llm"]["lora"].update(enabled=lora, rank=4, dropout=0.0)
    cfg.update(packed=False, train=train)
    torch.manual_seed(0)
    model = build_speech_llm(cfg, VOCAB, eos_token_id=0, pad_token_id=1)
    set_trainable(model, train)
    return model.train()


@pytest.mark.parametrize("train, lora", [
    (["encoder", "adapter", "speech_markers", "llm"], False),  # everything trained (mfu_qwen05b's case)
    (["encoder", "adapter", "speech_markers", "lora"], True),  # osum-7b's adapter-encoder-lora stage
    (["adapter", "speech_markers"], False),  # frozen encoder (no backward) and frozen LLM (input gradients only)
])
def test_the_flop_formula_agrees_with_torchs_flop_counter(train, lora):
    model = tiny_model(train, lora)
    examples = [Example(frames=320, prompt_tokens=6, target_tokens=5)] * 3  # equal lengths: no padded rows
    batch = make_batch(examples, 80, VOCAB, "cpu")
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:  # the adapter's attention as matmuls, which the counter counts
        out = model(**batch)
        (out["token_loss"].sum() / out["token_count"].sum()).backward()
    flops = model_flops(shapes_of(model), examples, train)
    assert flops["total"] == pytest.approx(counter.get_total_flops(), rel=0.10)
    assert flops["total"] == flops["forward"] + flops["backward"]
    if "encoder" not in train:
        assert flops["parts"]["encoder"]["backward"] == 0
    if "llm" not in train:
        assert flops["parts"]["llm"]["weight_gradients"] == 0 < flops["parts"]["llm"]["input_gradients"]


def check_smoke_result(data: dict) -> None:
    """Every part is in the file, with its figures or an error string; on a CPU all but DeepSpeed run."""
    assert set(data["parts"]) == set(PARTS) and data["complete"] and data["smoke"]
    assert "2·h·V·Y" in data["flop_formula"]
    for name, entry in data["parts"].items():
        assert entry["ok"] or (isinstance(entry["error"], str) and entry["error"]), name
    parts = data["parts"]
    for name in ("mfu_qwen05b", "mfu_osum7b_lora", "vs_qwen2_audio", "fit_ddp"):
        assert parts[name]["ok"], (name, parts[name].get("error"), parts[name].get("log_tail"))
    for name in ("mfu_qwen05b", "mfu_osum7b_lora"):
        entry = parts[name]
        assert entry["mfu"] > 0 and entry["median_step_seconds"] > 0 and entry["peak_memory_gib"] > 0
        assert entry["model_flops"]["total"] > 0 and entry["batch"]["frames"] <= entry["budget"]["max_frames"]
        assert 0.5 < entry["formula_over_counted"] < 1.5  # packed rows, padded adapter rows and slots differ a little
    assert parts["mfu_osum7b_lora"]["gradient_checkpointing"] and not parts["mfu_qwen05b"]["gradient_checkpointing"]
    assert parts["vs_qwen2_audio"]["train_short_ratio"] > 0 and parts["vs_qwen2_audio"]["generate_ratio"] > 0
    fit = parts["fit_ddp"]
    assert fit["fit"]["steps_reached"] == fit["steps"][0] and fit["resume"]["steps_reached"] == fit["steps"][1]
    assert fit["every_step_once"] and fit["fit"]["checkpoint"]
    assert parts["fit_deepspeed"]["ok"] or parts["fit_deepspeed"]["error"].startswith(("not installed", "not run"))


@pytest.mark.slow
def test_the_smoke_run_writes_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/gpu_check.sh", str(out), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert out.is_file(), result.stdout + result.stderr
    data = json.loads(out.read_text())
    check_smoke_result(data)
    # One summary line per part, then the total.
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == [*PARTS, "gpu_check"]

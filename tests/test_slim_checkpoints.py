"""last.ckpt without the frozen parts read from a source: what it keeps, resume, export and test from it, a
resume against other frozen weights refused, and checkpoints of an older osum (every weight) still loading."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, data_args
from test_backbone import QWEN, model_cfg
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from osum_core.checkpoints.frozen_parts import CheckpointMismatch, FrozenWeightsDiffer, frozen_record
from osum_core.checkpoints.loading import load_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict
from osum_core.cli.main import main
from osum_core.model.build import build_speech_llm
from osum_core.model.freezing import set_trainable

FROZEN_LLM = ["trainer.max_steps=4", "trainer.val_check_interval=4", "model.train=[adapter,speech_markers,ctc_head]"]


@pytest.fixture(scope="module")
def sourced_run(exported, tiny_corpus, tmp_path_factory):
    """A run whose LLM is read from a saved model (the export's llm/) and stays frozen; its encoder, built at
    random and frozen too, has no source."""
    run = tmp_path_factory.mktemp("slim") / "run"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY, *FROZEN_LLM,
                 f"model.llm.path={exported / 'llm'}", f"model.llm.tokenizer={exported / 'tokenizer'}"]) == 0
    return run


def last(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_last_ckpt_leaves_out_the_frozen_llm_read_from_its_source(sourced_run, exported):
    checkpoint = last(sourced_run)
    saved = {key.removeprefix("model.") for key in checkpoint["state_dict"]}
    model = load_checkpoint(sourced_run).model.state_dict()
    assert saved == {key for key in model if not key.startswith("llm.")}  # the random frozen encoder stays
    record = checkpoint["frozen_parts"]
    assert list(record) == ["llm"] and record["llm"]["source"] == str(exported / "llm")
    assert sorted(record["llm"]["keys"]) == sorted(key for key in model if key.startswith("llm."))
    assert {"llm.lm_head.weight", "llm.model.embed_tokens.weight"} <= set(record["llm"]["keys"])  # tied: both
    assert len(record["llm"]["sha256"]) == 64


def test_export_and_test_read_the_frozen_llm_from_its_source(sourced_run, exported, tmp_path):
    loaded = load_checkpoint(sourced_run)  # what `osum test --ckpt RUN` loads
    source = AutoModelForCausalLM.from_pretrained(exported / "llm").state_dict()
    ours = canonical_state_dict(loaded.model)
    assert all(torch.equal(ours[f"llm.{key}"], tensor) for key, tensor in source.items())
    for key, tensor in last(sourced_run)["state_dict"].items():
        assert torch.equal(ours[key.removeprefix("model.")], tensor), key

    out = tmp_path / "export"
    assert main(["export", "--ckpt", str(sourced_run), "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["llm"] == f"model.llm.path ({exported / 'llm'})" and info["lora"] == "none"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "osum.yaml", "speech.safetensors", "tokenizer"]
    exported_again = canonical_state_dict(load_checkpoint(out).model)
    assert all(torch.equal(exported_again[key], tensor) for key, tensor in ours.items())


def test_a_slim_checkpoint_resumes(sourced_run, tiny_corpus, tmp_path):
    run = copy_of(sourced_run, tmp_path)
    assert main(["fit", "--resume", str(run), "trainer.max_steps=6"]) == 0
    before, after = last(sourced_run), last(run)
    assert after["global_step"] == 6 and after["frozen_parts"] == before["frozen_parts"]
    assert not [key for key in after["state_dict"] if key.startswith("model.llm.")]


def other_llm(exported, tmp_path):
    """The export's LLM with one weight changed, saved as transformers saves a model."""
    llm = AutoModelForCausalLM.from_pretrained(exported / "llm")
    with torch.no_grad():
        llm.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    llm.save_pretrained(tmp_path / "other_llm")
    return tmp_path / "other_llm"


def test_a_resume_against_other_frozen_weights_is_refused_naming_the_part(sourced_run, exported, tmp_path, capsys):
    run = copy_of(sourced_run, tmp_path)
    other = other_llm(exported, tmp_path)
    assert main(["fit", "--resume", str(run), "trainer.max_steps=6", f"model.llm.path={other}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.llm: the frozen weights differ from those the checkpoint was trained on" in error
    assert f"model.llm.path={other}" in error and str(run / "checkpoints" / "last.ckpt") in error
    assert last(run)["global_step"] == 4  # nothing trained
    with pytest.raises(FrozenWeightsDiffer, match=r"last\.ckpt: model\.llm: the frozen weights differ"):
        load_checkpoint(run, [f"model.llm.path={other}"])  # osum export / osum test


def test_frozen_weights_copied_by_init_are_rebuilt_from_it(exported, tiny_corpus, tmp_path):
    # --init copies the export's LLM (its llm/) over what model.llm.path loads; export and test do the same.
    other = other_llm(exported, tmp_path)
    run = tmp_path / "from_init"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), "--init", str(exported), *data_args(tiny_corpus),
                 *TINY, *FROZEN_LLM, f"model.llm.path={other}"]) == 0
    assert list(last(run)["frozen_parts"]) == ["llm"]
    ours = canonical_state_dict(load_checkpoint(run).model)
    source = AutoModelForCausalLM.from_pretrained(exported / "llm").state_dict()
    assert all(torch.equal(ours[f"llm.{key}"], tensor) for key, tensor in source.items())


def test_a_checkpoint_of_an_older_osum_with_every_weight_still_loads_and_resumes(sourced_run, tmp_path):
    run = copy_of(sourced_run, tmp_path)
    checkpoint = last(run)
    model = load_checkpoint(run).model
    checkpoint["state_dict"] = {f"model.{key}": tensor for key, tensor in model.state_dict().items()}
    del checkpoint["frozen_parts"]
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    reloaded = canonical_state_dict(load_checkpoint(run).model)
    assert all(torch.equal(reloaded[key], tensor) for key, tensor in canonical_state_dict(model).items())
    assert main(["fit", "--resume", str(run), "trainer.max_steps=5"]) == 0
    assert last(run)["global_step"] == 5 and "frozen_parts" in last(run)


def test_a_checkpoint_lacking_a_trained_tensor_is_refused_naming_the_file(sourced_run, tmp_path, capsys):
    # Lightning loads without strict checking now (the frozen parts come from their source): osum checks.
    run = copy_of(sourced_run, tmp_path)
    checkpoint = last(run)
    del checkpoint["state_dict"]["model.speech_markers"]
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"last\.ckpt: does not fit the model: it lacks 1 .*speech_markers"):
        load_checkpoint(run)
    assert main(["fit", "--resume", str(run), "trainer.max_steps=6"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{run / 'checkpoints' / 'last.ckpt'}: does not fit the model: it lacks 1" in error


# -- which parts a checkpoint leaves out, on models built as osum builds them ------------------------------
@pytest.fixture(scope="module")
def saved_qwen(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "qwen2"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**{**QWEN, "tie_word_embeddings": True})).save_pretrained(path)
    return path


def built(qwen_path, train, lora=False):
    model = build_speech_llm(model_cfg(qwen_path=qwen_path and str(qwen_path), lora=lora), 64, 1, 0)
    set_trainable(model, train)
    return model


def test_only_frozen_parameters_of_a_part_with_a_source_are_left_out(saved_qwen):
    model = built(saved_qwen, ["adapter", "lora"], lora=True)
    record = frozen_record(model)
    assert list(record) == ["llm"] and record["llm"]["source"] == str(saved_qwen)  # the random encoder is kept
    base = [name for name, _ in model.llm.named_parameters(remove_duplicate=False) if "lora_" not in name]
    assert sorted(record["llm"]["keys"]) == sorted(f"llm.{name}" for name in base)  # LoRA factors are kept
    assert frozen_record(built(saved_qwen, ["adapter", "llm"])) == {}  # a trained LLM is kept
    assert frozen_record(built(None, ["adapter"])) == {}  # a frozen LLM built at random is kept


def test_the_fingerprint_follows_the_frozen_weights_not_the_lora_wrapper(saved_qwen):
    plain = frozen_record(built(saved_qwen, ["adapter"]))["llm"]["sha256"]
    assert frozen_record(built(saved_qwen, ["adapter", "lora"], lora=True))["llm"]["sha256"] == plain
    changed = built(saved_qwen, ["adapter"])
    with torch.no_grad():
        changed.llm.model.norm.weight[0] += 1e-3
    assert frozen_record(changed)["llm"]["sha256"] != plain


@pytest.mark.slow
def test_fsdp2_saves_and_resumes_a_slim_checkpoint(exported, tiny_corpus, tmp_path):
    # Rank 0 leaves the frozen LLM out of the gathered state dict; the fingerprints are taken before the
    # model is sharded, and the strategy loads the rest without the LLM's keys.
    from test_distributed import fit

    run = tmp_path / "fsdp2"
    extra = ["--strategy", "fsdp2", "trainer.devices=2", "data.num_workers=1", "model.train=[adapter,speech_markers,ctc_head]",
             f"model.llm.path={exported / 'llm'}", f"model.llm.tokenizer={exported / 'tokenizer'}"]
    fit(run, tiny_corpus, "trainer.max_steps=2", *extra)
    first = last(run)
    assert list(first["frozen_parts"]) == ["llm"] and not [k for k in first["state_dict"] if k.startswith("model.llm.")]
    fit(run, tiny_corpus, "trainer.max_steps=3", *extra, "--resume", str(run))
    second = last(run)
    assert second["global_step"] == 3 and second["frozen_parts"] == first["frozen_parts"]
    assert any(not torch.equal(second["state_dict"][k], v) for k, v in first["state_dict"].items() if "adapter" in k)


def test_the_checkpoint_size_readme_states_is_what_a_run_saves(sourced_run):
    # bench/memory_budget.py computes README's checkpoint table with this formula, from the model alone.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from memory_budget import GIB, checkpoint_sizes

    loaded = load_checkpoint(sourced_run)
    set_trainable(loaded.model, loaded.config["model"]["train"])
    sizes = checkpoint_sizes(loaded.model, loaded.config["model"])
    saved = (sourced_run / "checkpoints" / "last.ckpt").stat().st_size
    print(f"last.ckpt {saved} bytes; computed now {sizes['now'] * GIB:.0f}, before {sizes['before'] * GIB:.0f}")
    assert abs(saved - sizes["now"] * GIB) < 0.05 * saved  # the rest: loops, callbacks, random generators
    assert sizes["before"] > 1.5 * sizes["now"]

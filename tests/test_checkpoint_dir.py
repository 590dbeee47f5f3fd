"""`osum export`, the checkpoint directory, `--init` and LoRA export/merge, on one tiny `osum fit` run."""

import json

import torch
import yaml
from conftest import TINY, data_args
from safetensors.torch import load_file

from osum_core.checkpoints.directory import init_from_checkpoint
from osum_core.checkpoints.loading import load_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict
from osum_core.cli.main import main
from osum_core.config import load_config
from osum_core.inference.predict import Request, predict
from osum_core.model.build import build_speech_llm
from osum_core.model.speech_llm import GenerationSettings


def generation(**changes) -> GenerationSettings:
    """The configured decoding settings (configs/fit.yaml), with `changes`."""
    return GenerationSettings(**{**load_config()["eval"]["generation"], **changes})


def test_export_writes_a_self_contained_directory(exported, run_dir):
    info = json.loads((exported / "export.json").read_text())
    assert info["tasks"] == ["asr", "ved"] and info["llm"] == "llm/" and info["lora"] == "none"
    assert len(info["sha256"]) == 64
    config = yaml.safe_load((exported / "osum.yaml").read_text())
    assert config["model"]["encoder"]["path"] is None  # rebuilt from its config + speech.safetensors
    assert config["model"]["encoder"]["config"]["encoder_layers"] == 1
    speech = load_file(str(exported / "speech.safetensors"))
    assert "speech_markers" in speech and not any(k.startswith("llm.") for k in speech)
    assert (exported / "llm" / "model.safetensors").is_file() and (exported / "tokenizer").is_dir()

    from_run, from_export = load_checkpoint(run_dir), load_checkpoint(exported)
    a, b = canonical_state_dict(from_run.model), canonical_state_dict(from_export.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_starts_a_lora_stage_from_an_export_without_lora(exported):
    cfg = load_config("fit", [exported / "osum.yaml"], [
        f"model.llm.path={exported / 'llm'}", "model.llm.lora.enabled=true", "model.train=[adapter,lora]",
    ])
    tokenizer_size = len(load_checkpoint(exported).tokenizer)
    model = build_speech_llm(cfg["model"], tokenizer_size, 1, 0)
    loaded = init_from_checkpoint(model, exported)
    assert loaded["missing"] and all(".lora_" in key for key in loaded["missing"])
    ours, theirs = canonical_state_dict(model), canonical_state_dict(load_checkpoint(exported).model)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_fit_init_continues_from_an_export_with_its_tokenizer(exported, tiny_corpus, tmp_path):
    run = tmp_path / "stage2"
    args = ["fit", "--tasks", "asr", "--init", str(exported), "--out", str(run), *data_args(tiny_corpus), *TINY,
            "trainer.max_steps=2", "trainer.val_check_interval=2", "model.train=[adapter,speech_markers]"]
    assert main(args) == 0
    assert (run / "tokenizer" / "tokenizer.json").read_text() == (exported / "tokenizer" / "tokenizer.json").read_text()
    stage2 = load_checkpoint(run)
    first = canonical_state_dict(load_checkpoint(exported).model)
    second = canonical_state_dict(stage2.model)
    # Frozen parts are exactly the exported ones; the adapter moved on from them.
    assert torch.equal(first["encoder.whisper.conv1.weight"], second["encoder.whisper.conv1.weight"])
    assert torch.equal(first["llm.model.embed_tokens.weight"], second["llm.model.embed_tokens.weight"])
    assert not torch.equal(first["adapter.projection.weight"], second["adapter.projection.weight"])


def test_init_names_a_directory_that_is_not_a_checkpoint(tmp_path, tiny_corpus, capsys):
    assert main(["fit", "--tasks", "asr", "--init", str(tmp_path), "--out", str(tmp_path / "r"),
                 *data_args(tiny_corpus), *TINY]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def lora_backbone(exported):
    cfg = load_config("fit", [exported / "osum.yaml"], [
        f"model.llm.path={exported / 'llm'}", "model.llm.lora.enabled=true", "model.train=[adapter,lora]",
    ])
    loaded = load_checkpoint(exported)
    model = build_speech_llm(cfg["model"], len(loaded.tokenizer), loaded.tokenizer.eos_token_id,
                             loaded.tokenizer.pad_token_id)
    init_from_checkpoint(model, exported)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # LoRA B starts at zero; give it weights so that merging matters
            torch.nn.init.normal_(parameter, std=0.05)
    return model.eval(), loaded.tokenizer, cfg


def test_lora_exports_through_peft_and_merged_gives_the_same_answers(exported, tiny_corpus, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from osum_core.checkpoints.directory import save_checkpoint_dir

    model, tokenizer, cfg = lora_backbone(exported)
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()][:6]
    requests = [Request(x["key"], str(tiny_corpus / x["wav"]), None, "Transcribe the audio.") for x in lines]
    settings = generation(max_new_tokens=6)
    before = [a.text for a in predict(model, tokenizer, requests, settings, n_mels=80, batch_size=3)]

    separate = tmp_path / "separate"
    info = save_checkpoint_dir(model, tokenizer, cfg, ["asr"], separate, source="test", copy_llm=True)
    assert info["lora"] == "lora/" and (separate / "lora" / "adapter_config.json").is_file()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(separate / "llm"), separate / "lora")
    assert sum("lora_A" in n for n, _ in peft_model.named_parameters()) > 0
    reloaded = load_checkpoint(separate)
    assert [a.text for a in predict(reloaded.model, tokenizer, requests, settings, n_mels=80, batch_size=3)] == before

    merged = tmp_path / "merged"
    info = save_checkpoint_dir(model, tokenizer, cfg, ["asr"], merged, source="test", merge_lora=True)
    assert info["lora"] == "merged into llm/" and not (merged / "lora").exists()
    assert yaml.safe_load((merged / "osum.yaml").read_text())["model"]["llm"]["lora"]["enabled"] is False
    reloaded = load_checkpoint(merged)
    assert [a.text for a in predict(reloaded.model, tokenizer, requests, settings, n_mels=80, batch_size=3)] == before

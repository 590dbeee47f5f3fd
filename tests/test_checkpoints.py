"""Checkpoints in and out, and inference from them: `osum export`, `osum test`, `osum predict`, `--init`,
presets and stages. One tiny run trained with `osum fit` is shared by the tests of this module."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import load_file

from osum_core.config import fit_config, load_config
from osum_core.cli.main import main
from osum_core.inference.predict import Request, predict
from osum_core.model.build import build_speech_llm
from osum_core.model.speech_llm import GenerationSettings
from osum_core.task.normalize import normalize_transcript, transcript_normalizer
from osum_core.checkpoints.directory import init_from_checkpoint, load_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict


def generation(**changes) -> GenerationSettings:
    """The configured decoding settings (configs/fit.yaml), with `changes`."""
    return GenerationSettings(**{**load_config()["eval"]["generation"], **changes})

TINY = [
    "trainer.max_steps=8",
    "trainer.val_check_interval=8",
    "trainer.enable_progress_bar=false",
    "trainer.max_time=null",
    "data.num_workers=0",
    "eval.generation.max_new_tokens=6",
    "model.encoder.config.encoder_layers=1",
    "model.llm.config.num_hidden_layers=1",
    "loss.ce_start_step=0",
    "optim.lr=3e-3",
]


def data_args(corpus: Path) -> list[str]:
    return [f"data.{k}={corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_corpus) -> Path:
    run = tmp_path_factory.mktemp("run") / "asr_ved"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "demo"
    assert main(["export", "--ckpt", str(run_dir), "--out", str(out)]) == 0
    return out


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


def test_osum_test_reproduces_the_runs_test_metrics_and_writes_a_report(exported, run_dir, tiny_corpus, tmp_path):
    out = tmp_path / "report"
    args = ["test", "--ckpt", str(exported), "--tasks", "asr,ved", "--out", str(out), "--batch-size", "5",
            f"data.test={tiny_corpus / 'test.jsonl'}"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Same prompts, same greedy decoding, same metrics as the Lightning test at the end of `osum fit`.
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["checkpoint_sha256"] == json.loads((exported / "export.json").read_text())["sha256"]
    assert report["settings"]["normalizer"] == "basic" and report["settings"]["generation"]["num_beams"] == 1
    assert report["prompts"]["asr"] and report["decoding"]["utterances"] == 12
    markdown = (out / "report.md").read_text()
    assert "## Worst examples" in markdown and report["prompts"]["ved"] in markdown
    assert (out / "confusion" / "ved.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("wer" in r for r in rows)
    assert all(isinstance(r["correct"], bool) for r in rows if r["task"] == "ved")


def test_osum_test_reads_a_run_directory_too(run_dir, tiny_corpus, tmp_path):
    out = tmp_path / "report"
    assert main(["test", "--ckpt", str(run_dir), "--tasks", "asr", "--out", str(out),
                 f"data.test={tiny_corpus / 'test.jsonl'}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["asr"] == json.loads((run_dir / "metrics.json").read_text())["asr"]


def stereo_44k(source: Path, out: Path) -> Path:
    import torchaudio

    wave, rate = soundfile.read(source, dtype="float32")
    resampled = torchaudio.functional.resample(torch.from_numpy(wave), rate, 44100).numpy()
    soundfile.write(out, np.stack([resampled, resampled], axis=1), 44100, format="FLAC")
    return out


def test_predict_cli_writes_json_lines_in_input_order(exported, tiny_corpus, tmp_path):
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    files = [str(tiny_corpus / line["wav"]) for line in lines if line["task"] == "<TRANSCRIBE> <CAPTION>"][:4]
    files.append(str(stereo_44k(Path(files[0]), tmp_path / "stereo.flac")))
    batched, single = tmp_path / "batched.jsonl", tmp_path / "single.jsonl"
    assert main(["predict", "--ckpt", str(exported), "--task", "ved", "--batch-size", "5", "--output", str(batched), *files]) == 0
    assert main(["predict", "--ckpt", str(exported), "--task", "ved", "--batch-size", "1", "--output", str(single), *files]) == 0
    rows = [json.loads(line) for line in batched.read_text().splitlines()]
    assert [r["file"] for r in rows] == files
    assert all(r["task"] == "ved" and "transcript" in r and r["prompt"] for r in rows)
    # A padded batch of mixed lengths answers exactly as one utterance at a time.
    assert [r["text"] for r in rows] == [json.loads(line)["text"] for line in single.read_text().splitlines()]
    assert rows[-1]["duration"] == pytest.approx(rows[0]["duration"], abs=1e-3)


def test_predict_takes_a_free_form_prompt_and_reports_the_real_time_factor(exported, tiny_corpus):
    wav = next(str(tiny_corpus / json.loads(line)["wav"]) for line in (tiny_corpus / "test.jsonl").read_text().splitlines())
    result = subprocess.run(
        [sys.executable, "-m", "osum_core.cli.main", "predict", "--ckpt", str(exported), "--prompt", "What is said?", wav],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["task"] is None and row["prompt"] == "What is said?" and "text" in row and "label" not in row
    assert "real-time factor" in result.stderr


def test_predict_without_task_or_prompt_is_a_clear_error(exported, capsys):
    assert main(["predict", "--ckpt", str(exported), "x.wav"]) == 2
    assert "--task" in capsys.readouterr().err


def test_predict_names_a_missing_audio_file(exported, capsys):
    assert main(["predict", "--ckpt", str(exported), "--task", "asr", "/nonexistent/a.wav"]) == 2
    assert "/nonexistent/a.wav" in capsys.readouterr().err


def test_batching_does_not_change_answers_in_the_library_call(exported, tiny_corpus):
    loaded = load_checkpoint(exported)
    lines = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    requests = [Request(l["key"], str(tiny_corpus / l["wav"]), None, "Transcribe the audio.") for l in lines]
    settings = generation(max_new_tokens=6)
    together = predict(loaded.model, loaded.tokenizer, requests, settings, n_mels=80, batch_size=len(requests))
    alone = predict(loaded.model, loaded.tokenizer, requests, settings, n_mels=80, batch_size=1)
    assert [a.text for a in together] == [a.text for a in alone]


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
    requests = [Request(l["key"], str(tiny_corpus / l["wav"]), None, "Transcribe the audio.") for l in lines]
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


def test_a_preset_that_extends_itself_is_an_error(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: ../../" + str(loop.with_suffix("")).lstrip("/") + "\n")
    with pytest.raises(ValueError):
        load_config("fit", [loop])


def test_whisper_english_normaliser_for_english_and_cer_for_chinese():
    assert normalize_transcript("Mr. Smith, twenty-one!") == "mr smith twenty one"
    with transcript_normalizer("whisper_en"):
        assert normalize_transcript("Mr. Smith said: it's twenty-one!") == "mister smith said it is 21"
        assert normalize_transcript("你好，世界") == "你 好 世 界"
    with pytest.raises(ValueError, match="eval.normalizer"):
        with transcript_normalizer("nope"):
            pass


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = fit_config(overrides=[
            f"model.gradient_checkpointing={str(checkpointing).lower()}", "model.encoder.config.dropout=0.0",
        ])["model"]
        model = build_speech_llm(cfg, 50, 1, 0).train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        g = torch.Generator().manual_seed(1)
        out = model(
            features=torch.randn(2, 60, 80, generator=g), feature_lengths=torch.tensor([60, 40]),
            prompt_ids=torch.randint(2, 50, (2, 3), generator=g), prompt_lengths=torch.tensor([3, 2]),
            target_ids=torch.randint(2, 50, (2, 4), generator=g), target_lengths=torch.tensor([4, 3]),
            target_weights=torch.ones(2, 4),
        )
        out["token_loss"].sum().backward()
        grads.append(model.adapter.projection.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_frozen_bf16_encoder_and_llm_around_an_fp32_adapter_run_on_cpu():
    cfg = fit_config(overrides=["model.encoder.dtype=bfloat16", "model.llm.dtype=bfloat16"])["model"]
    model = build_speech_llm(cfg, 50, 1, 0).eval()
    assert model.adapter.projection.weight.dtype == torch.float32
    assert model.encoder.whisper.conv1.weight.dtype == torch.bfloat16
    ids = model.generate(torch.randn(2, 50, 80), torch.tensor([50, 30]), torch.tensor([[3, 4], [5, 0]]),
                         torch.tensor([2, 1]), generation(max_new_tokens=3))
    assert len(ids) == 2


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_puts_prompt_and_speech_in_the_user_turn():
    from osum_core.demo.tokenizer import train_demo_tokenizer
    from osum_core.model.build import build_for_tokenizer, chat_turn_ids

    tokenizer = train_demo_tokenizer(["user assistant transcribe four two"], ["<|im_start|>", "<|im_end|>"], 80)
    tokenizer.chat_template = CHAT_TEMPLATE
    before, after = chat_turn_ids(tokenizer)
    assert tokenizer.decode(before).strip().startswith("<|im_start|>") and "assistant" in tokenizer.decode(after)
    cfg = fit_config(overrides=["model.llm.chat_template=true", "model.ctc_compression=false",
                                                   "model.ctc_embeddings=false", "model.time_embeddings=false"])["model"]
    torch.manual_seed(0)
    model = build_for_tokenizer(cfg, tokenizer).eval()
    features, prompt, target = torch.randn(1, 40, 80), torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10]])
    out = model(features=features, feature_lengths=torch.tensor([40]), prompt_ids=prompt, prompt_lengths=torch.tensor([3]),
                target_ids=target, target_lengths=torch.tensor([3]), target_weights=torch.ones(1, 3))
    # The same sequence laid out by hand: [before][prompt][bos speech eos][after][target].
    with torch.no_grad():
        speech = model.encode_speech(features, torch.tensor([40]))["speech"][0]
        embed = model.embed_tokens
        sequence = torch.cat([embed(torch.tensor(before)), embed(prompt[0]), model.speech_markers[:1], speech,
                              model.speech_markers[1:], embed(torch.tensor(after)), embed(target[0])])
        logits = model.causal_lm(inputs_embeds=sequence[None]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[-4:-1], target[0], reduction="sum")
    torch.testing.assert_close(out["token_loss"][0], expected, rtol=1e-4, atol=1e-4)
    # Batched generation still equals one at a time with the turn markers in place.
    batch = dict(features=torch.randn(2, 50, 80), feature_lengths=torch.tensor([50, 20]),
                 prompt_ids=torch.tensor([[5, 6, 7], [5, 0, 0]]), prompt_lengths=torch.tensor([3, 1]))
    together = model.generate(settings=generation(max_new_tokens=4), **batch)
    alone = model.generate(batch["features"][1:, :20], batch["feature_lengths"][1:], batch["prompt_ids"][1:, :1],
                           batch["prompt_lengths"][1:], generation(max_new_tokens=4))
    assert together[1] == alone[0]


def test_resume_continues_a_run_from_its_last_checkpoint(run_dir, tiny_corpus, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(run_dir, run)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    args = ["fit", "--tasks", "asr,ved", "--resume", str(run), "--out", str(run), *data_args(tiny_corpus), *TINY,
            "trainer.max_steps=12", "trainer.val_check_interval=4"]
    assert main(args) == 0
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (before, after["global_step"]) == (8, 12)
    assert "optimizer_states" in after


def test_resume_names_a_missing_checkpoint(tmp_path, tiny_corpus, capsys):
    assert main(["fit", "--tasks", "asr", "--resume", str(tmp_path), *data_args(tiny_corpus), *TINY]) == 2
    assert "last.ckpt" in capsys.readouterr().err

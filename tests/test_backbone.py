"""The backbone with tiny models built from transformers config classes and saved in the real formats."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperModel

from osum_core.config import load_config
from osum_core.model.adapter import SpeechAdapter
from osum_core.model.build import build_speech_llm
from osum_core.model.encoder import SpeechEncoder
from osum_core.model.freezing import set_trainable
from osum_core.model.speech_llm import GenerationSettings


def generation(**changes) -> GenerationSettings:
    """The configured decoding settings (configs/fit.yaml), with `changes`."""
    return GenerationSettings(**{**load_config()["eval"]["generation"], **changes})

WHISPER = dict(
    d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1,
    decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=100, vocab_size=100,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
)
QWEN = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
    max_position_embeddings=512, vocab_size=64, tie_word_embeddings=False,
)


def model_cfg(whisper_path=None, qwen_path=None, lora=False, strides=(2, 2)):
    return {
        "encoder": {"path": whisper_path, "dtype": "float32", "conv_strides": list(strides), "config": WHISPER},
        "adapter": {"conv_strides": [1, 2], "layers": 1, "heads": 4, "ffn_size": 64, "dropout": 0.0},
        "llm": {
            "path": qwen_path, "model_type": "qwen2", "dtype": "float32", "attention": "sdpa",
            "config": {k: v for k, v in QWEN.items() if k != "vocab_size"},
            "lora": {"enabled": lora, "rank": 4, "alpha": 8, "dropout": 0.0,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]},
        },
        "ctc_head": True,
        "ctc_compression": False,
        "ctc_embeddings": False,
        "ctc_max_run": 0,
        "time_embeddings": False,
        "time_embedding_ends": False,
        "summary_steps": 0,
        "utterance_embedding": False,
        "gradient_checkpointing": False,
        "packed": False,
    }


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**WHISPER)).save_pretrained(root / "whisper")  # safetensors
    Qwen2ForCausalLM(Qwen2Config(**QWEN)).save_pretrained(root / "qwen2")
    return root


def batch_of(lengths, prompt_lengths, target_lengths, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    features = torch.randn(b, max(lengths), 80, generator=g)
    for i, n in enumerate(lengths):
        features[i, n:] = 0
    prompt = torch.randint(2, vocab, (b, max(prompt_lengths)), generator=g)
    target = torch.randint(2, vocab, (b, max(target_lengths)), generator=g)
    return {
        "features": features, "feature_lengths": torch.tensor(lengths),
        "prompt_ids": prompt, "prompt_lengths": torch.tensor(prompt_lengths),
        "target_ids": target, "target_lengths": torch.tensor(target_lengths),
        "target_weights": torch.ones(b, max(target_lengths)) * (torch.arange(max(target_lengths)) < torch.tensor(target_lengths)[:, None]),
        "ctc_ids": target, "ctc_lengths": torch.tensor(target_lengths),
    }


def test_encoder_reuses_hf_whisper_weights_and_matches_hf_on_full_length_input(saved_models):
    encoder = SpeechEncoder.from_pretrained(str(saved_models / "whisper"), conv_strides=(1, 2)).eval()
    reference = WhisperModel.from_pretrained(saved_models / "whisper").get_encoder().eval()
    features = torch.randn(1, 200, 80)  # HF accepts exactly max_source_positions * 2 frames
    ours, lengths = encoder(features, torch.tensor([200]))
    theirs = reference(features.transpose(1, 2)).last_hidden_state
    assert lengths.tolist() == [100]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_encoder_accepts_any_length_and_padding_does_not_change_results(attention):
    encoder = SpeechEncoder(WhisperConfig(**WHISPER, attn_implementation=attention), conv_strides=(1, 2)).eval()
    # SDPA becomes osum's SDPA that also takes packed rows (packing.py); eager stays eager.
    assert encoder.whisper.config._attn_implementation == {"sdpa": "osum_packed"}.get(attention, attention)
    features = torch.randn(3, 150, 80)
    lengths = torch.tensor([150, 61, 9])
    for i, n in enumerate(lengths):
        features[i, n:] = 0
    batched, out_lengths = encoder(features, lengths)
    assert out_lengths.tolist() == [75, 31, 5]
    for i, n in enumerate(lengths):
        alone, _ = encoder(features[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1, : out_lengths[i]], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the encoder's 100 positions"):
        encoder(torch.randn(1, 202, 80), torch.tensor([202]))


def test_adapter_downsamples_causally_like_osum():
    adapter = SpeechAdapter(32, 48, conv_strides=(1, 2, 2), layers=1, heads=4, ffn_size=64, dropout=0.0).eval()
    states = torch.randn(1, 23, 32)
    out, lengths = adapter(states, torch.tensor([23]))
    assert out.shape == (1, 6, 48) and lengths.tolist() == [6]  # ceil(ceil(23/2)/2)
    # Causal convolutions: the first output steps ignore later input (before the Transformer mixes them).
    x = states.transpose(1, 2)
    changed = states.clone()
    changed[:, 20:] += 1.0
    for conv in adapter.convs:
        x = torch.nn.functional.gelu(conv(torch.nn.functional.pad(x, (2, 0))))
    y = changed.transpose(1, 2)
    for conv in adapter.convs:
        y = torch.nn.functional.gelu(conv(torch.nn.functional.pad(y, (2, 0))))
    torch.testing.assert_close(x[..., :4], y[..., :4])


def test_loss_covers_target_tokens_only_and_uses_their_weights():
    torch.manual_seed(0)
    model = build_speech_llm(model_cfg(), vocab_size=64, eos_token_id=1, pad_token_id=0).eval()
    batch = batch_of([60, 44], [5, 3], [4, 6])
    out = model(**batch)
    assert out["token_count"].tolist() == [4, 6]
    # Changing padding beyond each target's length changes nothing.
    noisy = dict(batch, target_ids=batch["target_ids"].clone())
    noisy["target_ids"][0, 4:] = 7
    torch.testing.assert_close(model(**noisy)["token_loss"], out["token_loss"])
    # Doubling the weight of one example's tokens doubles its loss term and leaves the other's alone.
    heavier = dict(batch, target_weights=batch["target_weights"] * torch.tensor([[2.0], [1.0]]))
    again = model(**heavier)["token_loss"]
    torch.testing.assert_close(again, out["token_loss"] * torch.tensor([2.0, 1.0]))
    assert torch.isfinite(out["ctc_loss"]).all()


def test_batched_greedy_generation_equals_one_at_a_time(saved_models):
    torch.manual_seed(0)
    model = build_speech_llm(model_cfg(qwen_path=str(saved_models / "qwen2")), 64, eos_token_id=1, pad_token_id=0)
    model.eval()
    batch = batch_of([80, 31, 57, 12], [6, 2, 4, 3], [1, 1, 1, 1], seed=3)
    settings = generation(max_new_tokens=8)
    together = model.generate(settings=settings, **batch)
    for i in range(4):
        alone = model.generate(
            batch["features"][i : i + 1, : batch["feature_lengths"][i]],
            batch["feature_lengths"][i : i + 1],
            batch["prompt_ids"][i : i + 1, : batch["prompt_lengths"][i]],
            batch["prompt_lengths"][i : i + 1],
            settings,
        )
        assert together[i] == alone[0]
    assert any(len(ids) > 0 for ids in together)


def test_lora_and_trainable_parts(saved_models):
    model = build_speech_llm(
        model_cfg(whisper_path=str(saved_models / "whisper"), qwen_path=str(saved_models / "qwen2"), lora=True),
        64, eos_token_id=1, pad_token_id=0,
    )
    counts = set_trainable(model, ["adapter", "lora", "speech_markers"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert counts["lora"] > 0 and all("lora_" in n for n in trainable if n.startswith("llm."))
    assert not any(n.startswith("encoder.") for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(counts.values())
    out = model(**batch_of([40], [3], [5]))
    out["token_loss"].sum().backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    with pytest.raises(ValueError, match="unknown trainable part"):
        set_trainable(model, ["decoder"])


def test_lora_part_without_lora_unfreezes_nothing():
    model = build_speech_llm(model_cfg(), 64, eos_token_id=1, pad_token_id=0)
    assert set_trainable(model, ["lora"]) == {"lora": 0}
    assert not any(p.requires_grad for p in model.parameters())


def test_ctc_compression_merges_runs_of_equal_labels():
    from osum_core.model.ctc_compression import merge_ctc_runs

    states = torch.arange(12.0).view(1, 6, 2).repeat(2, 1, 1)
    labels = torch.tensor([[0, 0, 3, 3, 0, 5], [1, 1, 1, 2, 2, 2]])
    merged, lengths, starts = merge_ctc_runs(states, torch.tensor([6, 4]), labels)
    assert lengths.tolist() == [4, 2]
    assert starts[0].tolist() == [0, 2, 4, 5] and starts[1, :2].tolist() == [0, 3]
    torch.testing.assert_close(merged[0], torch.tensor([[1.0, 2.0], [5.0, 6.0], [8.0, 9.0], [10.0, 11.0]]))
    torch.testing.assert_close(merged[1, :2], torch.tensor([[2.0, 3.0], [6.0, 7.0]]))  # frames past 4 ignored
    cut, cut_lengths, _ = merge_ctc_runs(states, torch.tensor([6, 6]), labels, max_run=2)
    assert cut_lengths.tolist() == [4, 4]  # second example: runs of 3 are cut into 2 + 1
    torch.testing.assert_close(cut[1], torch.tensor([[1.0, 2.0], [4.0, 5.0], [7.0, 8.0], [10.0, 11.0]]))


def test_each_run_ends_where_the_next_starts_and_the_last_at_the_utterances_end():
    from osum_core.model.ctc_compression import merge_ctc_runs, run_ends

    states = torch.randn(3, 6, 2)
    labels = torch.tensor([[0, 0, 3, 3, 0, 5], [1, 1, 1, 2, 2, 2], [4, 4, 4, 4, 4, 4]])
    lengths = torch.tensor([6, 4, 0])
    _, runs, starts = merge_ctc_runs(states, lengths, labels)
    ends = run_ends(starts, runs, lengths)
    assert runs.tolist() == [4, 2, 0]
    assert ends[0].tolist() == [2, 4, 5, 6] and ends[1, :2].tolist() == [3, 4]  # 4: its last real frame is 3
    _, cut_runs, cut_starts = merge_ctc_runs(states, torch.tensor([6, 6, 6]), labels, max_run=4)
    assert run_ends(cut_starts, cut_runs, torch.tensor([6, 6, 6]))[2, :2].tolist() == [4, 6]


def test_compressed_model_still_batches_exactly(saved_models):
    cfg = model_cfg(qwen_path=str(saved_models / "qwen2"))
    cfg["ctc_compression"] = True
    cfg["ctc_embeddings"] = True
    cfg["ctc_max_run"] = 3
    cfg["time_embeddings"] = True
    cfg["time_embedding_ends"] = True
    cfg["adapter"]["conv_strides"] = [1]
    torch.manual_seed(0)
    model = build_speech_llm(cfg, 64, eos_token_id=1, pad_token_id=0).eval()
    with torch.no_grad():  # as training moves them off their zero start
        for part in (model.time_embedding, model.time_end_embedding):
            part.weight.normal_(std=0.5)
    batch = batch_of([80, 31, 57], [6, 2, 4], [1, 1, 1], seed=5)
    settings = generation(max_new_tokens=6)
    together = model.generate(settings=settings, **batch)
    for i in range(3):
        n, p = batch["feature_lengths"][i], batch["prompt_lengths"][i]
        alone = model.generate(batch["features"][i : i + 1, :n], batch["feature_lengths"][i : i + 1],
                               batch["prompt_ids"][i : i + 1, :p], batch["prompt_lengths"][i : i + 1], settings)
        assert together[i] == alone[0]
    assert torch.isfinite(model(**batch_of([40, 20], [3, 2], [4, 2]))["token_loss"]).all()
    cfg["ctc_head"] = False
    with pytest.raises(ValueError, match="need the CTC head"):
        build_speech_llm(cfg, 64, eos_token_id=1, pad_token_id=0)

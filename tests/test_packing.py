"""Packed training steps (``model.packed``): the batch's examples in one row, no padding computed, and the
same loss and gradients as the padded batch; budgets that count what packing computes."""

import random

import pytest
import torch

from osum_core.config import fit_config
from osum_core.data.batching import duration_batches
from osum_core.model import packing
from osum_core.model.build import build_speech_llm
from osum_core.model.packing import PackedSequences
from osum_core.model.speech_llm import GenerationSettings

# Tolerances of packed against padded, float32: the forward is the same arithmetic row by row; gradients
# sum the rows' contributions in another order (and attention gathers slots), so they agree to rounding.
LOSS_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
GRAD_TOLERANCE = 1e-4  # largest difference relative to the gradient's largest magnitude, per parameter


def tiny_model(*overrides: str, seed: int = 0):
    """The demo's model options at a tiny size (CTC compression, CTC embeddings, time embeddings, the utterance
    embedding), or the OSUM adapter with Transformer layers and LoRA, from configs/ plus `overrides`; dropout
    off."""
    encoder = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, dropout=0.0)
    llm = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
               tie_word_embeddings=False)
    cfg = fit_config(overrides=[
        *(f"model.encoder.config.{k}={v}" for k, v in encoder.items()),
        *(f"model.llm.config.{k}={v}" for k, v in llm.items()),
        "model.encoder.conv_strides=[2,2]", "model.adapter.layers=0", "model.adapter.conv_strides=[1]",
        "model.adapter.dropout=0.0", "model.ctc_head=true", "model.ctc_compression=true", "model.ctc_max_run=3",
        "model.ctc_embeddings=true", "model.time_embeddings=true", *overrides,
    ])["model"]
    torch.manual_seed(seed)
    return build_speech_llm(cfg, 64, eos_token_id=1, pad_token_id=0)


def batch_of(frames, prompts, targets, seed=0, vocab=64):
    g = torch.Generator().manual_seed(seed)
    b = len(frames)
    features = torch.randn(b, max(frames), 80, generator=g)
    for i, n in enumerate(frames):
        features[i, n:] = 0
    target = torch.randint(2, vocab, (b, max(targets)), generator=g)
    weights = torch.rand(b, max(targets), generator=g) + 0.5
    weights *= torch.arange(max(targets)) < torch.tensor(targets)[:, None]
    return {
        "features": features, "feature_lengths": torch.tensor(frames),
        "prompt_ids": torch.randint(2, vocab, (b, max(prompts)), generator=g), "prompt_lengths": torch.tensor(prompts),
        "target_ids": target, "target_lengths": torch.tensor(targets), "target_weights": weights,
        "ctc_ids": target, "ctc_lengths": torch.tensor(targets),
    }


def loss_and_grads(model, batch, packed: bool):
    model.packed = packed
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    loss = out["token_loss"].sum() / out["token_count"].sum() + out["ctc_loss"].mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["token_loss"].detach(), out["ctc_loss"].detach(), grads


def assert_same_step(model, batch):
    padded_loss, padded_ctc, padded = loss_and_grads(model, batch, packed=False)
    packed_loss, packed_ctc, packed = loss_and_grads(model, batch, packed=True)
    torch.testing.assert_close(packed_loss, padded_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(packed_ctc, padded_ctc, **LOSS_TOLERANCE)
    assert set(packed) == set(padded) and padded
    for name, grad in padded.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert (packed[name] - grad).abs().max() / scale < GRAD_TOLERANCE, name


# Lengths across the range a batch of a real run mixes: 1 s to 8 s, prompts and targets of different sizes.
FRAMES = [800, 100, 430, 257, 611, 160]
PROMPTS = [5, 9, 1, 7, 3, 6]
TARGETS = [12, 1, 7, 20, 4, 9]


# Attention per example (a CPU, but for many short examples of equal length) and in slots (one call: a GPU).
ATTENTION_PATHS = pytest.mark.parametrize("per_example", [True, False], ids=["per example", "in slots"])


def attend(monkeypatch, per_example: bool) -> None:
    """Make the CPU take one of packed attention's two paths, whatever the lengths."""
    monkeypatch.setattr(packing, "CPU_LOOP_WASTE", -1.0 if per_example else 2.0)
    monkeypatch.setattr(packing, "CPU_SLOT_MAX_ROWS", 0 if per_example else 10**9)


@ATTENTION_PATHS
def test_packed_step_has_the_padded_loss_and_gradients_with_the_demo_options(monkeypatch, per_example):
    attend(monkeypatch, per_example)
    model = tiny_model().train()
    assert model.packed  # configs/fit.yaml: on by default
    assert_same_step(model, batch_of(FRAMES, PROMPTS, TARGETS))


@ATTENTION_PATHS
def test_packed_step_has_the_padded_loss_and_gradients_with_osum_adapter_chat_turn_and_lora(monkeypatch, per_example):
    attend(monkeypatch, per_example)
    model = tiny_model(
        "model.ctc_compression=false", "model.ctc_embeddings=false", "model.time_embeddings=false",
        "model.encoder.conv_strides=[1,2]", "model.adapter.conv_strides=[1,2,2]", "model.adapter.layers=2",
        "model.adapter.ffn_size=64", "model.llm.lora.enabled=true", "model.llm.lora.dropout=0.0",
    ).train()
    model.set_chat_turn([3, 4, 5], [6, 7])
    for p in model.encoder.parameters():  # a frozen pretrained encoder, as OSUM's first stages train
        p.requires_grad_(False)
    assert_same_step(model, batch_of([400, 50, 133, 399], [4, 8, 2, 5], [3, 9, 1, 14], seed=3))


@ATTENTION_PATHS
def test_packed_encoder_gives_the_padded_states_and_zeros_at_padding(monkeypatch, per_example):
    attend(monkeypatch, per_example)
    encoder = tiny_model().encoder.eval()
    batch = batch_of(FRAMES, PROMPTS, TARGETS)
    padded, lengths = encoder(batch["features"], batch["feature_lengths"])
    packed, packed_lengths = encoder(batch["features"], batch["feature_lengths"], packed=True)
    assert packed_lengths.tolist() == lengths.tolist()
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(packed[i, :n], padded[i, :n], rtol=1e-5, atol=1e-5)
        assert not packed[i, n:].any()


def test_greedy_generation_is_the_same_with_the_packed_encoder():
    model = tiny_model(seed=4).eval()
    batch = batch_of(FRAMES, PROMPTS, [1] * len(FRAMES), seed=9)
    settings = GenerationSettings(**{**fit_config()["eval"]["generation"], "max_new_tokens": 8, "min_new_tokens": 8})
    model.packed = False
    padded = model.generate(settings=settings, **batch)
    model.packed = True
    assert model.generate(settings=settings, **batch) == padded


@pytest.mark.parametrize(("lengths", "threads", "calls"), [
    ([49] * 20, 1, 1),  # many short examples of equal length (the demo's encoder): one call, in slots
    ([64] * 20, 1, 1),  # the longest rows that still go in slots
    ([65] * 20, 1, 20),  # one more row: a call per example
    ([60, 12, 45], 1, 3),  # short, but the slots would be mostly padding: a call per example
    ([1422, 1379], 2, 2),  # long examples (30 s at 50 Hz): a call per example, though the slots waste 3 %
    ([1422, 1379], 4, 1),  # ... unless the CPU has more threads than the layer has heads (2): in slots
])
def test_a_cpu_attends_in_slots_only_for_many_short_examples_of_about_equal_length(monkeypatch, lengths, threads,
                                                                                  calls):
    sequences = PackedSequences.of(lengths, "cpu")
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *args, **kwargs: seen.append(q.shape) or sdpa(q, *args, **kwargs))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what packed_attention reads, not torch's pool
    query = torch.randn(1, 2, sequences.total, 8)
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = packing.packed_attention(module, query, query, query, None, packing=sequences)
    assert len(seen) == calls and out.shape == (1, sequences.total, 2, 8)
    # Either path attends within each example only: the first example alone gives its own rows.
    alone, _ = packing.packed_attention(module, query[:, :, : lengths[0]], query[:, :, : lengths[0]],
                                        query[:, :, : lengths[0]], None, packing=PackedSequences.of(lengths[:1], "cpu"))
    torch.testing.assert_close(out[:, : lengths[0]], alone, rtol=1e-5, atol=1e-5)


def test_packed_rows_restart_positions_and_index_each_example():
    packing = PackedSequences.of([3, 1, 2], "cpu")
    assert packing.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packing.index.tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert packing.valid.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    with pytest.raises(ValueError, match="at least one row"):
        PackedSequences.of([2, 0], "cpu")


def test_a_model_that_cannot_pack_trains_padded_and_says_why():
    with pytest.warns(UserWarning, match="qwen2 model trains on padded batches: its attention is 'eager'"):
        assert not tiny_model("model.llm.attention=eager").packed  # an export or run of any attention still loads
    # A sliding window would need a window per example: Qwen2 with use_sliding_window.
    with pytest.warns(UserWarning, match="it has sliding_attention layers"):
        assert not tiny_model("model.llm.config.use_sliding_window=true", "model.llm.config.sliding_window=8",
                              "model.llm.config.max_window_layers=0").packed


def test_ctc_only_step_gives_the_full_steps_ctc_loss_without_the_llm():
    model = tiny_model().train()
    batch = batch_of(FRAMES, PROMPTS, TARGETS)
    full = model(**batch)
    alone = model(**batch, ctc_only=True)
    torch.testing.assert_close(alone["ctc_loss"], full["ctc_loss"])
    assert not alone["token_loss"].any()
    alone["ctc_loss"].sum().backward()
    assert all(p.grad is None for p in model.llm.parameters())


def test_packed_budget_counts_real_sizes_and_fits_more_per_batch():
    rng = random.Random(0)
    frames = [rng.randint(100, 3000) for _ in range(400)]
    tokens = [f // 8 + rng.randint(10, 40) for f in frames]
    budgets = dict(max_frames=12000, max_tokens=2000, sort_window=100, seed=1)
    padded = duration_batches(frames, tokens, **budgets)
    packed = duration_batches(frames, tokens, **budgets, packed=True)
    for batches in (padded, packed):
        assert sorted(i for b in batches for i in b) == list(range(400))  # each example once
    for batch in packed:
        assert sum(frames[i] for i in batch) <= 12000 or len(batch) == 1
        assert sum(tokens[i] for i in batch) <= 2000 or len(batch) == 1
    for batch in padded:
        assert max(frames[i] for i in batch) * len(batch) <= 12000 or len(batch) == 1
    assert len(packed) < len(padded)  # what padding wasted now holds more examples

"""`model.summary_steps`: attention-pooled views of the whole utterance before the speech steps. Each example's
summary sees its own frames only, the batch budget counts the steps, packed and padded steps agree, generation
batched equals generation alone, the steps train with the adapter and travel in the checkpoint.

`model.utterance_embedding`: one such view added to every speech step. It starts as a no-op, adds each example's
own view to each of its steps, and trains, packs, generates and travels like the summary steps."""

import torch
from conftest import TINY, data_args
from safetensors.torch import load_file
from test_packing import FRAMES, PROMPTS, TARGETS, assert_same_step, batch_of, tiny_model

from osum_core.checkpoints.loading import load_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict
from osum_core.cli.main import main
from osum_core.config import fit_config
from osum_core.model.ctc_compression import merge_ctc_runs, run_ends, time_features
from osum_core.model.freezing import PARTS, set_trainable
from osum_core.model.layout import build_layout
from osum_core.model.speech_llm import GenerationSettings
from osum_core.model.utterance_summary import UtteranceSummary


def test_summary_starts_as_the_mean_of_each_examples_own_frames():
    torch.manual_seed(0)
    summary = UtteranceSummary(16, 8, steps=3)
    states = torch.randn(3, 40, 16)
    lengths = torch.tensor([40, 7, 23])
    states[1, 7:] = 1e4  # padding that a summary must not see
    out = summary(states, lengths)
    assert out.shape == (3, 3, 8)
    for i, n in enumerate(lengths.tolist()):
        mean = summary.projection(summary.norm(states[i, :n].mean(dim=0)))
        for step in range(3):
            torch.testing.assert_close(out[i, step], mean)


def test_an_example_without_frames_pools_nothing_and_keeps_the_batch_finite():
    summary = UtteranceSummary(8, 4, steps=2)
    states = torch.randn(2, 5, 8, requires_grad=True)
    out = summary(states, torch.tensor([5, 0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, 0], summary.projection(summary.norm(torch.zeros(8))))
    out.sum().backward()
    assert torch.isfinite(states.grad).all() and torch.isfinite(summary.queries.grad).all()


def test_summary_steps_come_first_and_pool_the_unmerged_encoder_states():
    model = tiny_model("model.summary_steps=2", seed=3).eval()
    with torch.no_grad():
        model.summary.queries.normal_(std=0.5)
    batch = batch_of(FRAMES, PROMPTS, TARGETS, seed=2)
    with torch.no_grad():
        speech = model.encode_speech(batch["features"], batch["feature_lengths"])
        pooled = model.summary(speech["encoder_states"], speech["encoder_lengths"])
        summary, model.summary = model.summary, None
        plain = model.encode_speech(batch["features"], batch["feature_lengths"])
        model.summary = summary
    assert speech["speech_lengths"].tolist() == (plain["speech_lengths"] + 2).tolist()
    for i, n in enumerate(plain["speech_lengths"].tolist()):
        torch.testing.assert_close(speech["speech"][i, :2], pooled[i])
        torch.testing.assert_close(speech["speech"][i, 2 : 2 + n], plain["speech"][i, :n])


def test_a_trained_query_weighs_the_frames_it_matches():
    summary = UtteranceSummary(4, 4, steps=1)
    with torch.no_grad():
        summary.queries.copy_(torch.tensor([[0.0, 0.0, 0.0, 200.0]]))
    states = torch.zeros(1, 10, 4)
    states[0, :, 0] = 1.0
    states[0, 6, 3] = 1.0  # one frame (a cough in a stretch of words) matches the query
    pooled = summary.norm(states[0, 6])
    torch.testing.assert_close(summary(states, torch.tensor([10]))[0, 0], summary.projection(pooled), atol=1e-4,
                               rtol=1e-4)


def test_batch_budget_counts_the_summary_steps():
    model = tiny_model("model.summary_steps=2").eval()
    for frames in (1, 9, 160, 333):
        speech = model.encode_speech(torch.randn(1, frames, 80), torch.tensor([frames]))
        layout = build_layout(model.embed_tokens(torch.tensor([[5, 6, 7]])), torch.tensor([3]), speech["speech"],
                              speech["speech_lengths"], model.speech_markers)
        assert int(speech["speech_lengths"][0]) <= model.speech_steps(frames)  # compression: at most
        assert model.sequence_length(frames, 3, 0) >= layout.embeds.shape[1]
    assert model.speech_steps(160) == tiny_model().speech_steps(160) + 2
    assert model.sequence_length(160, 3, 2, frames_per_step=8) == tiny_model().sequence_length(160, 3, 2, 8) + 2


def test_packed_step_has_the_padded_loss_and_gradients_with_summary_steps():
    model = tiny_model("model.summary_steps=2").train()
    assert_same_step(model, batch_of(FRAMES, PROMPTS, TARGETS))


def assert_generates_the_same_batched_and_alone(model):
    batch = batch_of(FRAMES, PROMPTS, [1] * len(FRAMES), seed=9)
    settings = GenerationSettings(**{**fit_config()["eval"]["generation"], "max_new_tokens": 8, "min_new_tokens": 8})
    batched = model.generate(settings=settings, **batch)
    for i, (frames, prompt) in enumerate(zip(FRAMES, PROMPTS)):
        alone = model.generate(batch["features"][i : i + 1, :frames], batch["feature_lengths"][i : i + 1],
                               batch["prompt_ids"][i : i + 1, :prompt], batch["prompt_lengths"][i : i + 1], settings)
        assert alone[0] == batched[i]


def test_greedy_generation_with_summary_steps_is_the_same_batched_and_alone():
    model = tiny_model("model.summary_steps=2", seed=4).eval()
    with torch.no_grad():  # queries away from zero, so the pooling is not a plain mean
        model.summary.queries.normal_(std=0.5)
    assert_generates_the_same_batched_and_alone(model)


def with_trained_utterance_embedding(model):
    """`model` with its utterance embedding moved off its zero start, as training moves it."""
    with torch.no_grad():
        model.utterance_embedding.queries.normal_(std=0.5)
        model.utterance_embedding.projection.weight.normal_(std=0.5)
        model.utterance_embedding.projection.bias.normal_(std=0.5)
    return model


def test_utterance_embedding_starts_as_no_change_then_adds_each_examples_own_view_to_each_step():
    batch = batch_of(FRAMES, PROMPTS, TARGETS, seed=2)
    plain = tiny_model(seed=3).eval()
    model = tiny_model("model.utterance_embedding=true", seed=3).eval()
    model.load_state_dict(plain.state_dict(), strict=False)  # the same weights, the embedding's own at zero
    with torch.no_grad():
        before = plain.encode_speech(batch["features"], batch["feature_lengths"])
        at_start = model.encode_speech(batch["features"], batch["feature_lengths"])
        torch.testing.assert_close(at_start["speech"], before["speech"], rtol=0, atol=0)
        with_trained_utterance_embedding(model)
        after = model.encode_speech(batch["features"], batch["feature_lengths"])
        pooled = model.utterance_embedding(after["encoder_states"], after["encoder_lengths"])
    assert after["speech_lengths"].tolist() == before["speech_lengths"].tolist()
    assert pooled.shape == (len(FRAMES), 1, before["speech"].shape[-1])
    assert not torch.allclose(pooled[0], pooled[1])  # each example its own view
    for i, n in enumerate(before["speech_lengths"].tolist()):
        torch.testing.assert_close(after["speech"][i, :n], before["speech"][i, :n] + pooled[i])


def test_packed_step_has_the_padded_loss_and_gradients_with_the_utterance_embedding():
    model = with_trained_utterance_embedding(tiny_model("model.utterance_embedding=true").train())
    assert_same_step(model, batch_of(FRAMES, PROMPTS, TARGETS))


def test_packed_step_has_the_padded_loss_and_gradients_with_time_embedding_ends():
    model = tiny_model("model.time_embedding_ends=true").train()
    with torch.no_grad():
        model.time_end_embedding.weight.normal_(std=0.5)
    assert_same_step(model, batch_of(FRAMES, PROMPTS, TARGETS))


def test_time_embedding_ends_add_a_projection_of_the_frame_each_merged_step_ends_at():
    batch = batch_of(FRAMES, PROMPTS, TARGETS, seed=2)
    model = tiny_model("model.time_embedding_ends=true", seed=3).eval()
    features, lengths = batch["features"], batch["feature_lengths"]
    with torch.no_grad():
        without = model.encode_speech(features, lengths)  # the end projection still at its zero start
        model.time_end_embedding.weight.normal_(std=0.5)
        model.time_end_embedding.bias.normal_(std=0.5)
        with_ends = model.encode_speech(features, lengths)
        states, state_lengths = with_ends["encoder_states"], with_ends["encoder_lengths"]
        labels = model.ctc_head(states).argmax(dim=-1)
        _, runs, starts = merge_ctc_runs(states, state_lengths, labels, model.ctc_max_run)
        added = with_ends["speech"] - without["speech"]
        by_end = model.time_end_embedding(time_features(run_ends(starts, runs, state_lengths), model.TIME_FEATURES))
        by_start = model.time_end_embedding(time_features(starts, model.TIME_FEATURES))
    assert with_ends["speech_lengths"].tolist() == runs.tolist()
    for i, n in enumerate(runs.tolist()):
        torch.testing.assert_close(added[i, :n], by_end[i, :n])
        assert not torch.allclose(added[i, :n], by_start[i, :n])  # the ends, not the starts again


def test_greedy_generation_with_the_utterance_embedding_is_the_same_batched_and_alone():
    model = with_trained_utterance_embedding(tiny_model("model.utterance_embedding=true", seed=4).eval())
    assert_generates_the_same_batched_and_alone(model)


def test_utterance_embedding_trains_with_the_adapter_from_its_zero_start():
    model = tiny_model("model.utterance_embedding=true").train()
    counts = set_trainable(model, ["adapter"])
    parts = (model.adapter, model.time_embedding, model.utterance_embedding)
    assert counts["adapter"] == sum(p.numel() for part in parts for p in part.parameters())
    model(**batch_of(FRAMES[:3], PROMPTS[:3], TARGETS[:3]))["token_loss"].sum().backward()
    # At zero only the projection has a gradient; the queries get theirs once it has moved.
    assert model.utterance_embedding.projection.weight.grad.abs().sum() > 0
    set_trainable(model, ["llm", "encoder"])
    assert not any(p.requires_grad for p in model.utterance_embedding.parameters())


def test_every_parameter_of_a_model_with_the_demos_options_and_summary_steps_belongs_to_a_part():
    # A module that no part names would stay frozen at its initial value (the time embedding once did).
    model = tiny_model("model.summary_steps=2", "model.utterance_embedding=true", "model.time_embedding_ends=true")
    set_trainable(model, list(PARTS))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["encoder.whisper.embed_positions.weight"]  # Whisper's fixed sinusoids


def test_summary_trains_with_the_adapter_and_is_frozen_with_it():
    model = tiny_model("model.summary_steps=2").train()
    counts = set_trainable(model, ["adapter"])
    parts = (model.adapter, model.time_embedding, model.summary, model.utterance_embedding)  # the demo preset's
    assert counts["adapter"] == sum(p.numel() for part in parts for p in part.parameters())
    model(**batch_of(FRAMES[:3], PROMPTS[:3], TARGETS[:3]))["token_loss"].sum().backward()
    assert model.summary.queries.grad is not None and model.summary.projection.weight.grad.abs().sum() > 0
    set_trainable(model, ["llm", "encoder"])
    assert not any(p.requires_grad for p in model.summary.parameters())


def test_summary_weights_travel_through_a_run_and_its_export(tiny_corpus, tmp_path):
    run, out = tmp_path / "run", tmp_path / "export"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY,
                 "trainer.max_steps=3", "trainer.val_check_interval=3", "model.summary_steps=2",
                 "model.utterance_embedding=true", "model.time_embedding_ends=true"]) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(out)]) == 0
    speech = load_file(str(out / "speech.safetensors"))
    assert speech["summary.queries"].shape[0] == 2 and speech["utterance_embedding.queries"].shape[0] == 1
    trained, exported = load_checkpoint(run).model, load_checkpoint(out).model
    assert exported.summary.steps == 2 and exported.utterance_embedding is not None
    assert trained.summary.queries.abs().sum() > 0  # it trained: the queries left their zero start
    assert trained.utterance_embedding.projection.weight.abs().sum() > 0  # ... and so did these projections
    assert speech["time_end_embedding.weight"].abs().sum() > 0
    a, b = canonical_state_dict(trained), canonical_state_dict(exported)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

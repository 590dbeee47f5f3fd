"""Model options: the scoring normaliser, gradient checkpointing, mixed dtypes, the chat template."""


import pytest
import torch

from osum_core.config import fit_config, load_config
from osum_core.inference.scoring import Scorer
from osum_core.model.build import build_speech_llm
from osum_core.model.speech_llm import GenerationSettings
from osum_core.task import Prediction, Target, TranscriptMetric
from osum_core.task.normalize import normalize_pair, normalize_transcript, transcript_normalizer


def generation(**changes) -> GenerationSettings:
    """The configured decoding settings (configs/fit.yaml), with `changes`."""
    return GenerationSettings(**{**load_config()["eval"]["generation"], **changes})


def test_whisper_english_normaliser_for_english_and_cer_for_chinese():
    assert normalize_transcript("Mr. Smith, twenty-one!") == "mr smith twenty one"
    with transcript_normalizer("whisper_en"):
        assert normalize_transcript("Mr. Smith said: it's twenty-one!") == "mister smith said it is 21"
        assert normalize_transcript("你好，世界") == "你 好 世 界"
    with pytest.raises(ValueError, match="eval.normalizer"):
        with transcript_normalizer("nope"):
            pass


def test_whisper_english_normaliser_treats_a_code_switched_pair_alike(registry):
    # The reference has Chinese, the hypothesis does not: one normaliser for both (the basic one, as a
    # reference with CJK characters needs), never Whisper's English one for the hypothesis alone (which
    # would write "it is 21" against the reference's "it s twenty one": 5 errors in 6 words, not 2).
    hypothesis, reference = "it's twenty-one", "他说 it's twenty-one"
    metric = TranscriptMetric()
    with transcript_normalizer("whisper_en"):
        assert normalize_pair(hypothesis, reference) == ("it s twenty one", "他 说 it s twenty one")
        assert normalize_pair("it's twenty-one", "It is 21.") == ("it is 21", "it is 21")
        metric.update([Prediction(hypothesis, hypothesis)], [Target(reference)])
        scorer = Scorer({"asr": registry.tasks["asr"]})
        scorer.add("asr", "key", hypothesis, Target(reference))
    assert metric.compute()["wer"] == pytest.approx(2 / 6)
    assert scorer.rows[0]["wer"] == pytest.approx(2 / 6, abs=1e-4)


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

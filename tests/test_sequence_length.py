"""The length of an example's LLM sequence is computed where the layout is built (the model's strides, the
chat turn's tokens), and the duration batches keep every batch within ``data.max_tokens``."""

import pytest
import torch

from osum_core.config import fit_config
from osum_core.demo.tokenizer import train_demo_tokenizer
from osum_core.model.build import build_for_tokenizer
from osum_core.model.layout import build_layout
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule

# Qwen2.5-Instruct's turn layout (ChatML), as the osum-7b-instruct preset uses it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_model(strides="[1,2]", adapter="[1,2,2]", summary_steps=0):
    tasks = {t.name: t for t in load_tasks().select(["asr", "ved"])}
    prompts = [p for t in tasks.values() for p in t.prompt_bank("en")]
    tokenizer = train_demo_tokenizer(["user assistant zero one two three four five six seven eight nine oh", *prompts],
                                     ["<|im_start|>", "<|im_end|>", *(f"<{label}>" for label in tasks["ved"].labels)], 160)
    tokenizer.chat_template = CHAT_TEMPLATE
    cfg = fit_config(overrides=[
        "model.llm.chat_template=true", "model.ctc_compression=false", "model.ctc_embeddings=false",
        "model.time_embeddings=false", f"model.encoder.conv_strides={strides}", f"model.adapter.conv_strides={adapter}",
        "model.encoder.config.max_source_positions=1500", "model.encoder.config.encoder_layers=1",
        "model.llm.config.num_hidden_layers=1", "data.frames_per_token=null", "data.max_tokens=500",
        "data.max_frames=100000", "data.num_workers=0", f"model.summary_steps={summary_steps}",
    ])
    torch.manual_seed(0)
    return cfg, tasks, tokenizer, build_for_tokenizer(cfg["model"], tokenizer).eval()


@pytest.mark.parametrize("summary_steps", [0, 2])
def test_sequence_length_is_the_laid_out_length(summary_steps):
    cfg, _, _, model = chat_model(summary_steps=summary_steps)
    turn = model.turn_before.numel() + model.turn_after.numel()
    assert turn > 0
    for frames in (1, 7, 160, 333):
        speech = model.encode_speech(torch.randn(1, frames, 80), torch.tensor([frames]))
        layout = build_layout(model.embed_tokens(torch.tensor([[5, 6, 7]])), torch.tensor([3]), speech["speech"],
                              speech["speech_lengths"], model.speech_markers, model.embed_tokens(torch.tensor([[8, 9]])),
                              torch.tensor([2]), **model.turn_embeds())
        assert model.sequence_length(frames, 3, 2) == layout.embeds.shape[1]
        assert model.speech_steps(frames) == int(speech["speech_lengths"][0])


def test_no_batch_exceeds_the_token_budget_with_a_chat_turn(tiny_corpus):
    cfg, tasks, tokenizer, model = chat_model()
    data = dict(cfg["data"], train=str(tiny_corpus / "train.jsonl"))
    datamodule = SpeechDataModule(data, tasks, tokenizer, cfg["seed"], cfg["loss"]["ctc_target"], model.sequence_length)
    batches = 0
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            speech = model.encode_speech(batch["features"], batch["feature_lengths"])
            layout = build_layout(
                model.embed_tokens(batch["prompt_ids"]), batch["prompt_lengths"], speech["speech"],
                speech["speech_lengths"], model.speech_markers, model.embed_tokens(batch["target_ids"]),
                batch["target_lengths"], **model.turn_embeds(),
            )
            assert layout.embeds.shape[0] * layout.embeds.shape[1] <= data["max_tokens"]
            batches += 1
    assert batches > 1

"""Building a `SpeechLLM` from the ``model:`` section of the config (random init from config classes, or
``from_pretrained`` from a Hugging Face id or local directory)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, WhisperConfig

from osum_core.model.adapter import SpeechAdapter
from osum_core.model.encoder import SpeechEncoder
from osum_core.model.packing import use_packed_attention
from osum_core.model.pretrained import pretrained
from osum_core.model.speech_llm import SpeechLLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_encoder(cfg: dict[str, Any]) -> SpeechEncoder:
    if cfg["path"]:
        return pretrained(
            SpeechEncoder.from_pretrained, cfg["path"], "model.encoder.path",
            conv_strides=cfg["conv_strides"], dtype=DTYPES[cfg["dtype"]],
        )
    return SpeechEncoder(WhisperConfig(**cfg["config"]), cfg["conv_strides"]).to(DTYPES[cfg["dtype"]])


def build_llm(cfg: dict[str, Any], vocab_size: int):
    dtype = DTYPES[cfg["dtype"]]
    if cfg["path"]:
        llm = pretrained(
            AutoModelForCausalLM.from_pretrained, cfg["path"], "model.llm.path",
            dtype=dtype, attn_implementation=cfg["attention"],
        )
    else:
        config = AutoConfig.for_model(cfg["model_type"], vocab_size=vocab_size, **cfg["config"])
        config._attn_implementation = cfg["attention"]
        llm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    use_packed_attention(llm.config)  # SDPA that also takes packed rows (packing.py)
    if cfg["lora"]["enabled"]:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = cfg["lora"]
        llm = get_peft_model(
            llm,
            LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=lora["rank"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=list(lora["target_modules"]),
            ),
        )
    return llm


def build_speech_llm(cfg: dict[str, Any], vocab_size: int, eos_token_id: int, pad_token_id: int) -> SpeechLLM:
    """The backbone from a plain dict (the resolved ``model:`` config section)."""
    encoder = build_encoder(cfg["encoder"])
    llm = build_llm(cfg["llm"], vocab_size)
    adapter_cfg = cfg["adapter"]
    adapter = SpeechAdapter(
        input_size=encoder.output_size,
        llm_size=llm.get_input_embeddings().embedding_dim,
        conv_strides=adapter_cfg["conv_strides"],
        layers=adapter_cfg["layers"],
        heads=adapter_cfg["heads"],
        ffn_size=adapter_cfg["ffn_size"],
        dropout=adapter_cfg["dropout"],
    )
    if cfg["gradient_checkpointing"]:
        # Recompute each layer's activations in the backward pass: memory for time, as OSUM does.
        for part in (encoder.whisper, llm):
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ctc_vocab = vocab_size if cfg["ctc_head"] else 0
    return SpeechLLM(
        encoder, adapter, llm, eos_token_id, pad_token_id, ctc_vocab_size=ctc_vocab,
        ctc_compression=cfg["ctc_compression"], ctc_embeddings=cfg["ctc_embeddings"],
        ctc_max_run=cfg["ctc_max_run"], time_embeddings=cfg["time_embeddings"],
        time_embedding_ends=cfg["time_embedding_ends"], packed=cfg["packed"],
        summary_steps=cfg["summary_steps"], utterance_embedding=cfg["utterance_embedding"],
    )


def chat_turn_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids before and after the user's content in the tokenizer's chat template (with the assistant's
    turn opened after it), found by rendering a placeholder."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.llm.chat_template is true, but the tokenizer has no chat template")
    placeholder = "\ue000"  # a private-use character that no template contains
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": placeholder}], tokenize=False, add_generation_prompt=True
    )
    before, after = text.split(placeholder)
    return tokenizer.encode(before, add_special_tokens=False), tokenizer.encode(after, add_special_tokens=False)


def build_for_tokenizer(cfg: dict[str, Any], tokenizer: Any) -> SpeechLLM:
    """`build_speech_llm` sized for `tokenizer`, with its chat template when ``llm.chat_template`` is set."""
    model = build_speech_llm(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    if cfg["llm"]["chat_template"]:
        model.set_chat_turn(*chat_turn_ids(tokenizer))
    return model

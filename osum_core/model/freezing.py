"""Which parts of the backbone train: a list of part names from the config, resolved by module, not by
matching substrings of parameter names."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from torch import nn

from osum_core.model.speech_llm import SpeechLLM


def lora_parameters(model: SpeechLLM) -> Iterator[nn.Parameter]:
    from peft.tuners.lora import LoraLayer  # peft is only needed when LoRA is used

    for module in model.llm.modules():
        if isinstance(module, LoraLayer):
            for adapters in (module.lora_A, module.lora_B, module.lora_embedding_A, module.lora_embedding_B):
                yield from adapters.parameters()


def encoder_parameters(model: SpeechLLM) -> Iterator[nn.Parameter]:
    # Whisper's sinusoidal position table stays fixed, as in Whisper and OSUM.
    fixed = {id(p) for p in model.encoder.whisper.embed_positions.parameters()}
    return (p for p in model.encoder.parameters() if id(p) not in fixed)


def bridge_parameters(model: SpeechLLM) -> Iterator[nn.Parameter]:
    """The adapter and what else turns encoder states into the speech steps the LLM reads: the time
    embeddings (start and end), the utterance summary and the utterance embedding (options of the model, each
    None when off)."""
    yield from model.adapter.parameters()
    for part in (model.time_embedding, model.time_end_embedding, model.summary, model.utterance_embedding):
        if part is not None:
            yield from part.parameters()


PARTS: dict[str, Callable[[SpeechLLM], Iterable[nn.Parameter]]] = {
    "encoder": encoder_parameters,
    "adapter": bridge_parameters,
    "speech_markers": lambda m: [m.speech_markers],
    "ctc_head": lambda m: m.ctc_head.parameters() if m.ctc_head is not None else [],
    "lora": lora_parameters,
    "llm": lambda m: m.llm.parameters(),  # the whole LLM: for small models trained from scratch
}


def set_trainable(model: SpeechLLM, parts: Sequence[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named parts. Returns the number of parameters each part
    unfroze (so a part that matched nothing, like ``lora`` without LoRA, shows as 0)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown trainable part(s) {unknown}; choose from {sorted(PARTS)}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    counts = {}
    for part in parts:
        params = list(PARTS[part](model))
        for parameter in params:
            parameter.requires_grad_(True)
        counts[part] = sum(p.numel() for p in params)
    return counts

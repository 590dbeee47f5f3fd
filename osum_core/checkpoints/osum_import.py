"""Importing OSUM's released ``infer.pt`` (ASLP-lab/OSUM: the state dict of its whole `LLMASR_Model`) as
canonical SpeechLLM keys (state_keys.py).

Every key of the checkpoint is accounted for once (`ImportResult.sources`): mapped to a canonical key,
merged into one (q/k/v pieces into one projection, an alias of an LLM tensor checked equal to it), dropped
with a reason (modules OSUM builds but never uses, a position table our adapter computes), or unmapped.
Checks that fail (a position table that is not the sinusoid table, an alias that differs from the tensor it
should alias) become notes of the report; so do dtype casts and where settings the checkpoint lacks came from.

    state = read_osum_checkpoint("infer.pt")
    result = convert_osum_state_dict(state, canonical_state_dict(model), source="infer.pt")
    print(result.report())
    load_canonical_state(model, result.state, "infer.pt")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.models.whisper.modeling_whisper import sinusoids

from osum_core.checkpoints.state_keys import canonical_key
from osum_core.model.adapter import sinusoid_table
from osum_core.model.safe_load import safe_load
from osum_core.model.whisper_weights import POSITIONS, WENET

ENCODER = "encoder.whisper."
LLM_PREFIX = "llama_model."
SPEECH_TOKENS = "speech_token_emded.weight"  # sic: OSUM's spelling
ADAPTER_POSITIONS = "speech_transformer.embed.pos_enc.pe"

UNUSED_MODULES = {
    "ln_speech.": "LayerNorm that OSUM builds but never applies",
    "speaker_head.": "output head of a speech-token experiment; OSUM never applies it",
}
# OSUM's `self.embed_tokens = llama_model...embed_tokens` registers the LLM's tensors a second time.
ALIASES = {"embed_tokens.weight": "llm.model.embed_tokens.weight", "lm_head.weight": "llm.lm_head.weight"}

ADAPTER_MODULES = {
    "speech_transformer.embed.out.0": "adapter.input_layer.0",
    "speech_transformer.embed.out.1": "adapter.input_layer.1",
    "speech_transformer.after_norm": "adapter.final_norm",
    "speech_llama_proj": "adapter.projection",
}
ADAPTER_LAYER_MODULES = {
    "self_attn.linear_out": "self_attn.out_proj",
    "feed_forward.w_1": "linear1",
    "feed_forward.w_2": "linear2",
    "norm1": "norm1",
    "norm2": "norm2",
}
# `down_sample_2.conv` is a Sequential of (pad, Conv1d, GELU) triples: the convolutions are 1, 4, 7, ...
ADAPTER_CONV = re.compile(r"down_sample_2\.conv\.(\d+)\.(weight|bias)")
ADAPTER_LAYER = re.compile(r"speech_transformer\.encoders\.(\d+)\.(.+)\.(weight|bias)")
ADAPTER_QKV = re.compile(r"speech_transformer\.encoders\.(\d+)\.self_attn\.linear_([qkv])\.(weight|bias)")


# How a checkpoint key was used, in the report's order.
KINDS = ("mapped", "merged", "dropped", "unmapped")


@dataclass
class ImportResult:
    """What `convert_osum_state_dict` made of a checkpoint.

    state: canonical key -> tensor, only keys the target model has.
    sources: every checkpoint key -> (kind, detail): ("mapped", target key), ("merged", target key and how),
        ("dropped", why it is not imported) or ("unmapped", "") for keys unknown to this importer.
    unexpected: canonical key -> the checkpoint key(s) it came from, where the target model has no such tensor
        (those checkpoint keys are dropped).
    missing: target-model keys the checkpoint does not provide (they keep their initial values).
    casts: canonical key -> (checkpoint dtype, model dtype), for tensors converted on loading.
    origins: where settings that the checkpoint does not store came from (`import_osum_checkpoint`).
    notes: failed checks (a position table, an alias)."""

    state: dict[str, torch.Tensor]
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    unexpected: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    casts: dict[str, tuple[torch.dtype, torch.dtype]] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> dict[str, str]:
        return {key: detail for key, (kind, detail) in self.sources.items() if kind == "dropped"}

    @property
    def unmapped(self) -> list[str]:
        return [key for key, (kind, _) in self.sources.items() if kind == "unmapped"]

    def counts(self) -> dict[str, int]:
        """Checkpoint keys per kind; they add up to the checkpoint's key count."""
        return {kind: sum(k == kind for k, _ in self.sources.values()) for kind in KINDS}

    def report(self, per_key: bool = True) -> str:
        """The summary, casts, origins and problems; then, with `per_key`, one line per checkpoint key."""
        counts = self.counts()
        lines = [
            f"{len(self.sources)} source keys = " + " + ".join(f"{n} {kind}" for kind, n in counts.items()),
            f"{len(self.state)} tensors imported",
        ]
        by_cast: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
        for name, cast in self.casts.items():
            by_cast.setdefault(cast, []).append(name)
        for (before, after), names in by_cast.items():
            parts = ", ".join(dict.fromkeys(name.partition(".")[0] + (".*" if "." in name else "") for name in names))
            lines.append(f"cast to {dtype_name(after)} from {dtype_name(before)}: {len(names)} tensors ({parts})")
        lines.extend(self.origins)
        sections = [
            ("dropped", "", [f"{key}: {reason}" for key, reason in self.dropped.items()]),
            ("unmapped", "checkpoint keys nothing converts", self.unmapped),
            ("unexpected", "converted, but the model has no such tensor",
             [f"{origin} -> {name}" for name, origin in self.unexpected.items()]),
            ("missing", "model tensors the checkpoint does not provide (left as initialised)", self.missing),
            ("notes", "", self.notes),
        ]
        if per_key:
            sections.append(("source keys", "each checkpoint key and what became of it",
                             [source_line(key, kind, detail) for key, (kind, detail) in self.sources.items()]))
        for title, meaning, items in sections:
            if items:
                lines.append(f"{title} ({len(items)}){': ' + meaning if meaning else ''}")
                lines.extend(f"  {item}" for item in items)
        return "\n".join(lines)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def source_line(key: str, kind: str, detail: str) -> str:
    if kind in ("mapped", "merged"):
        return f"{kind:8} {key} -> {detail}"
    return f"{kind:8} {key}: {detail}" if detail else f"{kind:8} {key}"


def read_osum_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`: a plain ``torch.save(state_dict)`` (OSUM's ``infer.pt``), or one under
    ``module`` (DeepSpeed's model states) or ``state_dict`` (Lightning)."""
    # Memory-mapped: a 7B checkpoint is paged in as it is copied, not read whole first.
    checkpoint = safe_load(path, "OSUM checkpoint", mmap=True)
    if isinstance(checkpoint, dict):
        for container in ("module", "state_dict"):
            if isinstance(checkpoint.get(container), dict):
                checkpoint = checkpoint[container]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path}: expected a state dict (or one under 'module' or 'state_dict')")
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor; expected a state dict")
    return checkpoint


def adapter_key(key: str) -> str | None:
    """The canonical key of an adapter tensor renamed one to one (not q/k/v), or None."""
    module, _, param = key.rpartition(".")
    if module in ADAPTER_MODULES:
        return f"{ADAPTER_MODULES[module]}.{param}"
    if match := ADAPTER_CONV.fullmatch(key):
        index = int(match[1])
        return f"adapter.convs.{(index - 1) // 3}.{match[2]}" if index % 3 == 1 else None
    if (match := ADAPTER_LAYER.fullmatch(key)) and match[2] in ADAPTER_LAYER_MODULES:
        return f"adapter.transformer.layers.{match[1]}.{ADAPTER_LAYER_MODULES[match[2]]}.{match[3]}"
    return None


def is_table(tensor: torch.Tensor, table: torch.Tensor) -> bool:
    """`tensor` is `table` up to the rounding of its dtype (and of float32 sinusoids at large positions)."""
    if tensor.numel() != table.numel():
        return False
    return torch.allclose(tensor.reshape(table.shape).float(), table, atol=max(1e-3, torch.finfo(tensor.dtype).eps))


def convert_osum_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> ImportResult:
    """OSUM's `state` as canonical keys of the model whose `canonical_state_dict` is `expected`.

    A tensor whose shape differs from the model's is an error naming `source` and both keys."""
    # canonical key -> (what the report calls its origin, the checkpoint keys it is made of, tensor)
    converted: dict[str, tuple[str, tuple[str, ...], torch.Tensor]] = {}
    result = ImportResult(state={})
    sources = result.sources
    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}  # (layer, param) -> q/k/v pieces
    aliases = {}

    def put(name: str, origin: str, tensor: torch.Tensor, keys: tuple[str, ...], detail: str = "") -> None:
        if name in converted:
            raise ValueError(f"{source}: {converted[name][0]} and {origin} both map to {name}")
        converted[name] = (origin, keys, tensor)
        for key in keys:
            sources[key] = ("merged" if len(keys) > 1 else "mapped", name + detail)

    for key, tensor in state.items():
        unused = next((reason for prefix, reason in UNUSED_MODULES.items() if key.startswith(prefix)), None)
        if unused is not None:
            sources[key] = ("dropped", unused)
        elif key in ALIASES:
            aliases[key] = tensor
            sources[key] = ("unmapped", "")  # until the tensor it aliases is seen (keeps the checkpoint's order)
        elif key.startswith(LLM_PREFIX):
            put(canonical_key("llm." + key[len(LLM_PREFIX) :]), key, tensor, (key,))
        elif key == SPEECH_TOKENS:
            # Rows speech_token_num + 0 and + 1, the table's last two, are the speech BOS and EOS.
            rest = f"; rows [:{len(tensor) - 2}], speech-token embeddings of an unused experiment, dropped"
            detail = f" (rows [-2:]{rest if len(tensor) > 2 else ''})"
            put("speech_markers", f"{key}[-2:]", tensor[-2:].clone(), (key,), detail)
        elif key == ADAPTER_POSITIONS:
            sources[key] = ("dropped", "sinusoid table the adapter computes (adapter.positions)")
            length, width = tensor.shape[-2:]
            if not is_table(tensor, sinusoid_table(length, width)):
                result.notes.append(f"{key} is not the sinusoid table the adapter computes; the adapter uses its own")
        elif key.startswith("encoder."):
            hf_key = WENET.hf_key(key)
            if hf_key is None:
                sources[key] = ("unmapped", "")
                continue
            if hf_key == POSITIONS:
                tensor = tensor.reshape(-1, tensor.shape[-1])  # WeNet's [1, n, d]
                if not is_table(tensor, sinusoids(*tensor.shape)):
                    result.notes.append(f"{key} is not Whisper's sinusoid table; imported as it is")
            put(ENCODER + hf_key, key, tensor, (key,))
        elif match := ADAPTER_QKV.fullmatch(key):
            qkv.setdefault((match[1], match[3]), {})[match[2]] = (key, tensor)
            sources[key] = ("unmapped", "")  # until its layer's q, k and v are all seen
        elif (name := adapter_key(key)) is not None:
            put(name, key, tensor, (key,))
        else:
            sources[key] = ("unmapped", "")

    # torch's attention keeps q, k and v as one [3d, d] projection, in that order.
    for (layer, param), pieces in qkv.items():
        if len(pieces) == 3:
            origins = tuple(pieces[part][0] for part in "qkv")
            put(
                f"adapter.transformer.layers.{layer}.self_attn.in_proj_{param}",
                " + ".join(origins),
                torch.cat([pieces[part][1] for part in "qkv"]),
                origins,
                " (q, k, v concatenated)",
            )
        else:
            absent = ", ".join(f"linear_{part}.{param}" for part in "qkv" if part not in pieces)
            for origin, _ in pieces.values():
                sources[origin] = ("dropped", f"layer {layer} lacks {absent}; in_proj_{param} needs q, k and v")

    for key, tensor in aliases.items():
        name = ALIASES[key]
        if name not in converted:  # only the alias was saved: it is the tensor itself
            put(name, key, tensor, (key,))
            continue
        origin, _, own = converted[name]
        if own.shape == tensor.shape and torch.equal(own, tensor):
            sources[key] = ("merged", f"{name} (alias of {origin}, checked equal)")
        else:
            sources[key] = ("dropped", f"alias of {origin}, but it differs from it; {origin} is imported")
            result.notes.append(f"{key} differs from {origin}, which it should alias; {origin} is imported")

    for name, (origin, keys, tensor) in converted.items():
        if name not in expected:
            result.unexpected[name] = origin
            for key in keys:
                sources[key] = ("dropped", f"converted to {name}, which the model does not have")
            continue
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{source}: {origin} has shape {tuple(tensor.shape)}, the model's {name} is"
                f" {tuple(expected[name].shape)}"
            )
        result.state[name] = tensor
        if tensor.dtype != expected[name].dtype:  # loading copies into the model's tensors, in their dtype
            result.casts[name] = (tensor.dtype, expected[name].dtype)
    result.missing = sorted(name for name in expected if name not in result.state)
    return result


def encoder_config_of(state: Mapping[str, torch.Tensor], source: str, attention_heads: int | None = None):
    """The Whisper encoder config that OSUM's encoder tensors (WeNet layout) imply."""
    from osum_core.model.whisper_weights import to_hf_encoder_state, whisper_config

    hf_state, _ = to_hf_encoder_state({k: v for k, v in state.items() if k.startswith("encoder.")}, WENET)
    # The head count is `osum import-osum --encoder-heads`: name that option, not this function's argument.
    return whisper_config(hf_state, WENET, source, attention_heads, heads_option="--encoder-heads N")


def settings_origins(
    model_cfg: dict, llm_source: str, tokenizer_key: str, encoder_config, encoder_heads: int | None
) -> list[str]:
    """Where the settings of the imported model that infer.pt does not store came from (report lines)."""
    llm, lora, encoder = model_cfg["llm"], model_cfg["llm"]["lora"], model_cfg["encoder"]
    width, heads = encoder_config.d_model, encoder_config.encoder_attention_heads
    lines = [
        "encoder sizes: from the checkpoint's tensor shapes"
        f" ({width} wide, {encoder_config.encoder_layers} layers, {encoder_config.num_mel_bins} mel bins)",
        f"encoder attention heads {heads}: "
        + ("from --encoder-heads" if encoder_heads else f"Whisper's for a {width}-wide encoder, the checkpoint does not"
           " store it (--encoder-heads sets it)"),
        f"encoder dtype {encoder['dtype']}: from the preset (model.encoder.dtype)",
        f"llm config: from {llm_source} (model.llm.path); every LLM weight comes from the checkpoint",
        f"llm dtype {llm['dtype']}: from the preset (model.llm.dtype)",
        f"tokenizer: from {llm['tokenizer'] or llm_source} ({tokenizer_key})",
    ]
    if lora["enabled"]:
        lines.append(f"lora rank {lora['rank']}: from the preset (model.llm.lora.rank), which the checkpoint's"
                     " lora_A/lora_B shapes are checked against")
        lines.extend(f"lora {name} {lora[name]}: from the preset (model.llm.lora.{name}), the checkpoint does not"
                     " store it" for name in ("alpha", "dropout"))
        lines.append(f"lora target modules {', '.join(lora['target_modules'])}: from the preset"
                     " (model.llm.lora.target_modules), checked against the checkpoint's LoRA tensors")
    return lines


def import_osum_checkpoint(
    file: Path, cfg: dict, out: Path, tasks: list[str], encoder_heads: int | None = None, overwrite: bool = False
) -> ImportResult:
    """``osum import-osum``: OSUM's checkpoint -> an osum checkpoint directory in `out`.

    `cfg` is the resolved config of the preset it was trained with (osum-7b); its ``model.llm.path`` gives
    the LLM's config and tokenizer only (infer.pt holds all LLM weights), the encoder's sizes come from the
    checkpoint (attention heads: `encoder_heads`, else Whisper's for that width). Writes the report to
    ``out/import_report.txt`` too."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.initialization import no_init_weights

    from osum_core.checkpoints.directory import save_checkpoint_dir
    from osum_core.checkpoints.state_keys import canonical_state_dict, load_canonical_state
    from osum_core.model.build import build_speech_llm
    from osum_core.model.pretrained import pretrained

    source = str(file)
    state = read_osum_checkpoint(file)
    model_cfg = cfg["model"]
    llm_source = model_cfg["llm"]["path"]
    if not llm_source:
        raise ValueError("model.llm.path must name the LLM OSUM was trained on (its config and tokenizer), e.g. Qwen/Qwen2-7B")
    # An id that cannot be downloaded (offline): a message naming it, its config key and the local-directory way.
    llm_config = pretrained(AutoConfig.from_pretrained, llm_source, "model.llm.path").to_diff_dict()
    model_cfg["llm"].update(
        path=None,  # built from its config: every weight comes from the checkpoint
        model_type=llm_config.pop("model_type"),
        config={k: v for k, v in llm_config.items() if k not in ("architectures", "transformers_version", "vocab_size")},
    )
    encoder_config = encoder_config_of(state, source, encoder_heads)
    model_cfg["encoder"].update(path=None, config=encoder_config.to_diff_dict())
    tokenizer_key = "model.llm.tokenizer" if model_cfg["llm"]["tokenizer"] else "model.llm.path"
    tokenizer = pretrained(AutoTokenizer.from_pretrained, model_cfg["llm"]["tokenizer"] or llm_source, tokenizer_key)
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # as OSUM does
    # Every weight comes from the checkpoint: skip the random initialisation (minutes for a 7B LLM on CPU).
    with no_init_weights():
        model = build_speech_llm(model_cfg, llm_config["vocab_size"], tokenizer.eos_token_id, tokenizer.pad_token_id)
    result = convert_osum_state_dict(state, canonical_state_dict(model), source)
    result.origins = settings_origins(model_cfg, llm_source, tokenizer_key, encoder_config, encoder_heads)
    if result.missing:
        raise ValueError(f"{source}: the checkpoint lacks {len(result.missing)} tensors the model needs, "
                         f"e.g. {result.missing[:3]}\n{result.report(per_key=False)}")
    load_canonical_state(model, result.state, source)
    # The report goes into the directory that save_checkpoint_dir writes all at once.
    save_checkpoint_dir(model, tokenizer, cfg, tasks, out, source=source, copy_llm=True,
                        extra_files={"import_report.txt": result.report() + "\n"}, overwrite=overwrite)
    return result

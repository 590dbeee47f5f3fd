"""The ``osum`` checkpoint directory: what ``osum export`` and ``osum import-osum`` write and what
``--ckpt`` / ``--init`` read. Loading it needs no training config.

    DIR/osum.yaml            the resolved config the model was trained with (model, data, eval, tasks)
    DIR/export.json          tasks trained, where the weights came from, how the LLM is stored, checksums
    DIR/tokenizer/           the tokenizer (save_pretrained)
    DIR/speech.safetensors   encoder, adapter, speech BOS/EOS, CTC head, time embedding, summary (canonical keys)
    DIR/lora/                the LoRA adapter, peft's own save_pretrained format (absent when merged or unused)
    DIR/llm/                 the LLM (save_pretrained, safetensors) when its weights are not simply those of
                             ``model.llm.path``: trained, randomly initialised, imported or with LoRA merged

`save_checkpoint_dir` writes the whole directory at once (`osum_core.checkpoints.atomic.atomic_directory`):
it is built in a hidden sibling and renamed into place, so DIR is the previous export or the new one, never a
part of one, also when the save is killed or the disk fills (`DiskFullError`). An existing DIR is replaced
as a whole (no file of the previous export stays behind) when it is empty, or an osum checkpoint directory
and ``--overwrite`` is given; any other existing path (a training run among them) is refused.

`osum_core.checkpoints.loading.load_checkpoint` also takes a training run directory (`run_dir.py`) or a Lightning
``.ckpt`` inside one, so a run can be tested before it is exported.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from osum_core.checkpoints.atomic import atomic_directory
from osum_core.checkpoints.state_keys import canonical_key, canonical_state_dict, load_canonical_state
from osum_core.config import load_config, to_yaml
from osum_core.model.build import build_for_tokenizer
from osum_core.model.speech_llm import SpeechLLM

CONFIG_FILE = "osum.yaml"
# The WhisperConfig fields that shape the encoder (the decoder's are irrelevant to osum).
WHISPER_ENCODER_KEYS = (
    "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins",
    "max_source_positions", "dropout", "attention_dropout", "activation_dropout", "activation_function",
    "encoder_layerdrop", "scale_embedding",
)
INFO_FILE = "export.json"
SPEECH_FILE = "speech.safetensors"


@dataclass
class LoadedCheckpoint:
    """A model loaded from disk (checkpoint directory, run directory or .ckpt) with what it needs to run."""

    model: SpeechLLM
    tokenizer: Any
    config: dict[str, Any]  # the run's resolved config, with the caller's overrides merged in
    tasks: list[str]  # the tasks it was trained on
    source: str  # what was loaded
    checksum: str  # sha256 over the weight files, for reports


def file_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def llm_needs_copy(model_cfg: dict[str, Any]) -> bool:
    """Whether the LLM's weights differ from what ``model.llm.path`` loads."""
    return not model_cfg["llm"]["path"] or "llm" in model_cfg["train"]


def save_llm_without_lora(model: SpeechLLM, out: Path) -> None:
    """The base LLM's weights (LoRA factors left out) in the LLM's own save_pretrained format."""
    causal_lm = model.causal_lm
    if causal_lm is model.llm:
        causal_lm.save_pretrained(out)
        return
    # A peft-wrapped model: its modules hold LoRA layers, so hand save_pretrained the unwrapped tensors.
    state = {
        name[len("llm.") :]: tensor
        for name, tensor in canonical_state_dict(model).items()
        if name.startswith("llm.") and ".lora_" not in name
    }
    causal_lm.save_pretrained(out, state_dict=state)


def is_export(path: Path) -> bool:
    """Whether `path` is an osum checkpoint directory (what ``osum export`` writes)."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / INFO_FILE).is_file())


def check_export_out(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that an export must not replace: anything but an absent path or an empty folder,
    and an earlier export unless `overwrite`."""
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        return
    if is_export(out):
        if not overwrite:
            raise ValueError(f"--out {out}: holds an osum export already; give --overwrite to replace it, or choose "
                             "a new path")
        return
    raise ValueError(f"--out {out}: exists and is not an osum checkpoint directory (a training run, or other "
                     "files); choose a new path")


def save_checkpoint_dir(
    model: SpeechLLM,
    tokenizer: Any,
    cfg: dict[str, Any],
    tasks: list[str],
    out: Path,
    *,
    source: str,
    merge_lora: bool = False,
    copy_llm: bool | None = None,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `model` as an osum checkpoint directory, all at once (module docstring). `cfg` is the resolved
    run config (plain dict). `copy_llm` None decides by `llm_needs_copy`. `extra_files`: more text files
    for the directory, name to content (``osum import-osum``'s report). An earlier export in `out` is
    replaced only with `overwrite`. Returns what export.json records."""
    out = Path(out)
    check_export_out(out, overwrite)
    cfg = copy.deepcopy(cfg)
    model_cfg = cfg["model"]
    lora = model_cfg["llm"]["lora"]["enabled"]
    copy_llm = llm_needs_copy(model_cfg) if copy_llm is None else copy_llm
    if merge_lora and lora:
        model.llm = model.llm.merge_and_unload()
        model_cfg["llm"]["lora"]["enabled"] = False
        lora, copy_llm = False, True
        model_cfg["train"] = [part for part in model_cfg["train"] if part != "lora"]

    # The files are written plainly inside the staging folder: the folder, not each file, appears at once.
    with atomic_directory(out, replace=True) as staging:
        speech = {k: v.contiguous() for k, v in canonical_state_dict(model).items() if not k.startswith("llm.")}
        save_file(speech, str(staging / SPEECH_FILE), metadata={"format": "osum-canonical"})
        if lora:
            model.llm.save_pretrained(staging / "lora")
        if copy_llm:
            save_llm_without_lora(model, staging / "llm")
        tokenizer.save_pretrained(staging / "tokenizer")

        # The encoder is rebuilt from its full config and speech.safetensors, never from its source again.
        model_cfg["encoder"]["path"] = None
        # Every size (to_dict, not to_diff_dict): a value equal to transformers' default must not be taken from
        # whatever the defaults of a later osum say.
        model_cfg["encoder"]["config"] = {
            k: v for k, v in model.encoder.whisper.config.to_dict().items() if k in WHISPER_ENCODER_KEYS
        }
        model_cfg["llm"]["tokenizer"] = None
        (staging / CONFIG_FILE).write_text(to_yaml(cfg))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        weights = [staging / SPEECH_FILE, *sorted((staging / "lora").glob("*.safetensors")),
                   *sorted((staging / "llm").glob("*.safetensors"))]
        info = {
            "format": "osum-checkpoint-1",
            "tasks": list(tasks),
            "source": source,
            "llm": "llm/" if copy_llm else f"model.llm.path ({model_cfg['llm']['path']})",
            "lora": "lora/" if lora else ("merged into llm/" if merge_lora else "none"),
            "sha256": file_sha256([w for w in weights if w.is_file()]),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def lora_state(directory: Path) -> dict[str, torch.Tensor]:
    """A peft adapter folder's tensors under canonical keys."""
    file = directory / "adapter_model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{directory}: no adapter_model.safetensors (peft save_pretrained format)")
    return {canonical_key("llm." + key): tensor for key, tensor in load_file(str(file)).items()}


def checkpoint_state(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of an osum checkpoint directory that do not come with ``from_pretrained`` of the LLM:
    speech.safetensors and the LoRA adapter, canonical keys."""
    state = load_file(str(directory / SPEECH_FILE))
    if (directory / "lora").is_dir():
        state.update(lora_state(directory / "lora"))
    return state


def load_checkpoint_dir(directory: Path, overrides: Sequence[str] = (), device: str = "cpu") -> LoadedCheckpoint:
    directory = Path(directory)
    for required in (CONFIG_FILE, SPEECH_FILE, "tokenizer"):
        if not (directory / required).exists():
            raise FileNotFoundError(f"{directory}: not an osum checkpoint directory (no {required})")
    llm_dir = directory / "llm"
    pinned = [f"model.llm.path={llm_dir}"] if llm_dir.is_dir() else []
    cfg = load_config("fit", [directory / CONFIG_FILE], [*pinned, *overrides])
    info = json.loads((directory / INFO_FILE).read_text()) if (directory / INFO_FILE).is_file() else {}
    tokenizer = load_tokenizer(directory / "tokenizer")
    model = build_for_tokenizer(cfg["model"], tokenizer)
    missing, _ = load_canonical_state(model, checkpoint_state(directory), str(directory))
    not_loaded = [key for key in missing if not key.startswith("llm.") or ".lora_" in key]
    if not_loaded:
        raise ValueError(f"{directory}: the checkpoint lacks {len(not_loaded)} tensors, e.g. {not_loaded[:3]}")
    return LoadedCheckpoint(
        model.to(device).eval(), tokenizer, cfg, list(info.get("tasks", [])), str(directory), info.get("sha256", "")
    )


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def init_from_checkpoint(model: SpeechLLM, directory: str | Path) -> dict[str, list[str]]:
    """Start training from an osum checkpoint directory (``osum fit --init``): its speech weights, its LoRA
    weights where both have LoRA, and its LLM weights when it carries its own (llm/). Tensors the new model
    has and the checkpoint lacks (LoRA added in stage 3, say) keep their fresh initialisation."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--init {directory}: not an osum checkpoint directory (make one with osum export)")
    state = checkpoint_state(directory)
    llm_dir = directory / "llm"
    if llm_dir.is_dir():
        for file in sorted(llm_dir.glob("*.safetensors")):
            state.update({canonical_key("llm." + k): v for k, v in load_file(str(file)).items()})
    missing, unexpected = load_canonical_state(model, state, str(directory))
    if not llm_dir.is_dir():
        missing = [k for k in missing if not k.startswith("llm.") or ".lora_" in k]
    return {"missing": missing, "unexpected": unexpected}

"""Whisper encoders from OpenAI and WeNet ``.pt`` files, and OSUM's ``infer.pt`` into a SpeechLLM: tiny real
modules, written in each format's own key names with torch.save, read back and compared tensor by tensor
and output by output. The key names below are spelled out independently of the converters."""

import math
import re

import pytest
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from osum_core.checkpoints.osum_import import convert_osum_state_dict, read_osum_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict, load_canonical_state
from osum_core.config import fit_config
from osum_core.model.build import build_speech_llm
from osum_core.model.encoder import SpeechEncoder

TINY_WHISPER = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, num_mel_bins=80,
                    max_source_positions=100)

OPENAI_LAYER = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
WENET_LAYER = {
    "self_attn.q_proj": "self_attn.linear_q", "self_attn.k_proj": "self_attn.linear_k",
    "self_attn.v_proj": "self_attn.linear_v", "self_attn.out_proj": "self_attn.linear_out",
    "self_attn_layer_norm": "norm1", "fc1": "feed_forward.w_1", "fc2": "feed_forward.w_2", "final_layer_norm": "norm2",
}
LLM = "llama_model."


def randomise(module: torch.nn.Module) -> None:
    """Random weights everywhere except the fixed Whisper position table."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith("embed_positions.weight"):
                param.normal_(mean=1.0 if name.endswith("norm.weight") else 0.0, std=0.1)


def openai_encoder_state(hf_state):
    out = {}
    for key, tensor in hf_state.items():
        if key == "embed_positions.weight":
            out["encoder.positional_embedding"] = tensor
        elif key.startswith(("conv1.", "conv2.")):
            out["encoder." + key] = tensor
        elif key.startswith("layer_norm."):
            out["encoder.ln_post." + key.split(".")[-1]] = tensor
        else:
            _, index, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            out[f"encoder.blocks.{index}.{OPENAI_LAYER[module]}.{param}"] = tensor
    return out


def wenet_encoder_state(hf_state):
    out = {}
    for key, tensor in hf_state.items():
        if key == "embed_positions.weight":
            out["encoder.embed.pos_enc.pe"] = tensor[None]  # WeNet keeps [1, n, d]
        elif key.startswith("conv1."):
            out["encoder.embed.conv.0." + key.split(".")[-1]] = tensor
        elif key.startswith("conv2."):
            out["encoder.embed.conv.2." + key.split(".")[-1]] = tensor
        elif key.startswith("layer_norm."):
            out["encoder.after_norm." + key.split(".")[-1]] = tensor
        else:
            _, index, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            out[f"encoder.encoders.{index}.{WENET_LAYER[module]}.{param}"] = tensor
    return out


@pytest.fixture
def whisper_encoder():
    encoder = WhisperEncoder(WhisperConfig(**TINY_WHISPER))
    randomise(encoder)
    return encoder


def assert_same_encoder_output(loaded: SpeechEncoder, original: WhisperEncoder, strides=(1, 2)):
    reference = SpeechEncoder(original.config, strides)
    reference.whisper.load_state_dict(original.state_dict())
    features, lengths = torch.randn(2, 60, 80), torch.tensor([60, 37])
    with torch.no_grad():
        expected, expected_lengths = reference.eval()(features, lengths)
        actual, actual_lengths = loaded.eval()(features, lengths)
    assert torch.equal(actual_lengths, expected_lengths)
    keep = torch.arange(actual.shape[1])[None, :] < actual_lengths[:, None]
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_openai_whisper_file_loads_as_the_same_encoder(whisper_encoder, tmp_path):
    dims = {"n_mels": 80, "n_audio_ctx": 100, "n_audio_state": 32, "n_audio_head": 4, "n_audio_layer": 2,
            "n_vocab": 10, "n_text_ctx": 8, "n_text_state": 32, "n_text_head": 4, "n_text_layer": 1}
    weights = openai_encoder_state(whisper_encoder.state_dict())
    weights["decoder.token_embedding.weight"] = torch.randn(10, 32)  # a whole model's file: decoder ignored
    path = tmp_path / "tiny.pt"
    torch.save({"dims": dims, "model_state_dict": weights}, path)

    loaded = SpeechEncoder.from_pretrained(str(path), conv_strides=(1, 2))  # heads from dims
    assert loaded.whisper.config.encoder_attention_heads == 4
    assert_same_encoder_output(loaded, whisper_encoder)
    assert SpeechEncoder.from_pretrained(str(path), dtype=torch.bfloat16).whisper.conv1.weight.dtype == torch.bfloat16


def test_wenet_whisper_file_loads_as_the_same_encoder(whisper_encoder, tmp_path):
    path = tmp_path / "wenet.pt"
    weights = wenet_encoder_state(whisper_encoder.state_dict())
    weights["decoder.embed.0.weight"] = torch.randn(10, 32)
    torch.save(weights, path)

    with pytest.raises(ValueError, match="attention-head count of a 32-wide encoder"):
        SpeechEncoder.from_pretrained(str(path))  # 32 is no Whisper width: heads must be given
    loaded = SpeechEncoder.from_pretrained(str(path), conv_strides=(2, 2), attention_heads=4)
    assert_same_encoder_output(loaded, whisper_encoder, strides=(2, 2))


def test_incomplete_encoder_file_names_the_file_and_key(whisper_encoder, tmp_path):
    weights = wenet_encoder_state(whisper_encoder.state_dict())
    missing = dict(weights)
    del missing["encoder.encoders.1.feed_forward.w_2.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt: encoder\.encoders\.1\.feed_forward\.w_2\.weight is missing"):
        SpeechEncoder.from_pretrained(str(tmp_path / "missing.pt"), attention_heads=4)

    extra = dict(weights, **{"encoder.encoders.0.self_attn.linear_pos.weight": torch.zeros(32, 32)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt: unexpected key encoder\.encoders\.0\.self_attn\.linear_pos"):
        SpeechEncoder.from_pretrained(str(tmp_path / "extra.pt"), attention_heads=4)

    torch.save({"model.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a Whisper encoder"):
        SpeechEncoder.from_pretrained(str(tmp_path / "other.pt"))


# --- OSUM's infer.pt ---------------------------------------------------------------------------------------

OSUM_SHAPED = [
    "model.adapter.conv_strides=[1,2,2]", "model.adapter.layers=2", "model.ctc_head=false",
    "model.ctc_compression=false", "model.ctc_embeddings=false", "model.time_embeddings=false",
    "model.utterance_embedding=false",  # OSUM has none of the demo preset's options
    "model.llm.lora.enabled=true", "model.encoder.conv_strides=[1,2]",
    "model.encoder.config.encoder_layers=2", "model.llm.config.num_hidden_layers=2",
]
SPEECH_TOKENS = 5  # OSUM: 4097 rows, then speech BOS and EOS


def osum_model(seed):
    torch.manual_seed(seed)
    model = build_speech_llm(fit_config(overrides=OSUM_SHAPED)["model"], 100, 1, 0)
    randomise(model)
    return model.eval()


def wenet_positions(length, width):
    """WeNet's `PositionalEncoding.pe`, as OSUM saves it."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * -(math.log(10000.0) / width))
    pe = torch.zeros(length, width)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    return pe[None]


def osum_adapter_state(key, tensor):
    parts = key.split(".")
    if parts[0] == "convs":
        return {f"down_sample_2.conv.{3 * int(parts[1]) + 1}.{parts[2]}": tensor}
    if parts[0] == "input_layer":
        return {f"speech_transformer.embed.out.{parts[1]}.{parts[2]}": tensor}
    if parts[0] == "final_norm":
        return {f"speech_transformer.after_norm.{parts[1]}": tensor}
    if parts[0] == "projection":
        return {f"speech_llama_proj.{parts[1]}": tensor}
    layer = f"speech_transformer.encoders.{parts[2]}"
    rest = ".".join(parts[3:])
    if rest.startswith("self_attn.in_proj_"):
        param = rest.split("_")[-1]
        q, k, v = tensor.chunk(3)
        return {f"{layer}.self_attn.linear_{n}.{param}": t for n, t in zip("qkv", (q, k, v))}
    renames = {"self_attn.out_proj": "self_attn.linear_out", "linear1": "feed_forward.w_1",
               "linear2": "feed_forward.w_2", "norm1": "norm1", "norm2": "norm2"}
    module, param = rest.rsplit(".", 1)
    return {f"{layer}.{renames[module]}.{param}": tensor}


def osum_state(model, base_layer=True):
    """`model`'s weights spelled as OSUM's `LLMASR_Model.state_dict()` (OSUM.md 1.8)."""
    out = {}
    width = model.speech_markers.shape[1]
    d = model.encoder.output_size
    for key, tensor in model.state_dict().items():
        tensor = tensor.clone()
        if key.startswith("llm."):
            name = LLM + key[len("llm.") :]
            out[name if base_layer else name.replace(".base_layer", "")] = tensor
        elif key.startswith("encoder.whisper."):
            out.update(wenet_encoder_state({key[len("encoder.whisper.") :]: tensor}))
        elif key.startswith("adapter."):
            out.update(osum_adapter_state(key[len("adapter.") :], tensor))
        elif key == "speech_markers":
            out["speech_token_emded.weight"] = torch.cat([torch.randn(SPEECH_TOKENS, width), tensor])
        else:
            raise AssertionError(f"no OSUM name for {key}")
    out["speech_transformer.embed.pos_enc.pe"] = wenet_positions(5000, d)
    out["ln_speech.weight"], out["ln_speech.bias"] = torch.ones(d), torch.zeros(d)
    out["speaker_head.weight"], out["speaker_head.bias"] = torch.randn(SPEECH_TOKENS, width), torch.zeros(SPEECH_TOKENS)
    out["embed_tokens.weight"] = out[LLM + "base_model.model.model.embed_tokens.weight"].clone()
    out["lm_head.weight"] = out[LLM + "base_model.model.lm_head.weight"].clone()
    return out


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    return {
        "features": torch.randn(2, 64, 80, generator=g), "feature_lengths": torch.tensor([64, 41]),
        "prompt_ids": torch.randint(2, 100, (2, 3), generator=g), "prompt_lengths": torch.tensor([3, 2]),
        "target_ids": torch.randint(2, 100, (2, 4), generator=g), "target_lengths": torch.tensor([4, 3]),
        "target_weights": torch.ones(2, 4),
    }


@pytest.fixture(scope="module")
def original():
    return osum_model(seed=0)


@pytest.mark.parametrize("base_layer", [True, False], ids=["peft-base_layer", "old-peft"])
def test_osum_checkpoint_imports_every_tensor(original, tmp_path, base_layer):
    path = tmp_path / "infer.pt"
    state = osum_state(original, base_layer)
    torch.save(state, path)
    fresh = osum_model(seed=1)
    expected = canonical_state_dict(fresh)

    result = convert_osum_state_dict(read_osum_checkpoint(path), expected, source=str(path))
    assert (result.unmapped, result.missing, result.unexpected, result.notes) == ([], [], {}, []), result.report()
    assert set(result.dropped) == {
        "ln_speech.weight", "ln_speech.bias", "speaker_head.weight", "speaker_head.bias",
        "speech_transformer.embed.pos_enc.pe",
    }
    # q/k/v pieces become one projection; the LLM aliases are checked equal to the tensors they alias.
    qkv = {f"speech_transformer.encoders.{i}.self_attn.linear_{part}.{param}"
           for i in range(2) for part in "qkv" for param in ("weight", "bias")}
    assert {key for key, (kind, _) in result.sources.items() if kind == "merged"} == {
        "embed_tokens.weight", "lm_head.weight", *qkv}
    assert result.sources["speech_token_emded.weight"] == (
        "mapped", f"speech_markers (rows [-2:]; rows [:{SPEECH_TOKENS}], speech-token embeddings of an unused"
        " experiment, dropped)")
    assert list(result.sources) == list(state)  # every checkpoint key, once, in its order
    assert result.counts() == {"mapped": len(state) - 5 - 14, "merged": 14, "dropped": 5, "unmapped": 0}
    assert load_canonical_state(fresh, result.state, str(path)) == ([], [])

    loaded = canonical_state_dict(fresh)
    for key, tensor in canonical_state_dict(original).items():
        assert torch.equal(loaded[key], tensor), key
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch)["token_loss"], original(**batch)["token_loss"])


def test_osum_import_reports_what_it_did_not_map(original, tmp_path):
    state = osum_state(original)
    state["speech_transformer.encoders.0.self_attn.rel_bias"] = torch.zeros(3)  # unknown to the importer
    del state["speech_llama_proj.bias"]
    del state["speech_transformer.encoders.1.self_attn.linear_k.weight"]
    state["lm_head.weight"] += 1  # an alias that is not one
    state["speech_transformer.embed.pos_enc.pe"] = torch.zeros_like(state["speech_transformer.embed.pos_enc.pe"])
    torch.save({"module": state}, tmp_path / "ds.pt")  # DeepSpeed's container

    result = convert_osum_state_dict(read_osum_checkpoint(tmp_path / "ds.pt"), canonical_state_dict(original))
    assert result.unmapped == ["speech_transformer.encoders.0.self_attn.rel_bias"]
    assert result.missing == ["adapter.projection.bias", "adapter.transformer.layers.1.self_attn.in_proj_weight"]
    reason = result.dropped["speech_transformer.encoders.1.self_attn.linear_q.weight"]
    assert "in_proj_weight needs q, k and v" in reason
    assert any(note.startswith("lm_head.weight differs") for note in result.notes)
    assert any(note.startswith("speech_transformer.embed.pos_enc.pe is not") for note in result.notes)
    assert result.dropped["lm_head.weight"].startswith("alias of llama_model.base_model.model.lm_head.weight, but it")
    report = result.report()
    for key in [*result.unmapped, *result.missing, *result.dropped]:
        assert key in report
    # dropped: ln_speech, speaker_head (2 each), the position table, layer 1's linear_q/v.weight, lm_head;
    # merged: embed_tokens, q/k/v of layer 0's weight and bias and of layer 1's bias.
    merged, dropped = 1 + 3 * 3, 2 + 2 + 1 + 2 + 1
    assert report_counts(report) == {"source keys": len(state), "mapped": len(state) - merged - dropped - 1,
                                     "merged": merged, "dropped": dropped, "unmapped": 1}
    for key, (kind, _) in result.sources.items():
        assert re.search(rf"^  {kind} +{re.escape(key)}( ->|:|$)", report, re.M), key


def report_counts(report: str) -> dict[str, int]:
    """The summary line `N source keys = a mapped + b merged + c dropped + d unmapped`, which must add up."""
    match = re.match(r"(\d+) source keys = (\d+) mapped \+ (\d+) merged \+ (\d+) dropped \+ (\d+) unmapped$",
                     report.splitlines()[0])
    assert match, report.splitlines()[0]
    total, *parts = map(int, match.groups())
    assert total == sum(parts)
    return dict(zip(("source keys", "mapped", "merged", "dropped", "unmapped"), (total, *parts)))


def test_osum_import_errors_name_the_file_and_key(original, tmp_path):
    state = osum_state(original)
    state["speech_llama_proj.weight"] = torch.zeros(7, 7)
    with pytest.raises(ValueError, match=r"infer\.pt: speech_llama_proj\.weight has shape \(7, 7\)"):
        convert_osum_state_dict(state, canonical_state_dict(original), source="infer.pt")

    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: expected a state dict"):
        read_osum_checkpoint(tmp_path / "list.pt")


def import_osum(tmp_path, original, *overrides, state=None, heads="4"):
    """``osum import-osum`` of `state` (default: `original` as OSUM saves it) into tmp_path/imported, with
    model.llm.path a directory holding `original`'s LLM config and a tokenizer (no weights), as for OSUM."""
    from osum_core.cli.main import main
    from osum_core.demo.tokenizer import train_demo_tokenizer

    llm_dir = tmp_path / "qwen2"
    original.causal_lm.config.save_pretrained(llm_dir)
    train_demo_tokenizer(["four two one", "转写这段音频"], ["<laugh>"], 60).save_pretrained(llm_dir)
    torch.save(osum_state(original) if state is None else state, tmp_path / "infer.pt")
    args = ["import-osum", str(tmp_path / "infer.pt"), "--out", str(tmp_path / "imported"),
            *(["--encoder-heads", heads] if heads else []),
            f"model.llm.path={llm_dir}", "model.encoder.dtype=float32", "model.llm.dtype=float32",
            *[o for o in OSUM_SHAPED if not o.startswith(("model.encoder.config", "model.llm.config"))],
            "model.adapter.ffn_size=512", *overrides]
    return main(args)


def test_import_osum_cli_writes_a_checkpoint_that_predict_and_test_load(original, tmp_path):
    from osum_core.checkpoints.loading import load_checkpoint

    out = tmp_path / "imported"
    assert import_osum(tmp_path, original) == 0
    report = (out / "import_report.txt").read_text()
    assert "speaker_head.weight" in report
    assert report_counts(report)["source keys"] == len(torch.load(tmp_path / "infer.pt", weights_only=True))
    assert "cast to" not in report  # float32 checkpoint, float32 model
    assert "lora alpha 32: from the preset (model.llm.lora.alpha), the checkpoint does not store it" in report
    assert "lora dropout 0.1: from the preset (model.llm.lora.dropout)" in report
    assert "encoder attention heads 4: from --encoder-heads" in report
    imported = load_checkpoint(out).model
    loaded = canonical_state_dict(imported)
    for key, tensor in canonical_state_dict(original).items():
        assert torch.equal(loaded[key], tensor), key
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(imported(**batch)["token_loss"], original(**batch)["token_loss"])


def test_import_osum_report_names_the_dtype_it_casts_to(original, tmp_path):
    state = osum_state(original)  # float32, as the tiny model is
    assert import_osum(tmp_path, original, "model.encoder.dtype=bfloat16", state=state) == 0
    report = (tmp_path / "imported" / "import_report.txt").read_text()
    encoder_keys = [key for key in state if key.startswith("encoder.")]
    assert f"cast to bfloat16 from float32: {len(encoder_keys)} tensors (encoder.*)" in report.splitlines()
    assert "encoder dtype bfloat16: from the preset (model.encoder.dtype)" in report


def test_import_osum_cli_refuses_a_checkpoint_that_lacks_tensors(original, tmp_path, capsys):
    state = osum_state(original)
    del state["speech_llama_proj.bias"]
    assert import_osum(tmp_path, original, state=state) == 2
    assert "adapter.projection.bias" in capsys.readouterr().err and not (tmp_path / "imported" / "osum.yaml").exists()


def test_import_osum_cli_asks_for_encoder_heads_of_an_unknown_width(original, tmp_path, capsys):
    width = original.encoder.output_size
    assert width not in (384, 512, 768, 1024, 1280)  # no Whisper size: its head count is not known
    assert import_osum(tmp_path, original, heads=None) == 2
    err = capsys.readouterr().err
    assert f"{width}-wide encoder" in err and "--encoder-heads N" in err and "attention_heads=" not in err


@pytest.mark.parametrize("key", ["model.llm.path", "model.llm.tokenizer"])
def test_import_osum_cli_names_an_id_it_cannot_download(original, tmp_path, capsys, monkeypatch, key):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable when imported (already done): set what it read, or it retries for 25 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert import_osum(tmp_path, original, f"{key}=no-such-org/no-such-model") == 2
    err = capsys.readouterr().err
    assert "no-such-org/no-such-model" in err and f"config key '{key}'" in err and "local directory" in err


# --- against independent code and OSUM's stated facts ---------------------------------------------------------

# OSUM.md 1.2: convert_whisper_to_wenet_config_and_ckpt.py's renames (the position table gets a leading 1).
OSUM_MD_WENET_RENAMES = [
    ("encoder.conv1", "encoder.embed.conv.0"), ("encoder.conv2", "encoder.embed.conv.2"),
    ("encoder.blocks", "encoder.encoders"), (".attn.query", ".self_attn.linear_q"), (".attn.key", ".self_attn.linear_k"),
    (".attn.value", ".self_attn.linear_v"), (".attn.out", ".self_attn.linear_out"), ("mlp.0", "feed_forward.w_1"),
    ("mlp.2", "feed_forward.w_2"), ("attn_ln", "norm1"), ("mlp_ln", "norm2"), ("encoder.ln_post", "encoder.after_norm"),
    ("encoder.positional_embedding", "encoder.embed.pos_enc.pe"),
]


def as_wenet_by_osum_md(openai_state):
    state = {}
    for key, tensor in openai_state.items():
        if key.startswith("encoder."):
            for old, new in OSUM_MD_WENET_RENAMES:
                key = key.replace(old, new)
            state[key] = tensor[None] if key == "encoder.embed.pos_enc.pe" else tensor
    return state


@pytest.mark.parametrize("layout", ["openai", "wenet"])
def test_whisper_file_gives_openai_whispers_own_encoder_output(tmp_path, layout):
    """openai-whisper's own `AudioEncoder` (the code that defines the layout), saved as its `.pt` files are
    (dims + the whole model's state dict in float16), or converted to WeNet's names as OSUM.md says OSUM's
    script does, gives what osum's encoder gives from that file."""
    from dataclasses import asdict

    from whisper.model import ModelDimensions, Whisper  # openai-whisper, the test extra

    dims = ModelDimensions(n_mels=80, n_audio_ctx=100, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                           n_vocab=50, n_text_ctx=8, n_text_state=64, n_text_head=4, n_text_layer=1)
    torch.manual_seed(0)
    whisper = Whisper(dims)
    with torch.no_grad():
        for module in whisper.modules():
            for name, param in module.named_parameters(recurse=False):
                layer_norm_weight = isinstance(module, torch.nn.LayerNorm) and name == "weight"
                param.normal_(mean=1.0 if layer_norm_weight else 0.0, std=0.1)
    whisper.half()  # OpenAI's released files hold float16 weights
    if layout == "openai":
        torch.save({"dims": asdict(dims), "model_state_dict": whisper.state_dict()}, tmp_path / "tiny.pt")
    else:
        torch.save(as_wenet_by_osum_md(whisper.state_dict()), tmp_path / "tiny.pt")

    # The head count: from dims (OpenAI), given for WeNet's file (64 is no Whisper width).
    heads = None if layout == "openai" else 4
    ours = SpeechEncoder.from_pretrained(str(tmp_path / "tiny.pt"), conv_strides=(1, 2), attention_heads=heads).eval()
    assert ours.whisper.config.encoder_attention_heads == 4
    mel = torch.randn(2, 80, 2 * dims.n_audio_ctx)  # openai-whisper takes exactly n_audio_ctx * 2 frames
    with torch.no_grad():
        theirs = whisper.float().encoder(mel)
        states, lengths = ours(mel.transpose(1, 2), torch.tensor([mel.shape[-1]] * 2))
    assert lengths.tolist() == [dims.n_audio_ctx] * 2
    torch.testing.assert_close(states, theirs, atol=1e-5, rtol=1e-5)


class WenetAttention(torch.nn.Module):
    """WeNet's `MultiHeadedAttention` (OSUM.md 1.3: biases on q, k and v): scores over sqrt(d_k), padded
    keys masked."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (torch.nn.Linear(width, width) for _ in range(4))

    def forward(self, x, keep):
        batch, steps, width = x.shape

        def split(linear):
            return linear(x).view(batch, steps, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.linear_q), split(self.linear_k), split(self.linear_v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(width // self.heads)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        return self.linear_out((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, steps, width))


class WenetLayer(torch.nn.Module):
    """Pre-norm `TransformerEncoderLayer` with WeNet's default ReLU feed-forward (OSUM.md 1.3)."""

    def __init__(self, width, heads, ffn):
        super().__init__()
        self.self_attn = WenetAttention(width, heads)
        self.feed_forward = torch.nn.Module()
        self.feed_forward.w_1, self.feed_forward.w_2 = torch.nn.Linear(width, ffn), torch.nn.Linear(ffn, width)
        self.norm1, self.norm2 = torch.nn.LayerNorm(width, eps=1e-5), torch.nn.LayerNorm(width, eps=1e-5)

    def forward(self, x, keep):
        x = x + self.self_attn(self.norm1(x), keep)
        return x + self.feed_forward.w_2(torch.relu(self.feed_forward.w_1(self.norm2(x))))


class OsumAdapter(torch.nn.Module):
    """OSUM's adapter written from OSUM.md 1.3 alone, with its module names (so its state dict has OSUM's
    keys): `down_sample_2` = 3 x (ConstantPad1d((2, 0)), Conv1d(k3, stride 1/2/2), GELU), its padding mask
    subsampled by [0::2] twice; `speech_transformer` = Linear -> LayerNorm, x * sqrt(d) + sinusoids (max_len
    5000), pre-norm layers, `after_norm`; `speech_llama_proj`. LayerNorm eps 1e-5 is WeNet's default
    (`norm_eps`; OSUM.md does not state it)."""

    def __init__(self, width, llm_width, heads, ffn, layers):
        super().__init__()
        self.down_sample_2 = torch.nn.Module()
        self.down_sample_2.conv = torch.nn.Sequential(*[
            part for stride in (1, 2, 2)
            for part in (torch.nn.ConstantPad1d((2, 0), 0.0), torch.nn.Conv1d(width, width, 3, stride), torch.nn.GELU())
        ])
        self.speech_transformer = torch.nn.Module()
        self.speech_transformer.embed = torch.nn.Module()
        self.speech_transformer.embed.out = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.LayerNorm(width, eps=1e-5))
        self.speech_transformer.embed.pos_enc = torch.nn.Module()
        self.speech_transformer.embed.pos_enc.register_buffer("pe", wenet_positions(5000, width))
        self.speech_transformer.encoders = torch.nn.ModuleList(WenetLayer(width, heads, ffn) for _ in range(layers))
        self.speech_transformer.after_norm = torch.nn.LayerNorm(width, eps=1e-5)
        self.speech_llama_proj = torch.nn.Linear(width, llm_width)

    def forward(self, x, lengths):
        keep = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        x = self.down_sample_2.conv(x.transpose(1, 2)).transpose(1, 2)
        keep = keep[:, 0::2][:, 0::2]
        transformer = self.speech_transformer
        x = transformer.embed.out(x) * math.sqrt(x.shape[-1]) + transformer.embed.pos_enc.pe[:, : x.shape[1]]
        for layer in transformer.encoders:
            x = layer(x, keep)
        return self.speech_llama_proj(transformer.after_norm(x)), keep.sum(dim=1)


def test_osum_adapter_imports_as_osum_md_describes_it():
    from osum_core.model.adapter import SpeechAdapter
    from osum_core.model.layout import build_layout

    torch.manual_seed(0)
    reference = OsumAdapter(32, 48, heads=4, ffn=64, layers=2).eval()
    randomise(reference)
    speech_token_num = 5  # OSUM: 4097; its table has speech_token_num + 2 rows
    table = torch.randn(speech_token_num + 2, 48)
    state = {**reference.state_dict(), "speech_token_emded.weight": table}
    adapter = SpeechAdapter(32, 48, conv_strides=(1, 2, 2), layers=2, heads=4, ffn_size=64, dropout=0.0).eval()
    expected = {"adapter." + key: tensor for key, tensor in adapter.state_dict().items()}
    expected["speech_markers"] = torch.zeros(2, 48)

    result = convert_osum_state_dict(state, expected, source="infer.pt")
    assert (result.unmapped, result.missing, result.unexpected, result.notes) == ([], [], {}, []), result.report()
    adapter.load_state_dict({key.removeprefix("adapter."): t for key, t in result.state.items() if key != "speech_markers"})
    # LayerNorm eps 1e-5 everywhere, as WeNet's (OSUM.md does not state it).
    assert {m.eps for m in adapter.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}

    states, lengths = torch.randn(3, 23, 32), torch.tensor([23, 14, 1])
    with torch.no_grad():
        expected_out, expected_lengths = reference(states, lengths)
        out, out_lengths = adapter(states, lengths)
    assert expected_lengths.tolist() == out_lengths.tolist() == [6, 4, 1]  # ceil(ceil(T / 2) / 2)
    keep = torch.arange(out.shape[1])[None, :] < out_lengths[:, None]
    torch.testing.assert_close(out[keep], expected_out[keep], atol=1e-5, rtol=1e-5)

    # Rows speech_token_num + 0 and + 1 are the speech BOS and EOS: BOS just before the speech, EOS after it.
    markers = result.state["speech_markers"]
    prompt, speech = torch.randn(1, 3, 48), torch.randn(1, 4, 48)
    layout = build_layout(prompt, torch.tensor([3]), speech, torch.tensor([4]), markers)
    assert torch.equal(layout.embeds[0, 3], table[speech_token_num])
    assert torch.equal(layout.embeds[0, 3 + 1 + 4], table[speech_token_num + 1])

"""Both of torch.save's formats load on every path that reads a torch file (`osum fit --resume`, `osum fit
--init` with a Whisper `.pt` as model.encoder.path, `osum test --ckpt`, `osum import-osum`): the zip format
and the legacy one (`_use_new_zipfile_serialization=False`, which cannot be memory-mapped). A plain pickle, or
a damaged file, is refused with one line that names the file."""

import pickle
import shutil

import pytest
import torch
from conftest import TINY, data_args
from test_checkpoint_import import openai_encoder_state, osum_state
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from osum_core.checkpoints.loading import load_checkpoint
from osum_core.checkpoints.osum_import import read_osum_checkpoint
from osum_core.checkpoints.state_keys import canonical_state_dict
from osum_core.cli.main import main
from osum_core.config import fit_config
from osum_core.model.encoder import SpeechEncoder
from osum_core.model.safe_load import NotATorchFile, safe_load


def as_legacy(path):
    """`path` re-saved in torch's legacy (non-zip) format."""
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    assert not path.read_bytes().startswith(b"PK")
    return path


def as_plain_pickle(path):
    """`path`'s contents written with pickle.dump instead of torch.save."""
    contents = torch.load(path, weights_only=True)
    with open(path, "wb") as file:
        pickle.dump(contents, file)
    return path


def refused_in_one_line(capsys, path):
    err = capsys.readouterr().err
    assert err.startswith(f"osum: error: {path}: not a") and err.count("\n") == 1, err
    assert "torch.save did not write it" in err and "weights_only=False" not in err


@pytest.fixture
def run(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def test_resume_continues_from_a_legacy_format_checkpoint(run):
    as_legacy(run / "checkpoints" / "last.ckpt")
    assert main(["fit", "--resume", str(run), "trainer.max_steps=10"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


def test_resume_refuses_a_plain_pickle_in_one_line(run, capsys):
    last = as_plain_pickle(run / "checkpoints" / "last.ckpt")
    assert main(["fit", "--resume", str(run), "trainer.max_steps=10"]) == 2
    refused_in_one_line(capsys, last)


def test_ckpt_of_a_run_loads_a_legacy_format_checkpoint_and_refuses_a_plain_pickle(run, run_dir, tmp_path, capsys):
    as_legacy(run / "checkpoints" / "last.ckpt")
    loaded = canonical_state_dict(load_checkpoint(run).model)
    for key, tensor in canonical_state_dict(load_checkpoint(run_dir).model).items():
        assert torch.equal(loaded[key], tensor), key
    last = as_plain_pickle(run / "checkpoints" / "last.ckpt")
    assert main(["test", "--ckpt", str(run), "--tasks", "asr,ved", "--out", str(tmp_path / "t")]) == 2
    refused_in_one_line(capsys, last)


def test_import_osum_reads_a_legacy_format_file_and_refuses_a_plain_pickle(tmp_path, capsys):
    from test_checkpoint_import import osum_model

    state = osum_state(osum_model(seed=0))
    torch.save(state, tmp_path / "infer.pt", _use_new_zipfile_serialization=False)
    read = read_osum_checkpoint(tmp_path / "infer.pt")
    assert list(read) == list(state) and all(torch.equal(read[key], state[key]) for key in state)
    evil = as_plain_pickle(tmp_path / "infer.pt")
    assert main(["import-osum", str(evil), "--out", str(tmp_path / "out")]) == 2
    refused_in_one_line(capsys, evil)


def whisper_file(path, config: WhisperConfig):
    """An openai-whisper style .pt of a random encoder with `config`'s sizes."""
    dims = {"n_mels": config.num_mel_bins, "n_audio_ctx": config.max_source_positions, "n_audio_state": config.d_model,
            "n_audio_head": config.encoder_attention_heads, "n_audio_layer": config.encoder_layers}
    torch.save({"dims": dims, "model_state_dict": openai_encoder_state(WhisperEncoder(config).state_dict())}, path)
    return path


def test_whisper_encoder_file_of_either_format_loads_and_a_plain_pickle_is_refused(tmp_path):
    config = WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=64,
                           max_source_positions=50)
    path = whisper_file(tmp_path / "tiny.pt", config)
    zipped = SpeechEncoder.from_pretrained(str(path)).state_dict()
    legacy = SpeechEncoder.from_pretrained(str(as_legacy(path))).state_dict()
    assert all(torch.equal(legacy[key], tensor) for key, tensor in zipped.items())
    with pytest.raises(NotATorchFile, match=r"tiny\.pt: not a Whisper checkpoint: torch\.save did not write it"):
        SpeechEncoder.from_pretrained(str(as_plain_pickle(path)))


def test_fit_init_with_a_whisper_encoder_file_of_either_format(exported, tiny_corpus, tmp_path, capsys):
    config = WhisperConfig(**fit_config(overrides=TINY)["model"]["encoder"]["config"])
    encoder = as_legacy(whisper_file(tmp_path / "whisper.pt", config))
    args = ["fit", "--tasks", "asr,ved", "--init", str(exported), *data_args(tiny_corpus), *TINY,
            "trainer.max_steps=1", "trainer.val_check_interval=1", f"model.encoder.path={encoder}"]
    assert main([*args, "--out", str(tmp_path / "legacy")]) == 0
    as_plain_pickle(encoder)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "pickle")]) == 2
    refused_in_one_line(capsys, encoder)


@pytest.mark.parametrize("damage", ["truncated zip", "truncated legacy", "empty", "text", "pickled plain data"])
def test_a_damaged_or_foreign_file_is_one_error_naming_it(tmp_path, damage):
    path = tmp_path / "weights.pt"
    if damage == "truncated zip":
        torch.save({"w": torch.ones(100)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "truncated legacy":
        torch.save({"w": torch.ones(100)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:-50])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("dims: 80\n")
    else:
        path.write_bytes(pickle.dumps({"state_dict": {"w": [0.0, 1.0]}}, protocol=2))
    with pytest.raises(NotATorchFile) as error:
        safe_load(path, "checkpoint to resume", mmap=True)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "weights_only=False" not in message

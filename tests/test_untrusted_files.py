"""No code runs from an untrusted file: a pickle that would run code, given to each load path (`--resume`,
`osum test --ckpt` of a run, `import-osum`, a Whisper `.pt` encoder), is refused with a message that names
the file, says it is not a safe checkpoint, and never suggests weights_only=False; the code never ran."""

import shutil

import pytest
import torch

from osum_core.cli.main import main
from osum_core.model.whisper_weights import read_encoder_checkpoint


class Payload:
    """Unpickling this opens (creates) a file: code that a safe load must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious(path, marker, wrap=lambda x: x):
    torch.save(wrap({"weight": torch.zeros(2), "payload": Payload(marker)}), path)
    return path


def refused(capsys, path, marker):
    err = capsys.readouterr().err
    assert f"{path}: not a safe" in err and "weights_only=False" not in err and "(it names io.open)" in err
    assert not marker.exists(), "the file's code ran"


def test_resume_refuses_a_pickle_that_runs_code(run_dir, tmp_path, capsys):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    malicious(run / "checkpoints" / "last.ckpt", marker, wrap=lambda x: {"state_dict": x})
    assert main(["fit", "--resume", str(run)]) == 2
    refused(capsys, run / "checkpoints" / "last.ckpt", marker)
    assert main(["test", "--ckpt", str(run), "--tasks", "asr,ved", "--out", str(tmp_path / "t")]) == 2
    refused(capsys, run / "checkpoints" / "last.ckpt", marker)


def test_import_osum_and_whisper_encoders_refuse_it_too(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = malicious(tmp_path / "infer.pt", marker)
    assert main(["import-osum", str(evil), "--out", str(tmp_path / "out")]) == 2
    refused(capsys, evil, marker)
    with pytest.raises(ValueError, match=r"infer.pt: not a safe Whisper checkpoint") as error:
        read_encoder_checkpoint(evil)
    assert "weights_only=False" not in str(error.value) and not marker.exists()

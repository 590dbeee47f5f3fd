"""Atomic saves (`osum_core.checkpoints.atomic`): a checkpoint or export killed, failing or out of disk
part-way leaves the previous one whole and loadable and no half-written file that osum would pick up."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch

import osum_core.checkpoints.atomic as atomic
import osum_core.checkpoints.directory as directory
from osum_core.checkpoints.atomic import AtomicCheckpointIO, DiskFullError, atomic_write
from osum_core.checkpoints.loading import load_checkpoint
from osum_core.checkpoints.run_dir import find_run_checkpoint, resume_checkpoint

INTACT = "the previous file at that path is intact"


def checkpoint(step: int) -> dict:
    """A small stand-in for Lightning's checkpoint dict."""
    return {"state_dict": {"model.w": torch.full((64, 64), float(step))}, "global_step": step, "epoch": 0}


@pytest.fixture
def last(tmp_path) -> Path:
    """A run directory's checkpoints/last.ckpt, saved once (step 1) by the plugin."""
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1), path)
    return path


def assert_step(path: Path, step: int) -> None:
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == step and torch.equal(loaded["state_dict"]["model.w"], checkpoint(step)["state_dict"]["model.w"])


class Filling:
    """A stream onto a disk with `room` bytes left: the write that would pass it fails with ENOSPC."""

    def __init__(self, stream, room: int, code: int = errno.ENOSPC) -> None:
        self.stream, self.room, self.code = stream, room, code

    def write(self, data) -> int:
        if len(data) > self.room:
            self.stream.write(bytes(data)[: self.room])
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


def test_a_normal_save_round_trips_and_replaces_the_previous(last):
    assert_step(last, 1)
    AtomicCheckpointIO().save_checkpoint(checkpoint(2), last)
    assert_step(last, 2)
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 2
    assert os.listdir(last.parent) == ["last.ckpt"]


def test_the_trainer_saves_through_the_plugin():
    trainer = L.Trainer(accelerator="cpu", plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(last):
    before = last.read_bytes()
    # Another process writes half of step 2's checkpoint into the file and dies (kill -9 during the write).
    script = textwrap.dedent("""
        import io, os, sys, torch
        from osum_core.checkpoints.atomic import AtomicCheckpointIO
        real_save = torch.save
        def dying_save(obj, stream):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            stream.flush()
            os._exit(9)
        torch.save = dying_save
        step = {"state_dict": {"model.w": torch.full((64, 64), 2.0)}, "global_step": 2, "epoch": 0}
        AtomicCheckpointIO().save_checkpoint(step, sys.argv[1])
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(last)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert last.read_bytes() == before
    assert_step(last, 1)
    run = last.parent.parent
    assert sorted(p.name for p in last.parent.glob("*.ckpt")) == ["last.ckpt"]
    assert find_run_checkpoint(run)[1] == last and resume_checkpoint(str(run)) == str(last)
    (stray,) = [p for p in last.parent.iterdir() if p.name != "last.ckpt"]
    assert stray.name.startswith(".last.ckpt.partial-") and stray.stat().st_size > 0

    # The resumed run's next save removes the dead process's temporary.
    AtomicCheckpointIO().save_checkpoint(checkpoint(3), last)
    assert_step(last, 3)
    assert os.listdir(last.parent) == ["last.ckpt"]


def test_a_write_that_fails_half_way_is_removed_and_its_error_raised(last):
    before = last.read_bytes()

    def half_then_fail(stream) -> None:
        stream.write(before[: len(before) // 2])
        raise RuntimeError("serialisation failed")

    with pytest.raises(RuntimeError, match="serialisation failed"):
        atomic_write(last, half_then_fail)
    assert last.read_bytes() == before and os.listdir(last.parent) == ["last.ckpt"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(last, monkeypatch, code):
    before = last.read_bytes()
    real_save = torch.save
    # torch.save's own reaction to the failed write: a RuntimeError whose context is the OSError.
    monkeypatch.setattr(torch, "save", lambda obj, stream: real_save(obj, Filling(stream, len(before) // 2, code)))
    with pytest.raises(DiskFullError) as raised:
        AtomicCheckpointIO().save_checkpoint(checkpoint(2), last)
    error = raised.value
    assert isinstance(error, OSError) and error.errno == code and error.previous_intact
    assert str(last) in str(error) and INTACT in str(error)
    assert last.read_bytes() == before and os.listdir(last.parent) == ["last.ckpt"]
    assert_step(last, 1)


def test_a_full_disk_on_a_first_save_says_nothing_was_there(tmp_path):
    target = tmp_path / "last.ckpt"

    def fill(stream) -> None:
        Filling(stream, 10).write(b"x" * 100)

    with pytest.raises(DiskFullError, match="there was no file at that path before") as raised:
        atomic_write(target, fill)
    assert not raised.value.previous_intact and os.listdir(tmp_path) == []


# -- the export directory ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A tiny randomly initialised model, its tokenizer and config (the demo preset, one layer each)."""
    from osum_core.config.load import fit_config
    from osum_core.model.build import build_for_tokenizer
    from osum_core.train.batch_sizes import trial_tokenizer

    cfg = fit_config(overrides=["model.encoder.config.encoder_layers=1", "model.llm.config.num_hidden_layers=1"])
    tokenizer = trial_tokenizer(cfg)
    return build_for_tokenizer(cfg["model"], tokenizer).eval(), tokenizer, cfg


def export(tiny, out: Path, **options) -> dict:
    model, tokenizer, cfg = tiny
    return directory.save_checkpoint_dir(model, tokenizer, cfg, ["asr"], out, source="test", **options)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def failing_save_file(message: str):
    """safetensors' save_file that writes half of the file, then fails with `message`."""

    def save_file(tensors, filename, metadata=None) -> None:
        data = safetensors.torch.save(tensors, metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise RuntimeError(message)

    return save_file


# What safetensors (also inside save_pretrained) raises when the disk fills.
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.mark.parametrize("message", ["interrupted", SAFETENSORS_FULL])
def test_an_interrupted_export_leaves_the_previous_export(tiny, tmp_path, monkeypatch, message):
    out = tmp_path / "demo"
    info = export(tiny, out)
    before = files_of(out)
    monkeypatch.setattr(directory, "save_file", failing_save_file(message))
    expected = DiskFullError if message == SAFETENSORS_FULL else RuntimeError
    with pytest.raises(expected) as raised:
        export(tiny, out, overwrite=True)
    if expected is DiskFullError:
        assert str(out) in str(raised.value) and "the previous folder at that path is intact" in str(raised.value)
    assert files_of(out) == before and os.listdir(tmp_path) == ["demo"]
    monkeypatch.undo()
    assert load_checkpoint(out).checksum == info["sha256"]


def test_an_interrupted_first_export_leaves_nothing_to_load(tiny, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setattr(directory, "save_file", failing_save_file("interrupted"))
    with pytest.raises(RuntimeError, match="interrupted"):
        export(tiny, out)
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        load_checkpoint(out)


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "two-renames"])
def test_an_export_replaces_a_previous_one_whole(tiny, tmp_path, monkeypatch, swap):
    if not swap:  # a filesystem without RENAME_EXCHANGE
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "demo"
    export(tiny, out, extra_files={"import_report.txt": "report\n"})
    assert (out / "import_report.txt").read_text() == "report\n"
    with pytest.raises(ValueError, match="holds an osum export already; give --overwrite"):
        export(tiny, out)  # never silently
    info = export(tiny, out, overwrite=True)
    assert not (out / "import_report.txt").exists()  # nothing of the previous export stays behind
    assert os.listdir(tmp_path) == ["demo"]
    assert load_checkpoint(out).checksum == info["sha256"]


def test_an_export_refuses_to_replace_what_is_not_an_export(tiny, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not an osum checkpoint directory"):
        export(tiny, out)
    assert files_of(out) == {"mine.txt": b"keep"} and os.listdir(tmp_path) == ["notes"]


def test_stale_temporaries_of_a_dead_process_are_removed(tmp_path):
    target = tmp_path / "last.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".last.ckpt{atomic.PARTIAL}{atomic.socket.gethostname()}-{pid}-abcdef"
    stale.write_bytes(b"half")
    other_host = tmp_path / f".last.ckpt{atomic.PARTIAL}elsewhere-{pid}-abcdef"
    other_host.write_bytes(b"maybe still writing")
    atomic_write(target, lambda stream: stream.write(b"whole"))
    assert target.read_bytes() == b"whole" and not stale.exists() and other_host.exists()


def test_a_temporary_cannot_pass_for_a_checkpoint(tmp_path):
    name = atomic.partial_path(tmp_path / "last.ckpt").name
    assert name.startswith(".last.ckpt.partial-") and not name.endswith((".ckpt", ".safetensors"))

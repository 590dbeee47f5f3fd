"""Shared fixtures: a tiny demo corpus and tiny Whisper/Qwen2 models saved in the real formats."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from osum_core.cli.main import main
from osum_core.config import load_config
from osum_core.demo.corpus import synthesize_corpus
from osum_core.plugins import CorpusSpec, load_tasks

# Under pytest-xdist (`make test` runs one worker per core) each worker and every process it starts computes on
# one thread: two workers of two threads each on two cores would spend their time waiting for each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

RUN_TIMEOUT = 600  # seconds: a whole `osum fit` of the tests takes well under a minute alone
# Every Python process of a run dumps its threads' stacks on SIGABRT, and prints at once (no output lost to a kill).
RUN_ENV = {"PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}


def stop_group(process: subprocess.Popen) -> None:
    """SIGKILL every process of `process`'s session (ranks, dataloader workers), if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_process(command: list[str], timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    """`command` to its end, its output captured, in a session of its own. A run still going after `timeout`
    (a hung rank, or a process it started that outlives it holding the output pipes) is made to dump every
    thread's stack (SIGABRT), then killed with every process it started, and the test fails with that
    output, rather than the suite waiting forever."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                          text=True, errors="replace", env={**(env or os.environ), **RUN_ENV}, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            exited = process.poll()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGABRT)
            try:
                stdout, stderr = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                stop_group(process)
                stdout, stderr = process.communicate(timeout=30)
            what = ("still running" if exited is None else
                    f"exited ({exited}) but processes it started still held its output")
            raise AssertionError(f"{' '.join(command[:6])} ... {what} after {timeout} s; stacks dumped, killed. "
                                 f"Its output:\n{stdout[-2000:]}\n{stderr[-8000:]}") from None
        except BaseException:  # interrupted (pytest-timeout, Ctrl-C): no process of it is left behind
            stop_group(process)
            raise
        finally:
            stop_group(process)  # a worker or rank left over after the run ended
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


DEMO = load_config()["data"]["demo"]  # the corpus settings of configs/fit.yaml


def corpus_spec(tags: tuple[str, ...], seed: int, **changes) -> CorpusSpec:
    """The configured demo corpus for `tags`, with `changes` (e.g. train_per_task=24)."""
    return CorpusSpec.from_config({**DEMO, **changes}, seed, tags)


TINY_SPEC = corpus_spec(("<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>"), 3, train_per_task=24, eval_per_task=6)


@pytest.fixture(scope="session")
def registry():
    """The installed tasks and demo recipes, loaded as `osum` loads them."""
    return load_tasks()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, registry) -> Path:
    """A small demo corpus (ASR and VED) synthesised once per test session."""
    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, TINY_SPEC, registry.recipes, workers=1)
    return out


@pytest.fixture(scope="session")
def all_tasks_corpus(tmp_path_factory, registry) -> Path:
    """A very small demo corpus with every installed task that has a demo recipe."""
    out = tmp_path_factory.mktemp("corpus_all")
    tags = tuple(dict.fromkeys(t.tag for t in registry.tasks.values() if t.tag in registry.recipes))
    synthesize_corpus(out, corpus_spec(tags, 5, train_per_task=6, eval_per_task=2), registry.recipes, workers=2)
    return out


# A tiny `osum fit` (a few steps of a one-layer model), shared by the checkpoint and inference tests.
TINY = [
    "trainer.max_steps=8",
    "trainer.val_check_interval=8",
    "trainer.enable_progress_bar=false",
    "trainer.max_time=null",
    "data.num_workers=0",
    "eval.generation.max_new_tokens=6",
    "model.encoder.config.encoder_layers=1",
    "model.llm.config.num_hidden_layers=1",
    "loss.ce_start_step=0",
    "optim.lr=3e-3",
]


# The shapes where real runs live, in miniature (with `two_sources` as data.train): several sort windows of
# 8 items, two duration buckets, two weighted sources, and a seed whose epochs differ in batch count (with 0
# and with 2 dataloader workers, a later epoch is longer than the first).
RUN_SHAPE = [
    "seed=7", "data.sort_window=8",
    "data.buckets=[{max_seconds: 1.5, batch_size: 5}, {max_seconds: 30, max_frames: 900, max_tokens: 1200}]",
]


@pytest.fixture(scope="session")
def two_sources(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """The tiny corpus's train split as a mixture of two sources, ASR (weight 2) and VED (weight 1): as
    manifests ("manifest") and as tar shards of 5 items ("shards")."""
    import json

    out = tmp_path_factory.mktemp("two_sources")
    lines = [json.loads(x) for x in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    for name, tag in (("asr", "<TRANSCRIBE>"), ("ved", "<TRANSCRIBE> <CAPTION>")):
        rows = [{**x, "wav": str(tiny_corpus / x["wav"])} for x in lines if x["task"] == tag]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        assert main(["data", "shard", str(out / f"{name}.jsonl"), str(out / f"{name}_shards"), "--per-shard", "5",
                     "--quiet"]) == 0
    (out / "manifests.yaml").write_text("asr: {path: asr.jsonl, weight: 2}\nved: {path: ved.jsonl, weight: 1}\n")
    (out / "shards.yaml").write_text("asr: {path: asr_shards/shards.list, weight: 2}\n"
                                     "ved: {path: ved_shards/shards.list, weight: 1}\n")
    return {"manifest": out / "manifests.yaml", "shards": out / "shards.yaml"}


def data_args(corpus: Path) -> list[str]:
    return [f"data.{k}={corpus / f'{s}.jsonl'}" for k, s in (("train", "train"), ("val", "dev"), ("test", "test"))]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tiny_corpus) -> Path:
    """A run directory of `osum fit --tasks asr,ved` on the tiny corpus."""
    run = tmp_path_factory.mktemp("run") / "asr_ved"
    assert main(["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY]) == 0
    return run


@pytest.fixture(scope="session")
def exported(run_dir, tmp_path_factory) -> Path:
    """`osum export` of that run."""
    out = tmp_path_factory.mktemp("export") / "demo"
    assert main(["export", "--ckpt", str(run_dir), "--out", str(out)]) == 0
    return out


def wav_bytes(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    """Noise (never silent: all-zero audio is a bad item) as 16-bit WAV bytes."""
    samples = (np.random.default_rng(0).standard_normal((int(seconds * rate), channels)) * 0.1).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of (member name, bytes), in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def stereo_44k(source: Path, out: Path) -> Path:
    import torchaudio

    wave, rate = soundfile.read(source, dtype="float32")
    resampled = torchaudio.functional.resample(torch.from_numpy(wave), rate, 44100).numpy()
    soundfile.write(out, np.stack([resampled, resampled], axis=1), 44100, format="FLAC")
    return out




@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield

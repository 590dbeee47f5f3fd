"""Starting `osum serve` for the tests: as the command a user runs, on a free loopback port."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import soundfile

# Decoding in the served tests: at least 4 tokens, so that answers are never empty (a model trained for a
# few steps would otherwise often stop at once, and empty answers would compare equal whatever happened).
DECODING = ["eval.generation.min_new_tokens=4", "eval.generation.max_new_tokens=8"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`osum serve --ckpt CKPT ARGS...` in a session of its own, its output in `log`."""

    def __init__(self, ckpt: Path, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "osum_core.cli.main", "serve", "--ckpt", str(ckpt), "--port", str(self.port),
                   *args]
        self.output = open(log, "w")
        self.process = subprocess.Popen(command, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"osum serve exited ({self.process.returncode}):\n{self.log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"osum serve not ready after {timeout} s:\n{self.log.read_text()[-4000:]}")

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        # The client retries 408/409/429/5xx by default: a test must see the first answer.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str) -> float:
        """A sample's value from /metrics (`name` with its labels as Prometheus writes them)."""
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {name} in:\n{text}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.output.close()


def audio_bytes(path: Path, format: str = "WAV", seconds: float | None = None) -> bytes:
    """The audio of `path` re-encoded as `format`, repeated or cut to `seconds` when given."""
    wave, rate = soundfile.read(path, dtype="float32")
    if seconds is not None:
        wave = np.resize(wave, int(seconds * rate))
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format=format)
    return buffer.getvalue()


def demo_files(corpus: Path, tag: str, count: int) -> list[Path]:
    lines = [json.loads(line) for line in (corpus / "test.jsonl").read_text().splitlines()]
    lines += [json.loads(line) for line in (corpus / "dev.jsonl").read_text().splitlines()]
    return [corpus / line["wav"] for line in lines if line["task"] == tag][:count]

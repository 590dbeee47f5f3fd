"""`osum serve` under load: requests per second, latency (p50/p95/p99) and the real-time factor of
/v1/audio/transcriptions with dynamic batching off (--max-batch 1) and on (--max-batch 16), at several
numbers of concurrent clients; and whether every answer equals the one-at-a-time answer (greedy decoding
does not depend on the batch, so a different answer is a bug).

    python bench/serve_load.py --ckpt runs/demo_export --audio data/demo/test.jsonl \\
        [--concurrency 1,4,16,64] [--requests 64] [--modes off,on] [--max-batch 16] [--batch-wait-ms 50] \\
        [key=value ...]          # passed to `osum serve`: eval.generation.max_new_tokens=8, serve.device=cpu

A checkpoint: `osum fit --tasks asr,ved --out runs/demo` then `osum export --ckpt runs/demo --out
runs/demo_export` (the demo corpus: `make demo`). --audio is a jsonl manifest (its lines' "wav", relative to
the manifest's folder or absolute) or a folder of .wav files; at most --files distinct files, sent round-robin.
key=value overrides go to the server: eval.generation.min_new_tokens=4 eval.generation.max_new_tokens=8 give
the answers a fixed-ish length (default: the checkpoint's own decoding).

For each mode one `osum serve` subprocess on a free loopback port (serve.max_queue above the largest
concurrency, so nothing is refused). First a reference pass: each file once, one request at a time (also the
warm-up); the first mode's answers are the reference. Then for each concurrency C, C client threads (an
`openai.OpenAI` client each, max_retries=0), each sends one warm-up request, then all start together and send
their share of the level's requests one after another (a closed loop): max(--requests, 2 C) requests, rounded
up to a multiple of C. Per level: requests/s, latency percentiles, errors (any non-200 or exception), wrong
answers (not the reference's), the mean decoded batch (osum_batch_size from /metrics), audio seconds per wall
second, the server's decoding seconds per audio second (osum_decode_seconds / osum_audio_seconds), and the CPU
seconds of the load generator (getrusage of this process) and of the server (/proc/PID/stat), which share the
machine's cores. Results go to bench/results/serve_load.json; a markdown table is printed. Bounded: the
defaults send under 1,000 requests per mode. Run it alone on the machine. Exit status 1 when any request
failed, got a wrong answer or never came back (the details are printed and in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai
import soundfile

ROOT = Path(__file__).resolve().parents[1]
MODES = {"off": "batching off (--max-batch 1)", "on": "batching on (--max-batch N)"}
KEPT_ERRORS = 5  # error messages kept per level (all are counted)


# -- the audio -------------------------------------------------------------------------------------------------
def audio_files(source: Path, limit: int) -> list[Path]:
    if source.is_dir():
        files = sorted(source.rglob("*.wav"))
    else:
        lines = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        files = [Path(line["wav"]) if Path(line["wav"]).is_absolute() else source.parent / line["wav"]
                 for line in lines]
    if not files:
        raise SystemExit(f"no audio in {source}")
    return files[:limit]


# -- the server ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`osum serve --ckpt CKPT ARGS...` on a free loopback port, in a session of its own, its output in `log`."""

    def __init__(self, ckpt: Path, args: list[str], log: Path, timeout: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [sys.executable, "-m", "osum_core.cli.main", "serve", "--ckpt", str(ckpt),
                        "--port", str(self.port), *args]
        self.output = open(log, "w")
        began = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=self.output, stderr=subprocess.STDOUT, cwd=ROOT,
                                        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.output.close()
                raise SystemExit(f"osum serve exited ({self.process.returncode}):\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            if time.monotonic() > deadline:
                self.kill()
                raise SystemExit(f"osum serve not ready after {timeout:g} s:\n{self.tail()}")
            time.sleep(0.2)
        self.startup_seconds = time.perf_counter() - began

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def client(self, timeout: float) -> openai.OpenAI:
        # max_retries=0: the benchmark must see every first answer (the client retries 429/5xx by default).
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=os.environ.get("OSUM_API_KEY", "unused"),
                             max_retries=0, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics: {'name{labels}': value}."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as answer:
            text = answer.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process (all its threads) and of any children."""
        try:
            import psutil

            process = psutil.Process(self.process.pid)
            processes = [process, *process.children(recursive=True)]
            return sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        except ImportError:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then its exit status (None: it had to be killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.output.close()


def model_id(server: Server) -> str:
    return server.client(60).models.list().data[0].id


# -- the load ----------------------------------------------------------------------------------------------------
class Tally:
    """Answers, latencies and errors of one level (filled by the client threads)."""

    def __init__(self, reference: dict[int, str] | None) -> None:
        self.reference = reference
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.answers: dict[int, str] = {}
        self.errors = 0
        self.wrong = 0
        self.error_messages: list[str] = []
        self.wrong_examples: list[dict[str, Any]] = []

    def send(self, client: openai.OpenAI, model: str, index: int, name: str, data: bytes, counted: bool) -> None:
        began = time.perf_counter()
        try:
            answer = client.audio.transcriptions.create(model=model, file=(name, data, "audio/wav"))
            text = (answer.model_extra or {}).get("osum", {}).get("text", answer.text)
        except Exception as error:  # noqa: BLE001 - every failure is counted and reported
            with self.lock:
                self.errors += 1
                if len(self.error_messages) < KEPT_ERRORS:
                    self.error_messages.append(f"{name}: {type(error).__name__}: {error}"[:500])
            return
        seconds = time.perf_counter() - began
        with self.lock:
            if counted:
                self.latencies.append(seconds)
            self.answers.setdefault(index, text)
            expected = None if self.reference is None else self.reference.get(index)
            if expected is not None and text != expected:
                self.wrong += 1
                if len(self.wrong_examples) < KEPT_ERRORS:
                    self.wrong_examples.append({"file": name, "expected": expected, "got": text})


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "p99_ms": round(float(p99), 1),
            "mean_ms": round(float(np.mean(values)) * 1000, 1)}


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def reference_pass(server: Server, model: str, audio: list[tuple[str, bytes, float]], reference: dict[int, str] | None,
                   timeout: float) -> dict[str, Any]:
    """Each file once, one request at a time: the reference answers (in the first mode) and the warm-up."""
    tally = Tally(reference)
    client = server.client(timeout)
    began = time.perf_counter()
    for index, (name, data, _) in enumerate(audio):
        tally.send(client, model, index, name, data, counted=True)
    return {"requests": len(audio), "seconds": round(time.perf_counter() - began, 2), "errors": tally.errors,
            "wrong": tally.wrong, "error_messages": tally.error_messages, "wrong_examples": tally.wrong_examples,
            **percentiles(tally.latencies), "answers": tally.answers}


def run_level(server: Server, model: str, audio: list[tuple[str, bytes, float]], reference: dict[int, str],
              concurrency: int, requests: int, timeout: float) -> dict[str, Any]:
    """`requests` requests (a multiple of `concurrency`) from `concurrency` client threads, each in a closed
    loop after one warm-up request; figures from the moment all are warmed up to the last answer."""
    per_client = requests // concurrency
    tally = Tally(reference)
    gate = threading.Barrier(concurrency + 1)

    def client_loop(n: int) -> None:
        client = server.client(timeout)
        name, data, _ = audio[n % len(audio)]
        tally.send(client, model, n % len(audio), name, data, counted=False)  # warm-up
        gate.wait()  # every client warmed up: the main thread takes its snapshots
        gate.wait()  # go
        for k in range(per_client):
            index = (n + k * concurrency) % len(audio)
            name, data, _ = audio[index]
            tally.send(client, model, index, name, data, counted=True)

    threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    gate.wait()
    tally.latencies.clear()
    warmup_errors, warmup_wrong = tally.errors, tally.wrong
    tally.errors = tally.wrong = 0
    metrics_before = server.metrics()
    server_cpu_before = server.cpu_seconds()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    gate.wait()
    deadline = began + timeout * per_client + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - began
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = server.cpu_seconds() - server_cpu_before
    metrics_after = server.metrics()
    hung = sum(thread.is_alive() for thread in threads)
    sent = [(n + k * concurrency) % len(audio) for n in range(concurrency) for k in range(per_client)]
    audio_seconds = sum(audio[index][2] for index in sent)
    batches = delta(metrics_after, metrics_before, "osum_batch_size_count")
    decode_seconds = delta(metrics_after, metrics_before, "osum_decode_seconds_total")
    decoded_audio = delta(metrics_after, metrics_before, "osum_audio_seconds_total")
    queue_count = delta(metrics_after, metrics_before, "osum_queue_seconds_count")
    with tally.lock:
        return {
            "concurrency": concurrency,
            "requests": requests,
            "answered": len(tally.latencies),
            "errors": tally.errors,
            "wrong": tally.wrong,
            "hung_clients": hung,
            "warmup_errors": warmup_errors,
            "warmup_wrong": warmup_wrong,
            "wall_seconds": round(wall, 3),
            "requests_per_second": round(len(tally.latencies) / wall, 3),
            **percentiles(list(tally.latencies)),
            "batches": int(batches),
            "mean_batch": round(delta(metrics_after, metrics_before, "osum_batch_size_sum") / batches, 2)
            if batches else None,
            "failed_batches": int(delta(metrics_after, metrics_before, 'osum_batches_total{outcome="failed"}')),
            "mean_queue_ms": round(delta(metrics_after, metrics_before, "osum_queue_seconds_sum") / queue_count * 1000,
                                   1) if queue_count else None,
            "audio_seconds": round(audio_seconds, 2),
            "audio_seconds_per_wall_second": round(audio_seconds / wall, 2),
            "decode_seconds": round(decode_seconds, 3),
            "decode_seconds_per_audio_second": round(decode_seconds / decoded_audio, 4) if decoded_audio else None,
            "server_non_200": {name: int(value) for name, value in metrics_after.items()
                               if name.startswith('osum_requests_total{endpoint="/v1/audio/transcriptions"')
                               and 'status="200"' not in name
                               and value - metrics_before.get(name, 0.0) > 0},
            "client_cpu_seconds": round(usage_after.ru_utime - usage_before.ru_utime
                                        + usage_after.ru_stime - usage_before.ru_stime, 2),
            "server_cpu_seconds": round(server_cpu, 2),
            "error_messages": tally.error_messages,
            "wrong_examples": tally.wrong_examples,
        }


# -- the report ------------------------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    head = ["mode", "concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors",
            "wrong", "audio s/s", "client CPU s", "server CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, run in results["modes"].items():
        for level in run["levels"]:
            cells = [mode, level["concurrency"], level["requests"], level["requests_per_second"], level["p50_ms"],
                     level["p95_ms"], level["p99_ms"], level["mean_batch"], level["errors"], level["wrong"],
                     level["audio_seconds_per_wall_second"], level["client_cpu_seconds"], level["server_cpu_seconds"]]
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    modes = results["modes"]
    if "off" not in modes or "on" not in modes:
        return []
    off = {level["concurrency"]: level for level in modes["off"]["levels"]}
    rows = []
    for level in modes["on"]["levels"]:
        base = off.get(level["concurrency"])
        if base is None:
            continue
        rows.append({"concurrency": level["concurrency"],
                     "throughput_on_over_off": round(level["requests_per_second"] / base["requests_per_second"], 2)
                     if base["requests_per_second"] else None,
                     "p95_ms_off": base["p95_ms"], "p95_ms_on": level["p95_ms"],
                     "p95_on_over_off": round(level["p95_ms"] / base["p95_ms"], 2)
                     if level["p95_ms"] and base["p95_ms"] else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--ckpt", type=Path, required=True, help="osum checkpoint directory (an export)")
    parser.add_argument("--audio", type=Path, required=True, help="jsonl manifest (its 'wav') or a folder of .wav")
    parser.add_argument("--files", type=int, default=64, help="at most this many distinct files (default 64)")
    parser.add_argument("--concurrency", default="1,4,16,64", help="concurrent clients per level (default 1,4,16,64)")
    parser.add_argument("--requests", type=int, default=64,
                        help="requests per level (default 64): max(this, 2 C), rounded up to a multiple of C")
    parser.add_argument("--modes", default="off,on", help="off (--max-batch 1), on (--max-batch N); default off,on")
    parser.add_argument("--max-batch", type=int, default=16, help="--max-batch of mode on (default 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=50.0, help="--batch-wait-ms of both modes (default 50)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default 300)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="passed to osum serve, e.g. eval.generation.max_new_tokens=8 serve.device=cpu")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"--modes are {', '.join(MODES)}, got {unknown}")
    if bad := [o for o in args.overrides if "=" not in o]:
        parser.error(f"overrides are key=value, got {bad}")
    if min(levels) < 1 or args.requests < 1:
        parser.error("--concurrency and --requests must be at least 1")

    files = audio_files(args.audio, args.files)
    audio = [(f.name, f.read_bytes(), soundfile.info(f).duration) for f in files]
    counts = {c: c * max(2, math.ceil(args.requests / c)) for c in levels}
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()},
        "ckpt": str(args.ckpt), "audio": str(args.audio), "files": len(audio),
        "audio_seconds_per_file": round(float(np.mean([a[2] for a in audio])), 3),
        "concurrency": levels, "requests_per_level": counts, "max_batch_on": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms, "overrides": args.overrides, "modes": {},
    }
    reference: dict[int, str] | None = None
    with tempfile.TemporaryDirectory() as scratch:
        for mode in modes:
            max_batch = 1 if mode == "off" else args.max_batch
            serve_args = ["--max-batch", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
                          f"serve.max_queue={max(256, 4 * max(levels))}", *args.overrides]
            print(f"{mode}: starting osum serve {' '.join(serve_args)}", flush=True)
            server = Server(args.ckpt, serve_args, Path(scratch) / f"serve-{mode}.log", timeout=args.timeout)
            run: dict[str, Any] = {"max_batch": max_batch, "command": server.command[1:],
                                   "startup_seconds": round(server.startup_seconds, 2), "levels": []}
            try:
                model = model_id(server)
                first = reference_pass(server, model, audio, reference, args.timeout)
                if reference is None:
                    reference = first["answers"]
                    if len(reference) < len(audio):
                        raise SystemExit(f"the reference pass got {len(reference)} answers for {len(audio)} files: "
                                         f"{first['error_messages']}\n{server.tail()}")
                    if not all(reference.values()):
                        print("warning: some reference answers are empty: equal answers then say little (give "
                              "eval.generation.min_new_tokens=4)", flush=True)
                run["reference_pass"] = {k: v for k, v in first.items() if k != "answers"}
                print(f"{mode}: reference pass, {len(audio)} files one at a time: {first['p50_ms']} ms p50, "
                      f"{first['errors']} errors, {first['wrong']} wrong", flush=True)
                for concurrency in levels:
                    level = run_level(server, model, audio, reference, concurrency, counts[concurrency], args.timeout)
                    run["levels"].append(level)
                    print(f"{mode} C={concurrency}: {level['requests']} requests, {level['requests_per_second']} "
                          f"req/s, p50 {level['p50_ms']} p95 {level['p95_ms']} p99 {level['p99_ms']} ms, mean batch "
                          f"{level['mean_batch']}, {level['errors']} errors, {level['wrong']} wrong"
                          + (f", {level['hung_clients']} clients still waiting" if level["hung_clients"] else ""),
                          flush=True)
                    for message in level["error_messages"]:
                        print(f"  error: {message}", flush=True)
                    for example in level["wrong_examples"]:
                        print(f"  wrong: {example}", flush=True)
            finally:
                run["exit_status"] = server.stop()
                run["log_tail"] = server.tail(2000)
                results["modes"][mode] = run
            if run["exit_status"] != 0:
                print(f"{mode}: osum serve exited with {run['exit_status']} after SIGTERM:\n{run['log_tail']}")
    results["on_over_off"] = ratios(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    if results["on_over_off"]:
        print()
        print("| concurrency | req/s on / off | p95 off ms | p95 on ms | p95 on / off |\n|---|---|---|---|---|")
        for row in results["on_over_off"]:
            print(f"| {row['concurrency']} | {row['throughput_on_over_off']} | {row['p95_ms_off']} | "
                  f"{row['p95_ms_on']} | {row['p95_on_over_off']} |")
    problems = sum(level["errors"] + level["wrong"] + level["hung_clients"] + level["warmup_errors"]
                   + level["warmup_wrong"] for run in results["modes"].values() for level in run["levels"])
    problems += sum(run.get("reference_pass", {}).get("errors", 0) + run.get("reference_pass", {}).get("wrong", 0)
                    for run in results["modes"].values())
    print(f"\n{problems} errors, wrong answers or hung clients in all; results in {args.out}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

"""How long `osum` takes to answer, as whole processes: `python bench/startup.py` (about a minute).

Times `osum --help`, `osum fit --help`, `osum tasks`, `osum data check --help` and `osum data check` on a
one-line manifest (one second of a quiet tone), each run `--repeats` times, the commands interleaved so that a
machine that speeds up or slows down affects them alike; prints the median and the spread, and whether the
command imported torch (one extra run of each, not timed). Results go to bench/results/startup.json.

The `osum` console script next to this Python is what runs (as a user runs it), from an empty folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs `osum` as the console script does, then says on stderr which heavy modules it imported.
REPORT_IMPORTS = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nIMPORTED=' + ','.join(m for m in ('torch', 'lightning', "
    "'transformers') if m in sys.modules) + '\\n'))\n"
    "from osum_core.cli.main import main\n"
    "sys.argv[0] = 'osum'\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def osum_command() -> list[str]:
    script = Path(sys.executable).parent / "osum"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "osum_core.cli.main"]


def tiny_manifest(folder: Path) -> Path:
    """One line naming one second of a 440 Hz tone (16 kHz, 16-bit mono), written with the standard library
    (`osum data check` refuses audio that is all zeros)."""
    audio = folder / "tone.wav"
    with wave.open(str(audio), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"".join(struct.pack("<h", round(3000 * math.sin(2 * math.pi * 440 * n / 16000)))
                                 for n in range(16000)))
    manifest = folder / "tiny.jsonl"
    line = {"key": "u1", "wav": str(audio), "txt": "one two", "task": "<TRANSCRIBE>", "duration": 1.0}
    manifest.write_text(json.dumps(line) + "\n", encoding="utf-8")
    return manifest


def timed(command: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-2000:]}")
    return seconds


def imported(arguments: list[str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", REPORT_IMPORTS, *arguments], capture_output=True, text=True,
                            cwd=cwd)
    line = next((x for x in result.stderr.splitlines() if x.startswith("IMPORTED=")), "IMPORTED=?")
    return line.removeprefix("IMPORTED=") or "none of them"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        manifest = tiny_manifest(folder)
        cases = {
            "osum --help": ["--help"],
            "osum fit --help": ["fit", "--help"],
            "osum tasks": ["tasks"],
            "osum data check --help": ["data", "check", "--help"],
            "osum data check (1 line)": ["data", "check", str(manifest), "--quiet"],
        }
        seconds: dict[str, list[float]] = {case: [] for case in cases}
        timed(osum_command() + ["--help"], folder)  # a first run reads the files from disk: not counted
        for _ in range(args.repeats):
            for case, arguments in cases.items():
                seconds[case].append(timed(osum_command() + arguments, folder))
        heavy = {case: imported(arguments, folder) for case, arguments in cases.items()}
    print("| command | median s | min-max s | imports (of torch, lightning, transformers) |")
    print("|---|---|---|---|")
    for case, times in seconds.items():
        print(f"| `{case}` | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} | {heavy[case]} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
               "osum": shutil.which("osum") or osum_command()[0]}
    out.write_text(json.dumps({"repeats": args.repeats, "seconds": seconds, "imports": heavy, "machine": machine},
                              indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

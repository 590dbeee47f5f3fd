"""DDP with 2 processes against 1 process on this machine: `python bench/ddp_scaling.py` (about 6 minutes).

Both train the demo model with `osum fit` on the same demo corpus, on all of the machine's cores: 1 process
with `threads=N`, or N processes (`trainer.strategy=ddp trainer.devices=N trainer.accelerator=cpu`, gloo)
with `threads=1` each. Each configuration runs twice, for `--short` and for `--long` steps, alternating
configurations; the difference of the two wall times is the time of the extra steps (start-up, corpus
check and test cancel out), and `data.log_keys` says how many utterances those steps trained.
throughput = utterances / second of training; ratio = DDP throughput / single-process throughput.
Results go to bench/results/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, steps: int, processes: int, corpus: str) -> tuple[float, int]:
    """(wall seconds of the whole command, utterances it trained)."""
    cores = os.cpu_count() or 2
    extra = (["threads=1", "trainer.strategy=ddp", f"trainer.devices={processes}", "trainer.accelerator=cpu"]
             if processes > 1 else [f"threads={cores}"])
    command = [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(out),
               f"trainer.max_steps={steps}", "trainer.max_time=null", "trainer.val_check_interval=100000",
               "trainer.limit_val_batches=0", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
               "data.log_keys=true", f"data.demo.dir={corpus}", *extra]
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    lines = [json.loads(x) for x in (out / "train_keys.jsonl").read_text().splitlines()]
    return seconds, sum(len(x["keys"]) for x in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory() as folder:
        corpus = str(Path(folder) / "corpus")
        run(Path(folder) / "warm", 1, 1, corpus)  # synthesises the corpus once
        for repeat in range(args.repeats):
            for name, processes in (("single", 1), ("ddp", args.processes)):
                short = run(Path(folder) / f"{name}{repeat}s", args.short, processes, corpus)
                long = run(Path(folder) / f"{name}{repeat}l", args.long, processes, corpus)
                rate = (long[1] - short[1]) / (long[0] - short[0])
                rates[name].append(rate)
                print(f"{name} repeat {repeat}: {rate:.1f} utterances/s of training "
                      f"({long[1] - short[1]} utterances in {long[0] - short[0]:.1f} s)", flush=True)
    single, ddp = statistics.median(rates["single"]), statistics.median(rates["ddp"])
    result = {"processes": args.processes, "single_utt_per_s": single, "ddp_utt_per_s": ddp, "ratio": ddp / single,
              "rates": rates, "steps": [args.short, args.long]}
    print(f"ddp x{args.processes} / single: {ddp / single:.2f} (medians {ddp:.1f} and {single:.1f} utterances/s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

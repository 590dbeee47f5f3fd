"""Streaming from tar shards: loader throughput against the training step, and the loader's memory as the
data grows. `python bench/streaming.py` (about 5 minutes on 2 CPU cores).

- throughput: utterances per second through `osum fit`'s loader (epoch plan, osum's DataLoader, shard
  reads by byte range, log-mel) from a shard list, with 1, 2 and 4 dataloader workers, over the rate at
  which the demo model's training step consumes them (forward, backward, AdamW step on the same batches).
  ratio = loader rate / training rate: above 1 the loader keeps up.
- memory: the resident memory a fresh process gains by building the training loader and drawing 40
  batches (workers=0, so everything is in that process; measured after the model is built), with the shard list repeated 1x, 10x and 100x (the same
  shards named again: more data to plan over, same audio), beside the in-memory manifest path with its
  lines repeated likewise.
Results go to bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from osum_core.config import fit_config  # noqa: E402
from osum_core.data.features import SAMPLE_RATE  # noqa: E402
from osum_core.data.sharding import shard_manifests  # noqa: E402
from osum_core.demo.tokenizer import train_demo_tokenizer  # noqa: E402
from osum_core.model.build import build_for_tokenizer  # noqa: E402
from osum_core.plugins import load_tasks  # noqa: E402
from osum_core.train.datamodule import SpeechDataModule  # noqa: E402

WORDS = "zero one two three four five six seven eight nine"


def make_corpus(root: Path, count: int) -> tuple[Path, Path]:
    """`count` utterances of 2-5 s (noise; the loader does not care) as a manifest and as shards of 100."""
    rng = random.Random(0)
    lines = []
    (root / "wav").mkdir(parents=True)
    for i in range(count):
        wave = (torch.randn(int(rng.uniform(2.0, 5.0) * SAMPLE_RATE)) * 0.1).numpy()
        soundfile.write(root / "wav" / f"{i}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(rng.choice(WORDS.split()) for _ in range(rng.randint(3, 6)))
        lines.append({"key": f"u{i}", "wav": f"wav/{i}.wav", "txt": text, "task": "<TRANSCRIBE>"})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest, shard_manifests([manifest], root / "shards", per_shard=100)


def datamodule(train: str, workers: int, tokenizer, model) -> SpeechDataModule:
    cfg = fit_config(overrides=[f"data.train={train}", f"data.num_workers={workers}"])
    tasks = {"asr": load_tasks().tasks["asr"]}
    return SpeechDataModule(cfg["data"], tasks, tokenizer, cfg["seed"], cfg["loss"]["ctc_target"], model.sequence_length)


def demo_model():
    cfg = fit_config()
    tokenizer = train_demo_tokenizer([WORDS, "transcribe the audio"], [], cfg["model"]["llm"]["demo_tokenizer_vocab"])
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    torch.manual_seed(0)
    return tokenizer, build_for_tokenizer(cfg["model"], tokenizer)


def training_rate(shards: Path, tokenizer, model, steps: int) -> float:
    """Utterances per second the demo model's training step consumes, on the loader's own batches."""
    batches = []
    for batch in datamodule(str(shards), 0, tokenizer, model).train_dataloader():
        batches.append(batch)
        if len(batches) >= steps:
            break
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for batch in [batches[0], *batches]:  # the first is a warm-up
        began = time.perf_counter()
        out = model(**batch)
        loss = out["token_loss"].sum() / out["token_count"].sum() + out.get("ctc_loss", torch.zeros(1)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append((time.perf_counter() - began) / len(batch["keys"]))
    return 1.0 / statistics.median(times[1:])


def loader_rate(shards: Path, workers: int, tokenizer, model) -> tuple[float, int]:
    loader = datamodule(str(shards), workers, tokenizer, model).train_dataloader()
    began = time.perf_counter()
    delivered = sum(len(batch["keys"]) for batch in loader)  # one epoch, worker start-up included
    return delivered / (time.perf_counter() - began), delivered


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def memory_child(train: str, batches: int) -> None:
    tokenizer, model = demo_model()
    before = resident_mib()
    loader = datamodule(train, 0, tokenizer, model).train_dataloader()
    for number, _ in enumerate(loader, start=1):
        if number >= batches:
            break
    after = resident_mib()
    print(json.dumps({"before_mib": before, "after_mib": after, "growth_mib": after - before,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def repeated(path: Path, times: int, manifest: bool) -> Path:
    lines = path.read_text().splitlines()
    out = path.with_name(f"{path.stem}_x{times}{path.suffix}")
    if manifest:
        rows = [json.loads(x) for x in lines]
        text = "".join(json.dumps({**r, "key": f"{r['key']}-{n}"}) + "\n" for n in range(times) for r in rows)
    else:
        text = "".join(line + "\n" for _ in range(times) for line in lines)
    out.write_text(text)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeats", default="1,10,100")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--memory-child", nargs=2, metavar=("TRAIN", "BATCHES"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0
    torch.set_num_threads(2)
    result: dict = {"utterances": args.utterances, "throughput": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as folder:
        manifest, shards = make_corpus(Path(folder), args.utterances)
        tokenizer, model = demo_model()
        consumed = training_rate(shards, tokenizer, model, args.steps)
        result["training_utterances_per_s"] = consumed
        print(f"training step consumes {consumed:.1f} utt/s (demo model, median of {args.steps} steps)", flush=True)
        for workers in [int(w) for w in args.workers.split(",")]:
            rate, delivered = loader_rate(shards, workers, tokenizer, model)
            result["throughput"][workers] = {"utterances_per_s": rate, "delivered": delivered, "ratio": rate / consumed}
            print(f"streaming workers={workers} {rate:.1f} utt/s ratio={rate / consumed:.2f}", flush=True)
        for kind, path in (("shards", shards), ("manifest", manifest)):
            for times in [int(t) for t in args.repeats.split(",")]:
                train = repeated(path, times, kind == "manifest") if times > 1 else path
                child = subprocess.run([sys.executable, __file__, "--memory-child", str(train), "40"],
                                       capture_output=True, text=True, check=True)
                memory = json.loads(child.stdout.strip().splitlines()[-1])
                result["memory"].setdefault(kind, {})[times] = memory
                print(f"memory {kind} x{times} ({args.utterances * times} items): loader adds "
                      f"{memory['growth_mib']:.1f} MiB (resident {memory['after_mib']:.0f} MiB, peak {memory['peak_mib']:.0f})",
                      flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

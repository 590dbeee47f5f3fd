"""`osum data prepare` throughput: hours of audio prepared per minute, per worker, for the three kinds of work
the recipes do, and the full corpora projected from it. `python bench/prepare_throughput.py` (about 4
minutes on 2 CPU cores, most of it making the audio; run it alone).

- flac: a LibriSpeech-shaped release (FLAC utterances of 10-16 s), each file decoded to its end;
- opus: a WenetSpeech-shaped release (Opus recordings of 10 minutes cut into 5-15 s segments), each
  recording decoded once, a block at a time;
- mp4: a MELD-shaped release (.mp4 clips of 2-5 s, MPEG-4 video and AAC audio), each clip's audio extracted
  with PyAV into a 16 kHz WAV, then decoded.
Each with --workers 1 and 2 (the median of --repeats runs, a fresh OUT_DIR each), as hours of audio per
wall-clock minute, and per minute per worker. Results go to bench/results/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from osum_core.data.corpus_preparation import prepare_corpus  # noqa: E402
from osum_core.plugins import load_tasks  # noqa: E402

# Hours of each release, for the projection (as published).
FULL = {"librispeech (960 h + dev/test, FLAC)": ("flac", 1000.0), "wenetspeech L (10,000 h, Opus)": ("opus", 10000.0),
        "meld (13.7 h of .mp4)": ("mp4", 13.7)}


def noise(seconds: float, rate: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def librispeech_like(root: Path, minutes: float) -> Path:
    corpus = root / "LibriSpeech" / "train-clean-100"
    total, index = 0.0, 0
    while total < minutes * 60:
        folder = corpus / str(100 + index // 20) / "1"
        folder.mkdir(parents=True, exist_ok=True)
        seconds = 10 + (index % 7)
        utterance = f"{100 + index // 20}-1-{index % 20:04d}"
        soundfile.write(folder / f"{utterance}.flac", noise(seconds, 16000, index), 16000)
        with (folder / f"{100 + index // 20}-1.trans.txt").open("a") as transcript:
            transcript.write(f"{utterance} SOME WORDS OF A BOOK\n")
        total, index = total + seconds, index + 1
    return root


def wenetspeech_like(root: Path, minutes: float) -> Path:
    audios = []
    for index in range(max(1, round(minutes / 10))):
        path = f"audio/train/youtube/B00000/Y{index:010d}.opus"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / path, noise(600, 48000, index), 48000, format="OGG", subtype="OPUS")
        segments, start = [], 0.0
        while start + 15 <= 600:
            length = 5 + (len(segments) % 11)
            segments.append({"sid": f"Y{index:010d}_S{len(segments):05d}", "begin_time": start, "end_time": start + length,
                             "text": "怎么样这些日子", "subsets": ["S", "M", "L"]})
            start += length
        audios.append({"aid": f"Y{index:010d}", "path": path, "segments": segments})
    (root / "WenetSpeech.json").write_text(json.dumps({"audios": audios}, ensure_ascii=False), encoding="utf-8")
    return root


def meld_like(root: Path, minutes: float) -> Path:
    from test_corpus_prepare import MELD_HEADER, mp4_clip

    corpus = root / "MELD.Raw"
    rows, total, index = [], 0.0, 0
    while total < minutes * 60:
        seconds = 2 + index % 4
        mp4_clip(corpus / "train_splits" / f"dia{index}_utt0.mp4", seconds, seed=index)
        rows.append(f'{index},"some words",Ross,joy,positive,{index},0,1,1,0,1\n')
        total, index = total + seconds, index + 1
    (corpus / "train_sent_emo.csv").write_text(MELD_HEADER + "".join(rows))
    return root


# Enough audio that a worker's start-up (a fresh interpreter importing osum: about 2 s) is a small share.
MINUTES = {"flac": 240.0, "opus": 60.0, "mp4": 10.0}
KINDS = {"flac": ("librispeech", librispeech_like, None), "opus": ("wenetspeech", wenetspeech_like, ["m"]),
         "mp4": ("meld", meld_like, None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each kind's minutes of audio "
                        f"(default 1: {', '.join(f'{k} {m:g}' for k, m in MINUTES.items())})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    registry = load_tasks()
    results = {"minutes_of_audio": {k: m * args.scale for k, m in MINUTES.items()}, "kinds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for kind, (recipe, build, splits) in KINDS.items():
            source = build(Path(scratch) / kind, MINUTES[kind] * args.scale)
            rows = {}
            for workers in (int(w) for w in args.workers.split(",")):
                seconds = []
                for repeat in range(args.repeats):
                    out = Path(scratch) / f"out-{kind}-{workers}-{repeat}"
                    start = time.perf_counter()
                    report = prepare_corpus(registry.corpora[recipe], source, out, registry.tasks, splits, workers,
                                            log=lambda message: None)
                    seconds.append(time.perf_counter() - start)
                hours = report["hours"]
                per_minute = hours / (statistics.median(seconds) / 60)
                rows[workers] = {"hours": hours, "seconds": [round(s, 2) for s in seconds],
                                 "hours_per_minute": round(per_minute, 3),
                                 "hours_per_minute_per_worker": round(per_minute / workers, 3)}
                print(f"{kind} workers={workers}: {hours:.3f} h in {statistics.median(seconds):.1f} s (median of "
                      f"{args.repeats}): {per_minute:.2f} h/min, {per_minute / workers:.2f} h/min per worker", flush=True)
            results["kinds"][kind] = rows
    one = {kind: rows[min(rows)]["hours_per_minute_per_worker"] for kind, rows in results["kinds"].items()}
    results["projection_minutes_with_8_workers"] = {
        name: round(hours / (one[kind] * 8), 1) for name, (kind, hours) in FULL.items()}
    for name, minutes in results["projection_minutes_with_8_workers"].items():
        print(f"projected, 8 workers at the 1-worker rate: {name}: {minutes} min")
    out = ROOT / "bench" / "results" / "prepare_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

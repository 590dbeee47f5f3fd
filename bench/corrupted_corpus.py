"""A run on a corrupted demo corpus against a run on the same corpus without those items (issue 13).

    python bench/corrupted_corpus.py --corpus data/demo --out runs/corrupted   # two demo runs, ~30 min on 2 cores

A share (`--share`, 5%) of the train and dev lines is broken in varied ways (`KINDS`: lines planning
rejects, audio files that cannot be read, and audio that only fails when a dataloader worker decodes it);
the test set is left alone, so both runs are scored on the same items. Run A trains on the corrupted copy
(``data.on_error: skip``, the default), run B on the clean corpus minus the broken lines. The result
(bench/results/corrupted_corpus.json) holds A's skip counts against the expected ones, and both runs'
test metrics and wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
VED = "<TRANSCRIBE> <CAPTION>"

# kind -> the reason osum must count it under
KINDS = {
    "not_json": "not_json", "missing_txt": "missing_field", "txt_number": "wrong_type", "unknown_tag": "unknown_task",
    "label_outside_set": "bad_target", "empty_transcript": "empty_transcript", "duplicate_key": "duplicate_key",
    "missing_audio": "audio_missing", "zero_byte_audio": "audio_empty", "not_audio": "audio_unreadable",
    "truncated_wav": "audio_unreadable", "nan_samples": "audio_not_finite", "silence": "audio_silent",
}


def corrupt_line(kind: str, line: dict, previous_key: str, folder: Path, index: int) -> str:
    """The manifest text of `line` broken as `kind` (writing any broken audio into `folder`)."""
    wav = Path(line["wav"])
    broken = folder / f"{kind}_{index}.wav"
    if kind == "not_json":
        return json.dumps(line)[:-3]
    if kind == "missing_txt":
        return json.dumps({k: v for k, v in line.items() if k != "txt"})
    if kind == "txt_number":
        return json.dumps({**line, "txt": 12345})
    if kind == "unknown_tag":
        return json.dumps({**line, "task": "<NOT A TASK>"})
    if kind == "label_outside_set":
        return json.dumps({**line, "txt": line["txt"].rsplit("<", 1)[0] + "<kazoo>"})
    if kind == "empty_transcript":
        return json.dumps({**line, "txt": " "})
    if kind == "duplicate_key":
        return json.dumps({**line, "key": previous_key})
    if kind == "missing_audio":
        return json.dumps({**line, "wav": str(folder / "nowhere" / wav.name)})
    if kind == "zero_byte_audio":
        broken.write_bytes(b"")
    elif kind == "not_audio":
        broken.write_text("this is not audio\n" * 50)
    elif kind == "truncated_wav":
        data = wav.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
    elif kind == "nan_samples":
        samples, rate = soundfile.read(wav, dtype="float32")
        samples[len(samples) // 2] = np.nan
        soundfile.write(broken, samples, rate, subtype="FLOAT")
    elif kind == "silence":
        samples, rate = soundfile.read(wav, dtype="float32")
        soundfile.write(broken, np.zeros_like(samples), rate)
    return json.dumps({**line, "wav": str(broken)})


def split_copies(corpus: Path, split: str, out: Path, share: float, rng: random.Random, counts: dict[str, int]) -> None:
    """out/corrupted/SPLIT.jsonl (a share of lines broken) and out/clean/SPLIT.jsonl (those lines left out)."""
    lines = [json.loads(x) for x in (corpus / f"{split}.jsonl").read_text().splitlines() if x.strip()]
    for line in lines:
        line["wav"] = str((corpus / line["wav"]).resolve())
    chosen = sorted(rng.sample(range(1, len(lines)), round(share * len(lines))))
    kinds = list(KINDS)
    corrupted, clean = [], []
    folder = out / "broken_audio" / split
    folder.mkdir(parents=True, exist_ok=True)
    plan: dict[int, str] = {}
    turn = 0
    for index in chosen:
        # A label outside the set needs a VED line, an empty transcript an ASR line (VED still has its label).
        ved = lines[index].get("task") == VED
        while (kinds[turn % len(kinds)] == "label_outside_set") != ved and kinds[turn % len(kinds)] in (
                "label_outside_set", "empty_transcript"):
            turn += 1
        plan[index] = kinds[turn % len(kinds)]
        turn += 1
    for index, line in enumerate(lines):
        if index not in plan:
            corrupted.append(json.dumps(line))
            clean.append(json.dumps(line))
            continue
        previous = next(lines[i]["key"] for i in range(index - 1, -1, -1) if i not in plan)
        corrupted.append(corrupt_line(plan[index], line, previous, folder, index))
        counts[KINDS[plan[index]]] = counts.get(KINDS[plan[index]], 0) + 1
    for name, text in (("corrupted", corrupted), ("clean", clean)):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / f"{split}.jsonl").write_text("\n".join(text) + "\n")


def fit(out: Path, data: Path, test: Path, extra: list[str]) -> tuple[dict, float]:
    command = [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(out), "--overwrite",
               f"data.train={data / 'train.jsonl'}", f"data.val={data / 'dev.jsonl'}", f"data.test={test}",
               "trainer.max_time=null", "trainer.enable_progress_bar=false", *extra]
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text()), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "corrupted")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "corrupted_corpus.json")
    parser.add_argument("overrides", nargs="*", help="key=value for both runs, e.g. trainer.max_steps=1000")
    args = parser.parse_args()
    args.out = args.out.resolve()  # manifests name the broken audio by absolute path
    rng = random.Random(args.seed)
    expected: dict[str, int] = {}
    for split in ("train", "dev"):
        split_copies(args.corpus, split, args.out, args.share, rng, expected)
    test = args.corpus / "test.jsonl"
    corrupted, corrupted_s = fit(args.out / "run_corrupted", args.out / "corrupted", test, args.overrides)
    clean, clean_s = fit(args.out / "run_clean", args.out / "clean", test, args.overrides)
    result = {
        "share": args.share, "overrides": args.overrides,
        "expected_skipped": dict(sorted(expected.items())), "skipped": corrupted["skipped"],
        "exact": corrupted["skipped"] == dict(sorted(expected.items())),
        "corrupted": {t: m for t, m in corrupted.items() if t != "skipped"},
        "clean_minus_those": {t: m for t, m in clean.items() if t != "skipped"},
        "seconds": {"corrupted": round(corrupted_s), "clean_minus_those": round(clean_s)},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

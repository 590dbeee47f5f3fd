"""Where in an utterance SRWT's word timestamps go wrong: the error of each boundary by its place.

    python bench/timestamp_errors.py runs/demo_all/test_predictions.jsonl

Reads a run's ``test_predictions.jsonl`` (or ``osum test``'s ``predictions.jsonl``), keeps the SRWT answers
whose words are exactly the reference's, and prints the mean absolute error (ms) of the start and of the end
of the first, middle and last words, and how often each error size occurs. It reads SRWT's default word
format only (``<start>word<end>``, not ``tasks.srwt.word_format={word}<{start},{end}>``). The task's own
metric (``timestamp_error_ms``) also scores the matched words of partly right answers and refuses answers
whose times go backwards; this is a breakdown of the exactly right answers, not that metric. On issue 21's
demo-all runs the last word's end was the worst (124 to 204 ms against 24 to 43 ms for the first word's):
the merged step of a last word starts where it starts, but nothing after it says where it ends.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

WORD = re.compile(r"<([\d.]+)>\s*([^<>\s]+)\s*<([\d.]+)>")  # the default format, <start>word<end>


def boundary_errors(rows: list[dict]) -> tuple[dict[str, list[float]], Counter, int]:
    """Absolute errors (seconds) by "start|end first|middle|last", signed errors counted, answers used."""
    places: dict[str, list[float]] = defaultdict(list)
    signed: Counter = Counter()
    used = 0
    for row in rows:
        hypothesis, reference = WORD.findall(row["text"]), WORD.findall(row["reference"])
        if not reference or [w for _, w, _ in hypothesis] != [w for _, w, _ in reference]:
            continue
        used += 1
        for i, ((h_start, _, h_end), (r_start, _, r_end)) in enumerate(zip(hypothesis, reference)):
            place = "first" if i == 0 else "last" if i == len(reference) - 1 else "middle"
            for side, h, r in (("start", h_start, r_start), ("end", h_end, r_end)):
                error = round(float(h) - float(r), 3)
                places[f"{side} {place}"].append(abs(error))
                signed[error] += 1
    return places, signed, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="test_predictions.jsonl of a run (or osum test's)")
    parser.add_argument("--task", default="srwt", help="the task name in the predictions (default srwt)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if row["task"] == args.task]
    places, signed, used = boundary_errors(rows)
    if rows and not used:
        raise SystemExit(f"{args.predictions}: no {args.task} answer has the reference's words in the default "
                         "<start>word<end> format; this script reads that format only")
    print(f"{args.predictions}: {used} of {len(rows)} {args.task} answers with the reference's words")
    for place in ("start first", "end first", "start middle", "end middle", "start last", "end last"):
        if places[place]:
            values = places[place]
            print(f"  {place:<13} {len(values):>4} boundaries  mean error {1000 * sum(values) / len(values):6.1f} ms")
    print("  signed errors (s: count): " + ", ".join(f"{k:+g}: {v}" for k, v in sorted(signed.items())))


if __name__ == "__main__":
    main()

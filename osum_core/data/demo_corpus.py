"""The demo corpus: spoken digit strings synthesised with eSpeak NG, labelled for OSUM's tasks.

It exists to test the machinery (every label is known exactly, and it builds with pip alone); it is no
substitute for real corpora. Design:
- transcripts are strings of 3-6 spoken digits ("zero", "oh", "one" ... "nine"): a vocabulary small
  enough that a tiny speech LLM trained from scratch learns it in minutes on a CPU;
- every utterance has a speaker (eSpeak voice variant), speaking rate and pitch; the validation and test
  splits use held-out voices and held-out digit strings;
- each utterance is generated for one task tag by a *recipe* (`RECIPES`): plain transcription, or with a
  vocal event placed before or after the speech. New tasks add a recipe that realises their label in the
  audio and records it in a manifest field;
- manifests follow OSUM/WeNet raw jsonl (``key``, ``wav``, ``txt``, ``task``, ``lang``, ``speaker``,
  ``gender``, ``duration``) plus the label fields and ``extra`` (voice settings, word timestamps, shifted
  when an event comes first);
- everything is a pure function of the seed: the same seed gives the same corpus, file for file.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio.functional

from osum_core.data.manifest import write_manifest
from osum_core.data.speech_synth import Voice, synthesize
from osum_core.data.vocal_events import EVENT_LABELS, make_event

SAMPLE_RATE = 16000
DIGITS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class CorpusSpec:
    """What `synthesize_corpus` generates. The counts are per task tag."""

    tags: tuple[str, ...] = ("<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>")
    train_per_task: int = 1500
    eval_per_task: int = 100  # each of dev and test
    seed: int = 0
    train_voices: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")
    heldout_voices: tuple[str, ...] = ("m6", "m7", "f4", "f5")
    rate: tuple[int, int] = (140, 200)  # words per minute
    pitch: tuple[int, int] = (35, 65)
    min_words: int = 3
    max_words: int = 6
    # Where vocal events go: "before" or "after" the speech (with a gap), or "over" it (mixed in). The demo's
    # figures in README were measured with "after" only.
    event_positions: tuple[str, ...] = ("after",)


@dataclass(frozen=True)
class Utterance:
    """Everything needed to render one utterance; drawn up front so rendering is a pure function."""

    key: str
    split: str
    tag: str
    words: tuple[str, ...]
    variant: str
    rate: int
    pitch: int
    seed: int
    labels: dict[str, Any] = field(default_factory=dict)


def plain(utt: Utterance, speech: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, dict]:
    """Transcription only: the speech as it is."""
    return speech, 0.0, {}


def with_vocal_event(utt: Utterance, speech: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, dict]:
    """A vocal event placed before the speech, after it (with a short gap), or over it (mixed in)."""
    event = utt.labels["event"]
    sound = make_event(event, rng, SAMPLE_RATE) * rng.uniform(0.5, 1.0)
    gap = np.zeros(int(rng.uniform(0.1, 0.3) * SAMPLE_RATE), dtype=np.float32)
    position = utt.labels["event_position"]
    if position == "before":
        return np.concatenate([sound, gap, speech]), (len(sound) + len(gap)) / SAMPLE_RATE, {}
    if position == "over":
        mixed = np.concatenate([speech, np.zeros(max(len(sound) - len(speech), 0), dtype=np.float32)])
        start = int(rng.integers(0, len(mixed) - len(sound) + 1))
        mixed[start : start + len(sound)] += sound
        return mixed, 0.0, {}
    return np.concatenate([speech, gap, sound]), 0.0, {}


@dataclass(frozen=True)
class Recipe:
    """How one task tag's utterances are drawn (`draw_labels`) and rendered (`render`), and how the label
    is written into ``txt`` (OSUM stores ASR+X targets there: ``transcript<label>``)."""

    draw_labels: Callable[[random.Random, CorpusSpec], dict[str, Any]]
    render: Callable[[Utterance, np.ndarray, np.random.Generator], tuple[np.ndarray, float, dict]]
    suffix: Callable[[dict[str, Any]], str]


RECIPES: dict[str, Recipe] = {
    "<TRANSCRIBE>": Recipe(lambda rng, spec: {}, plain, lambda labels: ""),
    "<TRANSCRIBE> <CAPTION>": Recipe(
        lambda rng, spec: {"event": rng.choice(EVENT_LABELS), "event_position": rng.choice(spec.event_positions)},
        with_vocal_event,
        lambda labels: f"<{labels['event']}>",
    ),
}


def digit_strings(count: int, spec: CorpusSpec, rng: random.Random) -> list[tuple[str, ...]]:
    """`count` distinct digit strings."""
    seen: set[tuple[str, ...]] = set()
    while len(seen) < count:
        seen.add(tuple(rng.choice(DIGITS) for _ in range(rng.randint(spec.min_words, spec.max_words))))
    return rng.sample(sorted(seen), count)


def plan_corpus(spec: CorpusSpec) -> list[Utterance]:
    """Draw every utterance's content and voice. Splits never share a digit string or a voice."""
    unknown = [t for t in spec.tags if t not in RECIPES]
    if unknown:
        raise ValueError(f"the demo corpus has no recipe for task tag(s) {unknown}; known: {sorted(RECIPES)}")
    rng = random.Random(spec.seed)
    per_split = {"train": spec.train_per_task, "dev": spec.eval_per_task, "test": spec.eval_per_task}
    total = sum(per_split.values()) * len(spec.tags)
    strings = iter(digit_strings(total, spec, rng))
    utterances = []
    for split in SPLITS:
        voices = spec.train_voices if split == "train" else spec.heldout_voices
        for tag in spec.tags:
            recipe = RECIPES[tag]
            for _ in range(per_split[split]):
                index = len(utterances)
                utterances.append(
                    Utterance(
                        key=f"demo-{split}-{index:06d}",
                        split=split,
                        tag=tag,
                        words=next(strings),
                        variant=rng.choice(voices),
                        rate=rng.randint(*spec.rate),
                        pitch=rng.randint(*spec.pitch),
                        seed=rng.randrange(2**31),
                        labels=recipe.draw_labels(rng, spec),
                    )
                )
    return utterances


def render(utt: Utterance, out_dir: Path) -> dict[str, Any]:
    """Synthesise one utterance, write its 16 kHz wav, and return its manifest line."""
    speech = synthesize(" ".join(utt.words), Voice("en-us", utt.variant, utt.rate, utt.pitch))
    wave = torchaudio.functional.resample(torch.from_numpy(speech.audio), speech.sample_rate, SAMPLE_RATE).numpy()
    recipe = RECIPES[utt.tag]
    audio, offset, fields = recipe.render(utt, wave.astype(np.float32), np.random.default_rng(utt.seed))
    audio = np.clip(audio, -1.0, 1.0)
    relative = Path("wav") / utt.split / f"{utt.key}.wav"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(out_dir / relative, audio, SAMPLE_RATE, subtype="PCM_16")
    gender = "female" if utt.variant.startswith("f") else "male"
    transcript = " ".join(utt.words)
    labels = {k: v for k, v in utt.labels.items() if not k.startswith("event_")}
    return {
        "key": utt.key,
        "wav": relative.as_posix(),
        "txt": transcript + recipe.suffix(utt.labels),
        "task": utt.tag,
        "lang": "en",
        "speaker": f"en-us+{utt.variant}",
        "gender": gender,
        "duration": round(len(audio) / SAMPLE_RATE, 3),
        **labels,
        **fields,
        "extra": {
            "voice": f"en-us+{utt.variant}",
            "rate": utt.rate,
            "pitch": utt.pitch,
            "words": [[w.word, round(w.start + offset, 3), round(w.end + offset, 3)] for w in speech.words],
        },
    }


def synthesize_corpus(out_dir: str | Path, spec: CorpusSpec = CorpusSpec(), workers: int = 2) -> dict[str, int]:
    """Write ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and the audio under `out_dir`.

    The manifests are written last (atomically), so a directory that has them is complete; an interrupted
    run leaves no manifest and is simply run again. Returns the number of lines per split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    utterances = plan_corpus(spec)
    if workers > 1:
        # Fresh (spawned) single-threaded workers: forked copies of a process that already runs torch
        # threads were several times slower here.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            lines = list(pool.map(render, utterances, [out_dir] * len(utterances), chunksize=32))
    else:
        lines = [render(u, out_dir) for u in utterances]
    counts = {}
    for split in SPLITS:
        split_lines = [line for utt, line in zip(utterances, lines) if utt.split == split]
        write_manifest(out_dir / f"{split}.jsonl", split_lines)
        counts[split] = len(split_lines)
    (out_dir / "corpus.json").write_text(json.dumps({"spec": spec.__dict__, "counts": counts}, indent=1))
    return counts


def corpus_is_complete(out_dir: str | Path) -> bool:
    return all((Path(out_dir) / f"{split}.jsonl").is_file() for split in SPLITS)


"""The demo corpus: spoken digit strings synthesised with eSpeak NG, labelled for OSUM's tasks.

It exists to test the machinery (every label is known exactly, and it builds with pip alone); it is no
substitute for real corpora. Design:
- transcripts are strings of 3-6 spoken digits ("zero", "oh", "one" ... "nine"), plus the few words some
  tasks add (cue words, spoken questions): a vocabulary small enough that a tiny speech LLM trained from
  scratch learns it in minutes on a CPU;
- every utterance has a speaker (eSpeak voice variant), speaking rate and pitch; the validation and test
  splits use held-out voices, and digit strings whose hash puts them in that split (`string_split`), so
  corpora made separately for different tasks never leak a test string into training;
- each utterance is generated for one task tag by that task's `DemoRecipe`, which plugins contribute through
  the ``osum_demo_recipes`` hook next to the task itself: it realises the label in the audio (a vocal event,
  prosody, a child's or an old voice) and records it in a manifest field;
- manifests follow OSUM/WeNet raw jsonl (``key``, ``wav``, ``txt``, ``task``, ``lang``, ``speaker``,
  ``gender``, ``duration``) plus the label fields and ``extra`` (voice settings, word timestamps, shifted
  when an event comes first);
- everything is a pure function of the seed: the same seed gives the same corpus, file for file.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import re
import zlib
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio.functional

from osum_core.data.manifest import write_manifest
from osum_core.demo.recipe import CorpusSpec, DemoRecipe, Utterance
from osum_core.demo.speech_synth import Voice, synthesize

# The layout this module writes (manifest fields, audio, ``corpus.json``); raise it when that changes, so
# that a corpus made before is synthesised again. 1: the corpora written before the number was recorded.
CORPUS_FORMAT = 2

SAMPLE_RATE = 16000
DIGITS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "dev", "test")


def string_split(words: tuple[str, ...]) -> str:
    """The split a digit string belongs to, fixed by its hash: corpora made for different tasks (or seeds)
    never put a test string into training."""
    bucket = zlib.crc32(" ".join(words).encode()) % 10
    return "dev" if bucket == 0 else "test" if bucket == 1 else "train"


def digit_strings(count: int, split: str, spec: CorpusSpec, rng: random.Random) -> list[tuple[str, ...]]:
    """`count` distinct digit strings of `split`."""
    seen: set[tuple[str, ...]] = set()
    while len(seen) < count:
        words = tuple(rng.choice(DIGITS) for _ in range(rng.randint(spec.min_words, spec.max_words)))
        if string_split(words) == split:
            seen.add(words)
    return rng.sample(sorted(seen), count)


def plan_corpus(spec: CorpusSpec, recipes: Mapping[str, DemoRecipe]) -> list[Utterance]:
    """Draw every utterance's content and voice. Splits never share a digit string or a voice."""
    unknown = [t for t in spec.tags if t not in recipes]
    if unknown:
        raise ValueError(f"the demo corpus has no recipe for task tag(s) {unknown}; known: {sorted(recipes)}")
    per_split = {"train": spec.train_per_task, "dev": spec.eval_per_task, "test": spec.eval_per_task}
    utterances = []
    for tag in spec.tags:
        rng = random.Random(f"{spec.seed}:{tag}")  # one stream per tag: a task's corpus ignores the others
        # The recipe sees its own options: its defaults, with the values the config gives for them.
        tag_spec = dataclasses.replace(spec, options=recipes[tag].resolve_options(spec.options))
        slug = "_".join(re.findall(r"[a-z0-9]+", tag.lower()))
        for split in SPLITS:
            voices = spec.train_voices if split == "train" else spec.heldout_voices
            for words in digit_strings(per_split[split], split, spec, rng):
                planned = Utterance(
                    key=f"demo-{slug}-{split}-{len(utterances):06d}",
                    split=split,
                    tag=tag,
                    words=words,
                    voice=Voice("en-us", rng.choice(voices), rng.randint(*spec.rate), rng.randint(*spec.pitch)),
                    seed=rng.randrange(2**31),
                )
                utterances.append(recipes[tag].draw(planned, rng, tag_spec))
    return utterances


def render(utt: Utterance, recipe: DemoRecipe, out_dir: Path) -> dict[str, Any]:
    """Synthesise one utterance, write its 16 kHz wav, and return its manifest line."""
    speech = synthesize(" ".join(utt.words), utt.voice)
    wave = torchaudio.functional.resample(torch.from_numpy(speech.audio), speech.sample_rate, SAMPLE_RATE).numpy()
    rendered = recipe.render(utt, wave.astype(np.float32), np.random.default_rng(utt.seed))
    audio = np.clip(rendered.audio, -1.0, 1.0)
    relative = Path("wav") / utt.split / f"{utt.key}.wav"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(out_dir / relative, audio, SAMPLE_RATE, subtype="PCM_16")
    speaker = f"{utt.voice.name}+{utt.voice.variant}"

    def moved(t: float) -> float:
        return round(t * rendered.stretch + rendered.offset, 3)

    return {
        "key": utt.key,
        "wav": relative.as_posix(),
        "txt": " ".join(utt.words) + recipe.label_text(utt),
        "task": utt.tag,
        "lang": utt.voice.name.split("-")[0],
        "speaker": speaker,
        "gender": utt.gender,
        "duration": round(len(audio) / SAMPLE_RATE, 3),
        **{k: v for k, v in utt.labels.items() if not k.startswith("_")},
        **rendered.fields,
        "extra": {
            "voice": speaker,
            "rate": utt.voice.rate,
            "pitch": utt.voice.pitch,
            "pitch_range": utt.voice.pitch_range,
            "words": [[w.word, moved(w.start), moved(w.end)] for w in speech.words],
        },
    }


def synthesize_corpus(
    out_dir: str | Path, spec: CorpusSpec, recipes: Mapping[str, DemoRecipe], workers: int, progress: str | None = None
) -> dict[str, int]:
    """Write ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and the audio under `out_dir`.

    The manifests are written last (atomically), so a directory that has them is complete; an interrupted
    run leaves no manifest and is simply run again. `progress`: the description of a progress bar on
    stderr (None: no bar). Returns the number of lines per split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    utterances = plan_corpus(spec, recipes)
    chosen = [recipes[u.tag] for u in utterances]
    if workers > 1:
        # Fresh (spawned) single-threaded workers: forked copies of a process that already runs torch
        # threads were several times slower here.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            rendered = pool.map(render, utterances, chosen, [out_dir] * len(utterances), chunksize=32)
            lines = list(progress_bar(rendered, progress, len(utterances)))
    else:
        rendered = (render(u, r, out_dir) for u, r in zip(utterances, chosen, strict=True))
        lines = list(progress_bar(rendered, progress, len(utterances)))
    counts = {}
    for split in SPLITS:
        split_lines = [line for utt, line in zip(utterances, lines) if utt.split == split]
        write_manifest(out_dir / f"{split}.jsonl", split_lines)
        counts[split] = len(split_lines)
    made = {"format": CORPUS_FORMAT, "recipes": recipe_versions(spec, recipes), "spec": dataclasses.asdict(spec),
            "counts": counts}
    (out_dir / "corpus.json").write_text(json.dumps(made, indent=1))
    return counts


def recipe_versions(spec: CorpusSpec, recipes: Mapping[str, DemoRecipe]) -> dict[str, int]:
    """The version of the recipe of each of `spec`'s tags, as ``corpus.json`` records it."""
    return {tag: recipes[tag].version for tag in spec.tags}


def progress_bar(items, description: str | None, total: int):
    """`items`, with a tqdm bar on stderr (rate and time left) when `description` is given."""
    if description is None:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"synthesising {description}", total=total, unit="utt", dynamic_ncols=True)


def corpus_is_complete(out_dir: str | Path, spec: CorpusSpec | None = None,
                       recipes: Mapping[str, DemoRecipe] | None = None) -> bool:
    """Whether `out_dir` holds a finished corpus: made from `spec`, when given, and when `recipes` are given
    too, in this module's `CORPUS_FORMAT` by the same versions of the recipes."""
    out_dir = Path(out_dir)
    if not all((out_dir / f"{split}.jsonl").is_file() for split in SPLITS):
        return False
    if spec is None:
        return True
    try:
        made = json.loads((out_dir / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(made, dict) or made.get("spec") != json.loads(json.dumps(dataclasses.asdict(spec))):
        return False
    return recipes is None or (made.get("format", 1) == CORPUS_FORMAT
                               and made.get("recipes") == recipe_versions(spec, recipes))


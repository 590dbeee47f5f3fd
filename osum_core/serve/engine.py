"""The model side of ``osum serve``: a loaded checkpoint with the tasks it was trained on; audio bytes ->
the rows the model reads; a batch of rows -> their generated text.

A row is what one line of an ``osum predict`` batch is: the log-mel features of one utterance (`LogMel`, as
training computes them) and the ids of one prompt. Decoding pads the rows into one batch (`collate_examples`)
and calls `SpeechLLM.generate`, the batched generation of validation, ``osum test`` and ``osum predict``;
the model pads on the left with position ids that skip the padding, so a row's greedy answer does not
depend on the batch it was decoded in.

Audio longer than the model's window (the encoder's positions: 30 s for Whisper) is cut into windows, each
its own row, when ``serve.long_audio`` is ``split``: the windows' answers are joined (`merge_windows`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import soundfile
import torch

from osum_core.checkpoints.directory import LoadedCheckpoint
from osum_core.data.audio import AudioError, AudioTooLong, load_limited_audio
from osum_core.data.collate import collate_examples
from osum_core.data.dataset import TaskPrompts
from osum_core.data.features import HOP_LENGTH, SAMPLE_RATE, LogMel
from osum_core.inference.predict import decoded_texts
from osum_core.inference.streaming import BatchTextStreamer, TextCallback
from osum_core.model.speech_llm import GenerationSettings
from osum_core.serve.errors import APIError
from osum_core.task import Prediction, Task

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHORTEST_WINDOW_SECONDS = 0.1  # a last window shorter than this (the tail of a split) is not decoded
UNUSABLE = ("audio_empty", "audio_silent", "audio_not_finite")  # audio that decodes but holds no signal: 422


@dataclass(frozen=True)
class Audio:
    """An upload, decoded: the features of each window of the model's length (one for most audio), the
    second each window starts at, and the audio's whole duration."""

    windows: list[torch.Tensor]  # [frames, n_mels] each
    offsets: list[float]
    seconds: float


@dataclass(frozen=True)
class Row:
    """One sequence of a decoding batch: an utterance's (or window's) features and its prompt's ids."""

    features: torch.Tensor
    prompt_ids: tuple[int, ...]

    @property
    def seconds(self) -> float:
        return len(self.features) * HOP_LENGTH / SAMPLE_RATE


@dataclass(frozen=True)
class RowOutput:
    text: str
    generated_tokens: int  # end-of-text not counted
    input_tokens: int  # the LLM sequence the row's prompt and speech make (an upper bound with CTC compression)


class SpeechEngine:
    """`loaded` on `device` in `dtype` (``fp32`` or ``bf16``), answering with `tasks` (the checkpoint's,
    configured as it was trained)."""

    def __init__(self, loaded: LoadedCheckpoint, tasks: Mapping[str, Task], *, device: str, dtype: str,
                 long_audio: str, max_audio_seconds: float) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"serve.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if long_audio not in ("split", "refuse"):
            raise ValueError(f"serve.long_audio must be split or refuse, got {long_audio!r}")
        self.model = loaded.model.to(device=device, dtype=DTYPES[dtype]).eval()
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.tasks = dict(tasks)
        self.device = device
        self.long_audio = long_audio
        self.max_audio_seconds = max_audio_seconds
        self.log_mel = LogMel(loaded.config["data"]["n_mels"])
        self.window_samples = self.model.encoder.max_input_frames * HOP_LENGTH
        self.prompt_language = loaded.config["data"]["prompt_language"]
        self.prompts = TaskPrompts.of_tasks(self.tasks, self.tokenizer, self.prompt_language)
        self.generation = GenerationSettings(**loaded.config["eval"]["generation"])

    @property
    def window_seconds(self) -> float:
        return self.window_samples / SAMPLE_RATE

    def read_audio(self, data: bytes, name: str) -> Audio:
        """`data` decoded (any format soundfile reads, any rate and channels), checked against the limits and
        cut into the model's windows; an `APIError` that says what is wrong otherwise."""
        if not data:
            raise APIError(400, f"{name}: the audio is empty (0 bytes)", param="file", code="invalid_audio")
        try:
            soundfile.info(io.BytesIO(data))
        except (soundfile.LibsndfileError, RuntimeError, TypeError):
            raise APIError(415, f"{name}: not an audio format osum reads; send WAV, FLAC, MP3 or OGG (a browser's "
                           "webm/opus recording must be converted first, as the demo page does)",
                           param="file", code="unsupported_audio_format") from None
        try:
            wave = load_limited_audio(io.BytesIO(data), self.max_audio_seconds, name, SAMPLE_RATE)
        except AudioTooLong as error:
            raise APIError(413, f"{error}; this server takes at most {self.max_audio_seconds:g} s "
                           "(serve.max_audio_seconds)", param="file", code="audio_too_long") from None
        except AudioError as error:
            status = 422 if error.reason in UNUSABLE else 400
            raise APIError(status, str(error), param="file", code="invalid_audio") from None
        seconds = len(wave) / SAMPLE_RATE
        if len(wave) > self.window_samples and self.long_audio == "refuse":
            raise APIError(413, f"{name}: {seconds:.1f} s of audio; the model reads at most "
                           f"{self.window_seconds:g} s at once and this server refuses longer audio "
                           "(serve.long_audio=split decodes it in windows)", param="file", code="audio_too_long")
        starts = range(0, len(wave), self.window_samples)
        pieces = [(start, wave[start : start + self.window_samples]) for start in starts]
        pieces = [p for n, p in enumerate(pieces) if n == 0 or len(p[1]) >= SHORTEST_WINDOW_SECONDS * SAMPLE_RATE]
        return Audio([self.log_mel(piece) for _, piece in pieces], [start / SAMPLE_RATE for start, _ in pieces],
                     seconds)

    def prompt(self, task: Task, language: str | None) -> str:
        """The instruction of `task`: its first prompt in `language` (``zh``, ``en``), or without one in the
        checkpoint's ``data.prompt_language``, as ``osum test`` asks it."""
        if language is None:
            return self.prompts.evaluation_text(task.name)
        bank = task.prompts.get(language)
        if not bank:
            has = ", ".join(lang for lang, prompts in task.prompts.items() if prompts)
            raise APIError(400, f"task {task.name} has prompts in {has}, none in {language!r}", param="language",
                           code="unsupported_language")
        return bank[0]

    def rows(self, audio: Audio, prompt: str) -> list[Row]:
        ids = tuple(self.tokenizer.encode(prompt, add_special_tokens=False))
        return [Row(features, ids) for features in audio.windows]

    def settings(self, **changes: Any) -> GenerationSettings:
        """The checkpoint's decoding settings (``eval.generation``) with a request's `changes`."""
        return replace(self.generation, **changes)

    def decode(self, rows: Sequence[Row], settings: GenerationSettings, on_text: TextCallback | None = None,
               limits: Sequence[int] | None = None) -> list[RowOutput]:
        """Every row's generated text, decoded as one batch. `on_text(row, piece, finished)` receives each
        row's text as it grows (with beam search, once, whole, at the end). `limits`: each row's own most
        tokens, at most ``settings.max_new_tokens`` (the batch decodes to the largest; a row is cut to its
        own: greedy decoding's first N tokens are the answer it gives with a limit of N)."""
        limits = list(limits) if limits is not None else [settings.max_new_tokens] * len(rows)
        items = [{"features": row.features, "prompt_ids": torch.tensor(row.prompt_ids, dtype=torch.long),
                  "task": "", "key": str(n), "target": None} for n, row in enumerate(rows)]
        batch = {k: v.to(self.device) for k, v in collate_examples(items).items() if isinstance(v, torch.Tensor)}
        streamer = None
        if on_text is not None and settings.num_beams == 1:
            streamer = BatchTextStreamer(self.tokenizer, len(rows), self.model.eos_token_id, on_text, limits)
        with torch.inference_mode():
            ids = self.model.generate(settings=settings, streamer=streamer, **batch)
        ids = [row_ids[:limit] for row_ids, limit in zip(ids, limits, strict=True)]
        texts = decoded_texts(self.tokenizer, ids)
        if on_text is not None and streamer is None:
            for n, text in enumerate(texts):
                on_text(n, text, True)
        return [
            RowOutput(text, len(row_ids), self.model.sequence_length(len(row.features), len(row.prompt_ids), 0))
            for text, row_ids, row in zip(texts, ids, rows, strict=True)
        ]


def merge_windows(task: Task | None, texts: Sequence[str], offsets: Sequence[float]) -> tuple[str, Prediction | None]:
    """The answer to a request from its windows' answers: the texts joined by a space and, with a task,
    each window parsed by it and the parses joined: transcripts joined, word times (``fields.timestamps``:
    ``[(word, start, end), ...]``, as SRWT gives them) shifted by their window's start, the label and any other
    field the first window's (an utterance's label is read from its beginning), valid only if every window is."""
    text = " ".join(t for t in texts if t)
    if task is None:
        return text, None
    parsed = [task.parse_output(t) for t in texts]
    if len(parsed) == 1:
        return text, parsed[0]
    fields = dict(parsed[0].fields)
    if all("timestamps" in p.fields for p in parsed):
        fields["timestamps"] = [(word, start + offset, end + offset)
                                for p, offset in zip(parsed, offsets, strict=True)
                                for word, start, end in p.fields["timestamps"]]
    return text, Prediction(text=text, transcript=" ".join(p.transcript for p in parsed if p.transcript),
                            label=parsed[0].label, fields=fields, valid=all(p.valid for p in parsed))


def answer_json(task: Task | None, parsed: Prediction | None, text: str) -> dict[str, Any]:
    """A task's parse of an answer, as the ``osum`` field of a reply (JSON types only)."""
    if task is None or parsed is None:
        return {"task": None, "text": text}
    return {"task": task.name, "text": text, "transcript": parsed.transcript, "label": parsed.label,
            "fields": json.loads(json.dumps(dict(parsed.fields))), "valid": parsed.valid}


DecodeFunction = Callable[[Sequence[Row], GenerationSettings, "TextCallback | None", Sequence[int]], list[RowOutput]]

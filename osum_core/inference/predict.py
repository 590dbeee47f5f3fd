"""Batched prediction: audio files (or manifest lines) -> generated text -> each task's parsed answer.

Utterances are sorted by length and decoded `batch_size` at a time; the model pads each batch on the left
with position ids that skip the padding, so an answer does not depend on its batch (tested). Results come
back in input order.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import soundfile
import torch

from osum_core.data.audio import AudioError, load_audio
from osum_core.data.collate import pad
from osum_core.data.features import SAMPLE_RATE, LogMel
from osum_core.data.shards import read_wav_member
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Prediction, Task


@dataclass(frozen=True)
class Request:
    """One utterance to answer: its audio, the task that parses the answer (None for a free-form prompt)
    and the prompt text."""

    key: str
    file: str
    task: Task | None
    prompt: str
    member: tuple[int, int] | None = None  # (offset, size) of the audio inside the tar `file` (shards)

    def audio(self) -> io.BytesIO | str:
        """What `load_audio` and `soundfile.info` read: the file, or the shard member's bytes."""
        return self.file if self.member is None else io.BytesIO(read_wav_member(self.file, *self.member))

    @property
    def where(self) -> str:
        return self.file if self.member is None else f"{self.file}: key {self.key}"


@dataclass
class Answer:
    request: Request
    text: str
    prediction: Prediction | None
    seconds: float  # audio duration

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "key": self.request.key,
            "file": self.request.file,
            "task": self.request.task.name if self.request.task else None,
            "prompt": self.request.prompt,
            "text": self.text,
            "duration": round(self.seconds, 3),
        }
        if self.prediction is not None:
            row["transcript"] = self.prediction.transcript
            row["valid"] = self.prediction.valid  # False: the text is not in the task's output format
            if self.prediction.label is not None:
                row["label"] = self.prediction.label
            row.update(self.prediction.fields)
        return row


@dataclass
class DecodeStats:
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    utterances: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """Decoding time per second of audio (below 1: faster than real time)."""
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


def audio_duration(request: Request) -> float:
    try:
        info = soundfile.info(request.audio())
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        raise AudioError(f"{request.where}: audio file is missing or unreadable") from None
    return info.frames / info.samplerate


def decode_batches(
    model: SpeechLLM,
    tokenizer: Any,
    requests: Sequence[Request],
    settings: GenerationSettings,
    *,
    n_mels: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    stats: DecodeStats | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, Answer]]:
    """(index in `requests`, answer) for every request, longest utterances first. `progress`: a tqdm bar on
    stderr (utterances per second and time left)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    log_mel = LogMel(n_mels)
    prompt_ids = {}
    # Sorted by the length in the file header; audio is read a batch at a time.
    durations = [audio_duration(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: -durations[i])
    stats = stats if stats is not None else DecodeStats()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(order), desc="decoding", unit="utt", dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        waves = {i: load_audio(requests[i].audio(), name=requests[i].where) for i in chosen}
        features, feature_lengths = pad([log_mel(waves[i]) for i in chosen], 0.0)
        prompts = []
        for i in chosen:
            prompt = requests[i].prompt
            if prompt not in prompt_ids:
                prompt_ids[prompt] = torch.tensor(tokenizer.encode(prompt, add_special_tokens=False), dtype=torch.long)
            prompts.append(prompt_ids[prompt])
        prompt_tensor, prompt_lengths = pad(prompts, 0)
        began = time.perf_counter()
        ids = model.generate(
            features.to(device), feature_lengths.to(device), prompt_tensor.to(device), prompt_lengths.to(device),
            settings,
        )
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        stats.decode_seconds += time.perf_counter() - began
        stats.batches += 1
        stats.batch_sizes.append(len(chosen))
        texts = [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        for i, text in zip(chosen, texts, strict=True):
            request = requests[i]
            seconds = len(waves[i]) / SAMPLE_RATE
            stats.audio_seconds += seconds
            stats.utterances += 1
            prediction = request.task.parse_output(text) if request.task is not None else None
            yield i, Answer(request, text, prediction, seconds)
        if bar is not None:
            bar.update(len(chosen))
    if bar is not None:
        bar.close()


def predict(
    model: SpeechLLM, tokenizer: Any, requests: Sequence[Request], settings: GenerationSettings, **kwargs: Any
) -> list[Answer]:
    """Answers in the order of `requests` (see `decode_batches` for the keyword arguments)."""
    answers: list[Answer | None] = [None] * len(requests)
    for index, answer in decode_batches(model, tokenizer, requests, settings, **kwargs):
        answers[index] = answer
    return answers  # type: ignore[return-value]

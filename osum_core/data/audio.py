"""Reading audio: any format soundfile reads (WAV of any bit depth, FLAC, OGG, ...), at any rate and with
any number of channels, mixed to mono and resampled with torchaudio."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import soundfile
import torch
import torchaudio.functional

from osum_core.data.bad_items import BadItem


class AudioError(BadItem):
    """Audio that cannot be used; the message names the file (or the shard and key)."""

    reason = "audio_unreadable"


def wav_shortfall(head: bytes, size: int) -> int:
    """Bytes of samples a RIFF/WAVE file's header promises beyond the file's `size` (0 when complete, or
    not a WAV). libsndfile reads a cut WAV as a shorter one without a word; its transcript would no longer
    match."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    position = 12
    while position + 8 <= len(head):
        chunk, length = head[position : position + 4], int.from_bytes(head[position + 4 : position + 8], "little")
        if chunk == b"data":
            if length in (0, 0xFFFFFFFF):  # a streamed WAV does not know its length
                return 0
            return max(position + 8 + length - size, 0)
        position += 8 + length + (length & 1)
    return 0


def check_complete(path: str | Path | BinaryIO, name: str) -> None:
    if hasattr(path, "read"):
        start = path.tell()  # type: ignore[union-attr]
        head = path.read(4096)  # type: ignore[union-attr]
        size = start + len(head) + len(path.read())  # type: ignore[union-attr]
        path.seek(start)  # type: ignore[union-attr]
    else:
        with open(path, "rb") as file:  # type: ignore[arg-type]
            head = file.read(4096)
        size = os.path.getsize(path)  # type: ignore[arg-type]
    missing = wav_shortfall(head, size)
    if missing:
        raise AudioError(f"{name}: the WAV is truncated ({missing} bytes of samples that its header promises are "
                         "missing)", "audio_unreadable")


def load_audio(path: str | Path | BinaryIO, sample_rate: int = 16000, name: str | None = None) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate`, shape [samples]. `path` may be an open binary file (a
    member of a tar shard); `name` then says where it came from in messages. Audio without samples, a WAV
    cut short, NaN or infinite samples, or all zeros (a broken export, never speech) is an `AudioError`."""
    wave, rate = decode_audio(path, name)
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def decode_audio(path: str | Path | BinaryIO, name: str | None = None) -> tuple[torch.Tensor, int]:
    """The whole file decoded: mono float32 samples at the file's own rate, and that rate; the errors of
    `load_audio`."""
    name = name or str(path)
    if not hasattr(path, "read") and not os.path.isfile(path):  # type: ignore[arg-type]
        raise AudioError(f"{name}: audio file not found", "audio_missing")
    if not hasattr(path, "read") and os.path.getsize(path) == 0:  # type: ignore[arg-type]
        raise AudioError(f"{name}: audio file is empty (0 bytes)", "audio_empty")
    check_complete(path, name)
    try:
        data, rate = soundfile.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{name}: cannot read audio ({error})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name}: audio is empty", "audio_empty")
    wave = torch.from_numpy(data).mean(dim=1)  # channels are averaged, as OSUM does
    if not bool(torch.isfinite(wave).all()):
        raise AudioError(f"{name}: audio has NaN or infinite samples", "audio_not_finite")
    if not bool(wave.any()):
        raise AudioError(f"{name}: audio is all zeros (silence without any signal)", "audio_silent")
    return wave, rate

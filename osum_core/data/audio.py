"""Reading audio: any format soundfile reads, mixed to mono, resampled with torchaudio."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import soundfile
import torch
import torchaudio.functional


class AudioError(ValueError):
    """Audio that cannot be read; the message names the file."""


def load_audio(path: str | Path | BinaryIO, sample_rate: int = 16000, name: str | None = None) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate`, shape [samples]. `path` may be an open binary file (a
    member of a tar shard); `name` then says where it came from in messages."""
    name = name or str(path)
    try:
        data, rate = soundfile.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{name}: cannot read audio ({error})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name}: audio is empty")
    wave = torch.from_numpy(data).mean(dim=1)  # channels are averaged, as OSUM does
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave

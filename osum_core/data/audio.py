"""Reading audio: any format soundfile reads, mixed to mono, resampled with torchaudio."""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
import torchaudio.functional


class AudioError(ValueError):
    """Audio that cannot be read; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = 16000) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate`, shape [samples]."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{path}: cannot read audio ({error})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio is empty")
    wave = torch.from_numpy(data).mean(dim=1)  # channels are averaged, as OSUM does
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave

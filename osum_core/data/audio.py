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


def load_audio(path: str | Path | BinaryIO, sample_rate: int = 16000, name: str | None = None) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate`, shape [samples]. `path` may be an open binary file (a
    member of a tar shard); `name` then says where it came from in messages. Audio without samples, with
    NaN or infinite samples, or all zero (a broken export, never speech) is an `AudioError`."""
    name = name or str(path)
    if not hasattr(path, "read") and not os.path.isfile(path):  # type: ignore[arg-type]
        raise AudioError(f"{name}: audio file not found", "audio_missing")
    if not hasattr(path, "read") and os.path.getsize(path) == 0:  # type: ignore[arg-type]
        raise AudioError(f"{name}: audio file is empty (0 bytes)", "audio_empty")
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
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave

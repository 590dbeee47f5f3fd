"""Whisper log-mel features computed with torch (no 30 s padding), and SpecAugment."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


class LogMel:
    """Whisper's log-mel spectrogram of an unpadded utterance: 25 ms Hann window, 10 ms hop, Slaney mel
    filters, log10 clamped to (max - 8) per utterance, then (x + 4) / 4. Equal to transformers'
    `WhisperFeatureExtractor` on the same audio when it is not padded. Returns [frames, n_mels]."""

    def __init__(self, n_mels: int = 80) -> None:
        self.n_mels = n_mels
        self.window = torch.hann_window(N_FFT)
        self.filters = torchaudio.functional.melscale_fbanks(
            n_freqs=N_FFT // 2 + 1,
            f_min=0.0,
            f_max=SAMPLE_RATE / 2,
            n_mels=n_mels,
            sample_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )  # [freqs, mels]

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # Whisper drops the last frame
        mel = self.filters.T @ power
        log_mel = torch.clamp(mel, min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
        return ((log_mel + 4.0) / 4.0).T.contiguous()

    @staticmethod
    def frames(num_samples: int) -> int:
        """How many frames `__call__` returns for `num_samples` samples."""
        return num_samples // HOP_LENGTH


@dataclass(frozen=True)
class SpecAugment:
    """Time and frequency masking (OSUM: 2 masks of up to 50 frames, 2 of up to 10 bins), filled with the
    utterance mean."""

    time_masks: int = 2
    max_time: int = 50
    freq_masks: int = 2
    max_freq: int = 10

    def __call__(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        features = features.clone()
        frames, bins = features.shape
        fill = features.mean()
        for count, width, size, axis in (
            (self.time_masks, self.max_time, frames, 0),
            (self.freq_masks, self.max_freq, bins, 1),
        ):
            for _ in range(count):
                span = int(torch.randint(0, min(width, size) + 1, (), generator=generator))
                start = int(torch.randint(0, max(size - span, 0) + 1, (), generator=generator))
                if axis == 0:
                    features[start : start + span] = fill
                else:
                    features[:, start : start + span] = fill
        return features

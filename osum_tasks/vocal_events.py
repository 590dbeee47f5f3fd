"""Procedural audio for the eight OSUM vocal-event classes: the VED task's demo data (not a plugin itself).

These are not meant to sound real; they are meant to be acoustically distinct per
class (so a small model can learn them from log-mel features) while varying within
a class (duration, pitch, formants, burst count, level) under a numpy Generator.

Class recipes, all 0.3-1.2 s long:
  laugh           3-6 voiced "ha" bursts (f0 200-300 Hz, /a/ formants) at ~5 Hz
  cough           1-2 broadband noise bursts, ~5 ms attack, fast exponential decay
  cry             long harmonic tone 400-600 Hz, falling contour, 5-7 Hz vibrato
  screaming       loud harmonic tone 800-1500 Hz with pitch jitter and roughness
  sigh            long breathy noise (0.2-2 kHz), quick rise then slow falling decay
  throat clearing low (80-120 Hz) rough pulse train, amplitude-modulated at 15-30 Hz
  sneeze          rising inhale noise, then a sudden high-passed (>2.5 kHz) burst
  other           2-4 pure sine beeps (1-2.5 kHz) separated by silence
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["EVENT_SOUNDS", "make_event"]

MIN_DURATION_S = 0.3
MAX_DURATION_S = 1.2
_PEAK_RANGE = (0.5, 0.9)


# --- building blocks ---------------------------------------------------------------


def _harmonic_tone(
    f0: np.ndarray, sr: int, formants: list[tuple[float, float]], tilt_db_per_oct: float = -6.0
) -> np.ndarray:
    """Sum of harmonics of a per-sample ``f0`` track, weighted by formant bumps."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros_like(f0)
    n_harmonics = int(min(40, (0.45 * sr) // max(float(f0.min()), 1.0)))
    for k in range(1, n_harmonics + 1):
        freq = k * f0
        envelope = sum(np.exp(-0.5 * ((freq - centre) / width) ** 2) for centre, width in formants)
        gain = (0.15 + envelope) * 10 ** (tilt_db_per_oct * np.log2(k) / 20)
        gain = np.where(freq < 0.45 * sr, gain, 0.0)  # no aliasing
        out += gain * np.sin(k * phase)
    return out


def _band_noise(n: int, rng: np.random.Generator, sr: int, low: float, high: float) -> np.ndarray:
    """White noise band-limited to [low, high] Hz by an FFT mask."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.abs(noise).max() + 1e-9)


def _ramp(n: int, sr: int, ms: float = 5.0) -> np.ndarray:
    """Raised-cosine fade in/out so segments do not click."""
    m = max(1, min(n // 2, int(sr * ms / 1000)))
    window = np.ones(n)
    fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
    window[:m] = fade
    window[n - m :] = fade[::-1]
    return window


def _samples(seconds: float, sr: int) -> int:
    return round(seconds * sr)


def _vowel_a(rng: np.random.Generator) -> list[tuple[float, float]]:
    """/a/-like formants with a random vocal-tract scale (speaker variation)."""
    scale = rng.uniform(0.9, 1.15)
    return [(800 * scale, 120), (1200 * scale, 150), (2600 * scale, 250)]


# --- per-class recipes ---------------------------------------------------------------


def _laugh(rng: np.random.Generator, sr: int) -> np.ndarray:
    bursts = int(rng.integers(3, 7))
    period = rng.uniform(0.17, 0.23)  # ~5 Hz "ha-ha-ha"
    f0 = rng.uniform(200, 300)
    formants = _vowel_a(rng)
    out = np.zeros(_samples(bursts * period + 0.05, sr))
    for i in range(bursts):
        n = _samples(period * rng.uniform(0.5, 0.7), sr)
        f0_track = np.full(n, f0 * (1 - 0.04 * i)) * np.linspace(1.05, 0.95, n)
        voiced = _harmonic_tone(f0_track, sr, formants)
        voiced /= np.abs(voiced).max()
        breath = _band_noise(n, rng, sr, 500, 4000) * np.exp(-np.arange(n) / (0.02 * sr))  # the "h"
        shape = np.sin(np.pi * np.linspace(0, 1, n)) ** 0.7
        start = _samples(i * period, sr)
        out[start : start + n] += (0.9 * voiced + 0.4 * breath) * shape * rng.uniform(0.7, 1.0)
    return out


def _cough(rng: np.random.Generator, sr: int) -> np.ndarray:
    bursts = int(rng.integers(1, 3))
    gap = rng.uniform(0.15, 0.3)
    out = np.zeros(_samples(0.3 + (bursts - 1) * gap + 0.15, sr))
    for i in range(bursts):
        n = _samples(rng.uniform(0.18, 0.28), sr)
        t = np.arange(n) / sr
        attack = np.minimum(1.0, t / 0.005)
        decay = np.exp(-t / rng.uniform(0.04, 0.08))
        noise = _band_noise(n, rng, sr, 150, 6000)
        resonance = _band_noise(n, rng, sr, 400 * rng.uniform(0.8, 1.2), 1500 * rng.uniform(0.8, 1.2))
        start = _samples(i * gap, sr)
        out[start : start + n] += (noise + 0.8 * resonance) * attack * decay * rng.uniform(0.7, 1.0)
    return out


def _cry(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _samples(rng.uniform(0.8, 1.2), sr)
    t = np.arange(n) / sr
    f0_start = rng.uniform(450, 600)
    contour = np.linspace(f0_start, f0_start * rng.uniform(0.7, 0.85), n)
    vibrato = 1 + rng.uniform(0.03, 0.06) * np.sin(2 * np.pi * rng.uniform(5, 7) * t)
    formants = [(1000 * rng.uniform(0.9, 1.1), 200), (1600 * rng.uniform(0.9, 1.1), 250), (3000, 400)]
    tone = _harmonic_tone(contour * vibrato, sr, formants, tilt_db_per_oct=-4.0)
    wobble = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 2 * np.pi))
    envelope = np.minimum(1.0, t / 0.08) * np.minimum(1.0, (t[-1] - t) / 0.15 + 0.05) * wobble
    return tone * envelope


def _screaming(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _samples(rng.uniform(0.5, 1.2), sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(800, 1500)
    # Jitter: a smoothed random walk of a few percent.
    walk = np.cumsum(rng.standard_normal(n)) / np.sqrt(sr)
    walk = np.convolve(walk, np.ones(200) / 200, mode="same")
    f0_track = f0 * (1 + 0.03 * walk / (np.abs(walk).max() + 1e-9)) * np.linspace(1.0, rng.uniform(0.9, 1.1), n)
    tone = _harmonic_tone(f0_track, sr, [(3000 * rng.uniform(0.9, 1.1), 600)], tilt_db_per_oct=-2.0)
    tone /= np.abs(tone).max()
    rough = 0.15 * _band_noise(n, rng, sr, 2000, 7000)
    envelope = np.minimum(1.0, t / 0.03) * np.minimum(1.0, (t[-1] - t) / 0.05)
    return (tone + rough) * envelope


def _sigh(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _samples(rng.uniform(0.7, 1.2), sr)
    t = np.arange(n) / sr
    cutoff = rng.uniform(1400, 2200)
    breath = _band_noise(n, rng, sr, 200, cutoff) + 0.3 * _band_noise(n, rng, sr, 400, 900)
    peak_at = rng.uniform(0.08, 0.2)
    envelope = np.where(t < peak_at, t / peak_at, np.exp(-(t - peak_at) / rng.uniform(0.25, 0.4)))
    return breath * envelope


def _throat_clearing(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _samples(rng.uniform(0.3, 0.8), sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(80, 120)
    # Glottal-ish pulse train: narrow periodic pulses are rich in low harmonics.
    phase = np.cumsum(np.full(n, f0) * (1 + 0.05 * rng.standard_normal(n).cumsum() / np.sqrt(n))) / sr
    pulses = np.exp(-((phase % 1.0) / 0.08))
    pulses = np.convolve(pulses - pulses.mean(), np.hanning(9) / np.hanning(9).sum(), mode="same")
    low = np.fft.irfft(np.fft.rfft(pulses) * (np.fft.rfftfreq(n, 1 / sr) < 1500), n)
    rattle = 0.5 + 0.5 * np.abs(np.sin(np.pi * rng.uniform(15, 30) * t))
    noise = 0.25 * _band_noise(n, rng, sr, 100, 1200)
    envelope = np.minimum(1.0, t / 0.02) * np.minimum(1.0, (t[-1] - t) / 0.04)
    return (low / (np.abs(low).max() + 1e-9) + noise) * rattle * envelope


def _sneeze(rng: np.random.Generator, sr: int) -> np.ndarray:
    n_in = _samples(rng.uniform(0.2, 0.5), sr)
    n_out = _samples(rng.uniform(0.12, 0.25), sr)
    inhale = _band_noise(n_in, rng, sr, 300, 2500) * np.linspace(0, 1, n_in) ** 2 * rng.uniform(0.15, 0.3)
    t = np.arange(n_out) / sr
    burst = _band_noise(n_out, rng, sr, 2500 * rng.uniform(0.9, 1.2), 7500)
    burst *= np.minimum(1.0, t / 0.003) * np.exp(-t / rng.uniform(0.04, 0.08))
    gap = np.zeros(_samples(rng.uniform(0.01, 0.04), sr))
    return np.concatenate([inhale, gap, burst])


def _other(rng: np.random.Generator, sr: int) -> np.ndarray:
    beeps = int(rng.integers(2, 5))
    freq = rng.uniform(1000, 2500)
    pieces = []
    for _ in range(beeps):
        n = _samples(rng.uniform(0.06, 0.14), sr)
        pieces.append(np.sin(2 * np.pi * freq * np.arange(n) / sr) * _ramp(n, sr))
        pieces.append(np.zeros(_samples(rng.uniform(0.05, 0.12), sr)))
    return np.concatenate(pieces)


# One sound maker per VED label (the label set itself is the VED task's, osum_tasks/ved.py).
EVENT_SOUNDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "laugh": _laugh,
    "cough": _cough,
    "cry": _cry,
    "screaming": _screaming,
    "sigh": _sigh,
    "throat clearing": _throat_clearing,
    "sneeze": _sneeze,
    "other": _other,
}


def make_event(label: str, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """One random instance of ``label``: float32 mono, 0.3-1.2 s, peak 0.5-0.9."""
    recipe = EVENT_SOUNDS.get(label)
    if recipe is None:
        raise ValueError(f"unknown vocal event {label!r}; expected one of {tuple(EVENT_SOUNDS)}")
    audio = recipe(rng, sample_rate)
    # Pad/cut into the documented duration range rather than trusting each recipe.
    lo, hi = _samples(MIN_DURATION_S, sample_rate), _samples(MAX_DURATION_S, sample_rate)
    if len(audio) < lo:
        audio = np.pad(audio, (0, lo - len(audio)))
    audio = audio[:hi] * _ramp(min(len(audio), hi), sample_rate, ms=3.0)
    peak = np.abs(audio).max()
    target = rng.uniform(*_PEAK_RANGE)
    return (audio * (target / peak)).astype(np.float32)

"""Procedural vocal events: ranges, determinism and class discriminability."""

import numpy as np
import pytest
import torch
import torchaudio

from osum_tasks.ved import LABELS as EVENT_LABELS
from osum_tasks.vocal_events import EVENT_SOUNDS, make_event

SR = 16000


def test_labels_are_the_osum_set_and_each_has_a_sound():
    assert EVENT_LABELS == ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other")
    assert set(EVENT_SOUNDS) == set(EVENT_LABELS)


@pytest.mark.parametrize("label", EVENT_LABELS)
def test_each_label_is_in_range(label):
    rng = np.random.default_rng(0)
    for _ in range(10):
        audio = make_event(label, rng, SR)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert 0.3 <= len(audio) / SR <= 1.2
        assert np.all(np.isfinite(audio))
        assert 0.5 - 1e-6 <= np.abs(audio).max() <= 0.9 + 1e-6


@pytest.mark.parametrize("label", EVENT_LABELS)
def test_seeded_generator_is_deterministic_and_seeds_vary(label):
    a = make_event(label, np.random.default_rng(7), SR)
    b = make_event(label, np.random.default_rng(7), SR)
    c = make_event(label, np.random.default_rng(8), SR)
    assert a.tobytes() == b.tobytes()
    assert len(a) != len(c) or not np.array_equal(a, c)


def test_other_sample_rates_work():
    audio = make_event("laugh", np.random.default_rng(1), 22050)
    assert 0.3 <= len(audio) / 22050 <= 1.2


def test_unknown_label_lists_the_known_ones():
    with pytest.raises(ValueError, match="burp") as info:
        make_event("burp", np.random.default_rng(0))
    assert "throat clearing" in str(info.value)


def _log_mel_stats(audio: np.ndarray, fbanks: torch.Tensor, window: torch.Tensor) -> np.ndarray:
    spec = torch.stft(torch.from_numpy(audio), n_fft=400, hop_length=160, window=window, return_complex=True)
    log_mel = torch.log(spec.abs().pow(2).T @ fbanks + 1e-6)  # (frames, 80)
    return torch.cat([log_mel.mean(0), log_mel.std(0)]).numpy()


def test_classes_are_separable_by_nearest_centroid_on_log_mel():
    fbanks = torchaudio.functional.melscale_fbanks(201, 0.0, SR / 2, 80, SR)
    window = torch.hann_window(400)
    rng = np.random.default_rng(1234)
    draws, train = 30, 20
    features = np.array(
        [_log_mel_stats(make_event(label, rng, SR), fbanks, window) for label in EVENT_LABELS for _ in range(draws)]
    )
    labels = np.repeat(np.arange(len(EVENT_LABELS)), draws)
    is_train = np.tile(np.arange(draws) < train, len(EVENT_LABELS))
    mean, std = features[is_train].mean(0), features[is_train].std(0) + 1e-6
    z = (features - mean) / std
    centroids = np.stack([z[is_train & (labels == c)].mean(0) for c in range(len(EVENT_LABELS))])
    test = z[~is_train]
    predicted = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = float((predicted == labels[~is_train]).mean())
    assert accuracy >= 0.9, accuracy

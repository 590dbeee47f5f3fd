import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from osum_core.data.features import LogMel, SpecAugment


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", [0.73, 3.2])
def test_log_mel_matches_whisper_feature_extractor_on_unpadded_audio(n_mels, seconds):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    reference = WhisperFeatureExtractor(feature_size=n_mels)(
        wave, sampling_rate=16000, padding=False, return_tensors="np"
    )["input_features"][0]
    ours = LogMel(n_mels)(torch.from_numpy(wave)).numpy().T
    assert ours.shape == reference.shape
    assert LogMel.frames(wave.size) == reference.shape[1]
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_spec_augment_masks_within_limits_and_is_seeded():
    features = torch.randn(300, 80)
    augment = SpecAugment(time_masks=2, max_time=50, freq_masks=2, max_freq=10)
    a = augment(features, torch.Generator().manual_seed(1))
    b = augment(features, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    changed_frames = (a != features).any(dim=1).sum()
    changed_bins = (a != features).all(dim=0).sum()
    assert 0 < changed_frames <= 300
    assert changed_bins <= 20
    assert not torch.equal(a, features)

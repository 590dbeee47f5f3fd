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


FRAMES, BINS = 300, 80
# Distinct values none of which is the mean (every one ends in .5, the mean is a whole number): a masked
# value is told from an unmasked one.
FEATURES = torch.arange(FRAMES * BINS, dtype=torch.float64).reshape(FRAMES, BINS) + 0.5
SEEDS = range(100)


def masks(augment: SpecAugment, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked frames, masked bins) of `augment` with `seed`, after checking that the output is the input
    with whole frames and whole bins (on every frame) set to the input's mean, and nothing else changed."""
    features = FEATURES.clone()
    out = augment(features, torch.Generator().manual_seed(seed))
    assert torch.equal(features, FEATURES)  # the input is left as it was
    changed = out != features
    frames, bins = changed.all(dim=1), changed.all(dim=0)
    assert torch.equal(changed, frames[:, None] | bins[None, :]), seed  # only whole frames and whole bins
    assert torch.all(out[changed] == features.mean()), seed  # filled with the utterance mean
    return frames, bins


def runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive True values."""
    edges = torch.diff(torch.cat([torch.zeros(1), flags.double(), torch.zeros(1)])).nonzero().flatten()
    return (edges[1::2] - edges[0::2]).tolist()


@pytest.mark.parametrize(("count", "width"), [(1, 50), (2, 50), (3, 7)])
def test_time_masks_are_at_most_count_runs_of_whole_frames_at_most_width_each(count, width):
    augment = SpecAugment(time_masks=count, max_time=width, freq_masks=0, max_freq=10)
    spans = []
    for seed in SEEDS:
        frames, bins = masks(augment, seed)
        assert not bins.any(), seed  # a time mask never masks a frequency band
        assert len(runs(frames)) <= count and frames.sum() <= count * width, seed
        spans += runs(frames) if count == 1 else []
    if count == 1:  # one mask: every run is one mask, of any width up to the limit
        assert max(spans) == width and min(spans) < width // 2
    assert sum(bool(masks(augment, seed)[0].any()) for seed in SEEDS) > len(SEEDS) // 2  # it does mask


@pytest.mark.parametrize(("count", "width"), [(1, 10), (2, 10), (4, 3)])
def test_frequency_masks_are_at_most_count_runs_of_whole_bins_at_most_width_each(count, width):
    augment = SpecAugment(time_masks=0, max_time=50, freq_masks=count, max_freq=width)
    spans = []
    for seed in SEEDS:
        frames, bins = masks(augment, seed)
        assert not frames.any(), seed  # a frequency mask never masks a frame
        assert len(runs(bins)) <= count and bins.sum() <= count * width, seed
        spans += runs(bins) if count == 1 else []
    if count == 1:
        assert max(spans) == width and min(spans) < width // 2
    assert sum(bool(masks(augment, seed)[1].any()) for seed in SEEDS) > len(SEEDS) // 2


def test_osums_time_and_frequency_masks_together():
    augment = SpecAugment()  # OSUM: 2 masks of up to 50 frames, 2 of up to 10 bins
    for seed in SEEDS:
        frames, bins = masks(augment, seed)
        assert len(runs(frames)) <= 2 and frames.sum() <= 100 and len(runs(bins)) <= 2 and bins.sum() <= 20, seed
    assert all(any(masks(augment, seed)[axis].any() for seed in SEEDS) for axis in (0, 1))


def test_spec_augment_is_the_same_for_the_same_seed_and_draws_only_from_its_generator():
    augment = SpecAugment()
    global_state = torch.get_rng_state()
    first = [augment(FEATURES, torch.Generator().manual_seed(seed)) for seed in SEEDS]
    assert torch.equal(torch.get_rng_state(), global_state)  # torch's global generator is untouched
    torch.manual_seed(123)  # another global state changes nothing
    assert all(torch.equal(augment(FEATURES, torch.Generator().manual_seed(s)), first[s]) for s in SEEDS)
    assert len({tuple(masks(augment, seed)[0].nonzero().flatten().tolist()) for seed in SEEDS}) > 50  # seeds differ
    assert len({tuple(masks(augment, seed)[1].nonzero().flatten().tolist()) for seed in SEEDS}) > 20

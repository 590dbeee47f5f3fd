"""Behaviour of the eSpeak NG wrapper: audio, word timings, voices, determinism."""

import ctypes

import numpy as np
import pytest

from osum_core.demo import speech_synth
from osum_core.demo.speech_synth import Speech, Voice, WordTiming, list_variants, synthesize

TEXT = "Hello world, this is a small test."


@pytest.fixture(scope="module")
def speech() -> Speech:
    return synthesize(TEXT, Voice())


def test_event_struct_matches_speak_lib_h_layout():
    # espeak_EVENT on x86-64: six 4-byte ints, a pointer at 24, an 8-byte union at 32.
    assert ctypes.sizeof(speech_synth._Event) == 40
    assert speech_synth._Event.user_data.offset == 24
    assert speech_synth._Event.id.offset == 32


def test_returns_float_audio_at_native_rate(speech):
    assert speech.sample_rate == 22050
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert len(speech.audio) > 0.5 * speech.sample_rate
    assert np.all(np.isfinite(speech.audio)) and np.abs(speech.audio).max() <= 1.0
    assert np.abs(speech.audio).max() > 0.05


def test_words_match_text_and_are_ordered_within_audio(speech):
    assert [w.word for w in speech.words] == TEXT.split()
    assert all(isinstance(w, WordTiming) for w in speech.words)
    duration = len(speech.audio) / speech.sample_rate
    for w in speech.words:
        assert 0.0 <= w.start < w.end <= duration
    for a, b in zip(speech.words, speech.words[1:]):
        assert a.start < b.start and a.end <= b.start


def test_word_ends_exclude_trailing_pause(speech):
    # "world," is followed by a clause pause, which must not count as the word.
    world, this = speech.words[1], speech.words[2]
    assert this.start - world.end > 0.05
    tail = speech.audio[int(world.end * speech.sample_rate) : int(this.start * speech.sample_rate)]
    assert np.abs(tail).max() < 0.05


def test_words_align_with_punctuation_and_numbers():
    text = "Wait - 42 apples... ok"
    result = synthesize(text, Voice())
    assert [w.word for w in result.words] == text.split()
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert result.words[-1].end > result.words[-1].start


def test_longer_text_gives_longer_audio():
    short = synthesize("Hello.", Voice())
    long = synthesize("Hello, this sentence is quite a lot longer than the other one.", Voice())
    assert len(long.audio) > 2 * len(short.audio)


def test_variants_sound_different():
    male = synthesize(TEXT, Voice(variant="m1"))
    female = synthesize(TEXT, Voice(variant="f3"))
    n = min(len(male.audio), len(female.audio))
    assert not np.array_equal(male.audio[:n], female.audio[:n])


def test_same_input_is_bit_identical_regardless_of_history():
    voice = Voice(variant="f3", rate=160, pitch=60)
    first = synthesize(TEXT, voice)
    synthesize("Something else entirely, with a whisper.", Voice(variant="whisper"))
    synthesize("And a klatt voice.", Voice(variant="klatt"))
    second = synthesize(TEXT, voice)
    assert first.audio.tobytes() == second.audio.tobytes()
    assert first.words == second.words


def test_slower_rate_gives_longer_audio():
    slow = synthesize(TEXT, Voice(rate=100))
    fast = synthesize(TEXT, Voice(rate=250))
    assert len(slow.audio) > 1.5 * len(fast.audio)


def test_unknown_variant_is_named_with_alternatives():
    with pytest.raises(ValueError, match="nosuchvariant") as info:
        synthesize("hi", Voice(variant="nosuchvariant"))
    assert "m1" in str(info.value) and "f3" in str(info.value)


def test_unknown_voice_and_bad_prosody_raise():
    with pytest.raises(ValueError, match="xx-nowhere"):
        synthesize("hi", Voice(name="xx-nowhere"))
    with pytest.raises(ValueError, match="rate"):
        synthesize("hi", Voice(rate=5))
    with pytest.raises(ValueError):
        synthesize("   ", Voice())


def test_list_variants_has_the_classic_set():
    variants = list_variants()
    assert variants == sorted(variants)
    for name in ("m1", "m7", "f1", "f5", "klatt", "whisper"):
        assert name in variants


def test_a_variants_gender_is_the_one_its_file_states():
    from osum_core.demo.speech_synth import variant_gender

    assert [variant_gender(v) for v in ("f1", "f5", "Alicia", "anika", "whisperf")] == ["female"] * 5
    # "fast" starts with f but states no gender: it keeps en-us's, as eSpeak speaks it
    assert [variant_gender(v) for v in ("m1", "m7", "Andy", "fast", "klatt")] == ["male"] * 5


def test_an_unknown_demo_voice_is_named_with_its_config_key():
    from osum_core.config import load_config
    from osum_core.plugins import CorpusSpec

    demo = {**load_config()["data"]["demo"], "heldout_voices": ["m6", "nosuch"]}
    with pytest.raises(ValueError, match=r"data.demo.heldout_voices: unknown eSpeak NG variant 'nosuch'; available: "):
        CorpusSpec.from_config(demo, 1, ("<TRANSCRIBE>",))

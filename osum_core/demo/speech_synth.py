"""Text-to-speech with word timings, via eSpeak NG loaded through ctypes.

The library and its data come from the ``espeakng-loader`` wheel; no ``espeak-ng``
binary and no subprocess is used.

Determinism: eSpeak keeps synthesis state in C statics that no API call resets
(the pitch-flutter table index, resonator memories of the breath/noise filters,
the random generator).  Re-using one initialised library therefore gives audio that
depends on everything synthesised before.  So every :func:`synthesize` call loads a
private copy of ``libespeak-ng.so`` afresh (``dlopen``), initialises it, seeds its
random generator, synthesises, and unloads it again (``espeak_Terminate`` +
``dlclose``).  That costs ~3 ms per call and makes the same text + voice
bit-identical regardless of call history.  The private copy (made once per process)
also keeps us apart from any other user of the wheel's library in this process.
eSpeak is not re-entrant, so one module-level lock serialises everything.

Word timings come from ``espeakEVENT_WORD`` events: a word starts at its first
event's ``audio_position`` and nominally ends where the next word starts (the last
word at the final END/MSG_TERMINATED event, or the end of the audio).  That
nominal end includes the pause after the word (e.g. after a comma), so it is then
trimmed back to the end of the last 5 ms frame whose RMS is within 40 dB of the
utterance's loudest frame.  The audio itself is returned untrimmed.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import functools
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import espeakng_loader
import numpy as np

__all__ = ["Speech", "Voice", "WordTiming", "list_variants", "synthesize"]


@dataclass(frozen=True)
class Voice:
    """An eSpeak voice: language voice name plus optional variant and prosody."""

    name: str = "en-us"
    variant: str = ""  # file in espeak-ng-data/voices/!v, e.g. "f3" -> "en-us+f3"
    rate: int = 175  # words per minute (espeakRATE)
    pitch: int = 50  # 0..100 (espeakPITCH)
    pitch_range: int = 50  # 0..100 (espeakRANGE)


@dataclass(frozen=True)
class WordTiming:
    """Where one whitespace-separated word of the input sits in the audio."""

    word: str
    start: float  # seconds from the start of the returned audio
    end: float  # seconds


@dataclass(frozen=True)
class Speech:
    """Synthesised audio and the timing of each input word."""

    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    words: tuple[WordTiming, ...]


# --- speak_lib.h constants -------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when data is missing
_EE_OK = 0

_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6

_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_PUNCTUATION = 5
_PARAM_CAPITALS = 6
_PARAM_WORDGAP = 7

_RATE_MIN, _RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM
_BUFFER_MS = 0  # 0 = eSpeak's default callback buffer length (60 ms)
_RAND_SEED = 1

# Trailing-silence trim of word ends.
_TRIM_FRAME_S = 0.005
_TRIM_DB_BELOW_PEAK = 40.0


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h (40 bytes on x86-64: 6 ints, pointer, union)."""

    _fields_ = [
        ("type", ctypes.c_int),  # espeak_EVENT_TYPE (an enum, int-sized)
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position
        ("length", ctypes.c_int),  # characters, for WORD events
        ("audio_position", ctypes.c_int),  # ms within this message's audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class _Capture:
    """What the synth callback collected for the current message."""

    chunks: list[np.ndarray] = field(default_factory=list)
    events: list[tuple[int, int, int, int]] = field(default_factory=list)  # type, pos, len, ms


_LOCK = threading.Lock()
_capture: _Capture | None = None
_private_lib: Path | None = None


def _on_synth(wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.POINTER(_Event)) -> int:
    capture = _capture
    if capture is None:
        return 1  # nobody is listening: abort synthesis
    if wav and count > 0:
        capture.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    if events:
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            capture.events.append((e.type, e.text_position, e.length, e.audio_position))
            i += 1
    return 0


# Module-level so the C function pointer outlives every call into the library.
_CALLBACK = _SynthCallback(_on_synth)


def _private_library_path() -> Path:
    """Copy the wheel's library once per process so our dlopen/dlclose is ours alone."""
    global _private_lib
    if _private_lib is None:
        folder = Path(tempfile.mkdtemp(prefix="osum-espeak-"))
        atexit.register(shutil.rmtree, folder, True)
        target = folder / "libespeak-ng-osum.so"
        shutil.copyfile(espeakng_loader.get_library_path(), target)
        _private_lib = target
    return _private_lib


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_uint = ctypes.c_int, ctypes.c_uint
    lib.espeak_Initialize.argtypes = [c_int, c_int, ctypes.c_char_p, c_int]
    lib.espeak_Initialize.restype = c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = c_int
    lib.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
    lib.espeak_SetParameter.restype = c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        c_uint,
        c_int,
        c_uint,
        c_uint,
        ctypes.POINTER(c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = c_int
    lib.espeak_Synchronize.restype = c_int
    lib.espeak_Terminate.restype = c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = c_int


@contextmanager
def _fresh_engine() -> Iterator[tuple[ctypes.CDLL, int]]:
    """A freshly loaded, initialised library (caller holds ``_LOCK``); unloaded after."""
    lib = ctypes.CDLL(str(_private_library_path()))
    handle = lib._handle
    initialised = False
    try:
        _declare(lib)
        data_path = espeakng_loader.get_data_path().encode()
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT)
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (data path {data_path.decode()})")
        initialised = True
        lib.espeak_SetSynthCallback(_CALLBACK)
        lib.espeak_ng_SetRandSeed(_RAND_SEED)
        yield lib, sample_rate
    finally:
        if initialised:
            lib.espeak_Terminate()
        del lib
        _ctypes.dlclose(handle)  # next load starts from pristine C statics


def list_variants() -> list[str]:
    """Variant names shipped in the wheel's ``espeak-ng-data/voices/!v`` folder."""
    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file())


@functools.cache
def variant_gender(variant: str) -> str:
    """"female" or "male", as the variant's own file says (its ``gender`` line: ``f1``..``f5``, ``Alicia``,
    ``anika`` ... are female). A variant without that line (``fast``, ``klatt``, but also the high-pitched
    ``zac`` and ``shelby``) is called male, as eSpeak's ``en-us`` voice is: give SGC's corpus voices whose
    file states a gender."""
    path = Path(espeakng_loader.get_data_path()) / "voices" / "!v" / variant
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].lower() == "gender":
                return "female" if words[1].lower() == "female" else "male"
    return "male"


def _voice_spec(voice: Voice) -> str:
    if not voice.name or "+" in voice.name:
        raise ValueError(f"voice name {voice.name!r} must be a plain voice (put variants in Voice.variant)")
    if voice.variant:
        available = list_variants()
        if voice.variant not in available:
            raise ValueError(f"unknown eSpeak variant {voice.variant!r}; available: {', '.join(available)}")
        return f"{voice.name}+{voice.variant}"
    return voice.name


def _check_prosody(voice: Voice) -> None:
    if not _RATE_MIN <= voice.rate <= _RATE_MAX:
        raise ValueError(f"rate {voice.rate} outside {_RATE_MIN}..{_RATE_MAX} words per minute")
    for name, value in (("pitch", voice.pitch), ("pitch_range", voice.pitch_range)):
        if not 0 <= value <= 100:
            raise ValueError(f"{name} {value} outside 0..100")


def _run_synthesis(text: str, spec: str, voice: Voice) -> tuple[np.ndarray, int, list[tuple[int, int, int, int]]]:
    """Synthesise ``text``; returns int16 samples, sample rate and raw events."""
    global _capture
    with _LOCK, _fresh_engine() as (lib, sample_rate):
        if lib.espeak_SetVoiceByName(spec.encode()) != _EE_OK:
            raise ValueError(f"unknown eSpeak voice {spec!r}")
        # Every parameter set explicitly, after the voice (a voice change may reset them).
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_VOLUME, 100),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_PUNCTUATION, 0),
            (_PARAM_CAPITALS, 0),
            (_PARAM_WORDGAP, 0),
        ):
            lib.espeak_SetParameter(param, value, 0)
        encoded = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(encoded, len(encoded))
        capture = _Capture()
        _capture = capture
        try:
            status = lib.espeak_Synth(buffer, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            lib.espeak_Synchronize()
        finally:
            _capture = None
    samples = np.concatenate(capture.chunks) if capture.chunks else np.zeros(0, np.int16)
    return samples, sample_rate, capture.events


def _word_starts(
    words: list[str], spans: list[tuple[int, int]], events: list[tuple[int, int, int, int]]
) -> list[float | None]:
    """First WORD-event time (s) of each whitespace word; None for words eSpeak skipped."""
    starts: list[float | None] = [None] * len(spans)
    k = 0  # words are matched in order, so later events never move time backwards
    for kind, position, _length, ms in events:
        if kind != _EVENT_WORD:
            continue
        char = position - 1  # text_position is 1-based, in characters
        while k < len(spans) and spans[k][1] <= char:
            k += 1
        if k == len(spans):
            break
        if starts[k] is None:
            starts[k] = ms / 1000.0
    # eSpeak attaches a joining mark to the following word ("ok - fine" reports
    # "fine" at the "-"), so a punctuation-only word whose successor got no event of
    # its own hands its event over.
    for i in range(len(words) - 1):
        if starts[i] is not None and starts[i + 1] is None and not any(c.isalnum() for c in words[i]):
            starts[i], starts[i + 1] = None, starts[i]
    return starts


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1))


def _trimmed_end(audio: np.ndarray, threshold: float, frame: int, start: float, end: float, sample_rate: int) -> float:
    """Pull ``end`` back to the last loud frame in [start, end] (frames aligned to ``end``)."""
    first = round(start * sample_rate)
    segment = audio[first : min(round(end * sample_rate), len(audio))]
    whole = len(segment) // frame
    if whole == 0:
        return end if len(segment) and float(_rms(segment)) >= threshold else start
    offset = len(segment) - whole * frame  # short remainder at the word's start
    loud = np.nonzero(_rms(segment[offset:].reshape(whole, frame)) >= threshold)[0]
    if len(loud) == 0:
        return start
    return float(min(end, (first + offset + (loud[-1] + 1) * frame) / sample_rate))


def _word_timings(
    text: str, audio: np.ndarray, sample_rate: int, events: list[tuple[int, int, int, int]]
) -> tuple[WordTiming, ...]:
    matches = list(re.finditer(r"\S+", text))
    spans = [(m.start(), m.end()) for m in matches]
    duration = len(audio) / sample_rate
    terminal = [ms for kind, _, _, ms in events if kind in (_EVENT_END, _EVENT_MSG_TERMINATED)]
    speech_end = min(max(terminal) / 1000.0, duration) if terminal else duration

    raw = _word_starts([m.group() for m in matches], spans, events)
    # A word without an event (e.g. a lone "-") gets zero length where the next
    # spoken word begins, so the previous word still covers the audio up to there.
    starts: list[float] = [0.0] * len(raw)
    following = speech_end
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] is not None:
            following = min(raw[i], following)
        starts[i] = min(following, speech_end)
    ends = starts[1:] + [speech_end]

    frame = max(1, round(_TRIM_FRAME_S * sample_rate))
    padded = np.pad(audio, (0, (-len(audio)) % frame))
    peak = float(_rms(padded.reshape(-1, frame)).max()) if len(padded) else 0.0
    threshold = max(peak * 10 ** (-_TRIM_DB_BELOW_PEAK / 20), 1e-6)
    return tuple(
        WordTiming(m.group(), s, _trimmed_end(audio, threshold, frame, s, e, sample_rate) if e > s else s)
        for m, s, e in zip(matches, starts, ends)
    )


def synthesize(text: str, voice: Voice) -> Speech:
    """Speak ``text`` with ``voice``; ``words`` align 1:1 with ``text.split()``."""
    if not text.split():
        raise ValueError("text has no words to speak")
    spec = _voice_spec(voice)
    _check_prosody(voice)
    samples, sample_rate, events = _run_synthesis(text, spec, voice)
    audio = samples.astype(np.float32) / 32768.0
    return Speech(audio=audio, sample_rate=sample_rate, words=_word_timings(text, audio, sample_rate, events))

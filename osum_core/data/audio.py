"""Reading audio: any format soundfile reads (WAV of any bit depth, FLAC, OGG, ...), at any rate and with
any number of channels, mixed to mono and resampled with torchaudio."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy
import soundfile
import torch
import torchaudio.functional

from osum_core.data.bad_items import BadItem

SPAN_SLACK_SECONDS = 0.05  # a segment may end this far past its file's last sample (rounding in the release)


class AudioError(BadItem):
    """Audio that cannot be used; the message names the file (or the shard and key)."""

    reason = "audio_unreadable"


def wav_shortfall(head: bytes, size: int) -> int:
    """Bytes of samples a RIFF/WAVE file's header promises beyond the file's `size` (0 when complete, or
    not a WAV). libsndfile reads a cut WAV as a shorter one without a word; its transcript would no longer
    match."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    position = 12
    while position + 8 <= len(head):
        chunk, length = head[position : position + 4], int.from_bytes(head[position + 4 : position + 8], "little")
        if chunk == b"data":
            if length in (0, 0xFFFFFFFF):  # a streamed WAV does not know its length
                return 0
            return max(position + 8 + length - size, 0)
        position += 8 + length + (length & 1)
    return 0


def check_complete(path: str | Path | BinaryIO, name: str) -> None:
    if hasattr(path, "read"):
        start = path.tell()  # type: ignore[union-attr]
        head = path.read(4096)  # type: ignore[union-attr]
        size = start + len(head) + len(path.read())  # type: ignore[union-attr]
        path.seek(start)  # type: ignore[union-attr]
    else:
        with open(path, "rb") as file:  # type: ignore[arg-type]
            head = file.read(4096)
        size = os.path.getsize(path)  # type: ignore[arg-type]
    missing = wav_shortfall(head, size)
    if missing:
        raise AudioError(f"{name}: the WAV is truncated ({missing} bytes of samples that its header promises are "
                         "missing)", "audio_unreadable")


Span = tuple[float, float]  # (start, end) in seconds: a segment of a longer recording


def load_audio(path: str | Path | BinaryIO, sample_rate: int = 16000, name: str | None = None,
               span: Span | None = None) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate`, shape [samples]. `path` may be an open binary file (a
    member of a tar shard); `name` then says where it came from in messages. `span`: only that segment is
    read (a manifest line's ``start``/``end``). Audio without samples, a WAV cut short, NaN or infinite
    samples, all zeros (a broken export, never speech) or a span past the file's end is an `AudioError`."""
    wave, rate = decode_audio(path, name, span)
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def decode_audio(path: str | Path | BinaryIO, name: str | None = None,
                 span: Span | None = None) -> tuple[torch.Tensor, int]:
    """The file (or its `span`) decoded: mono float32 samples at the file's own rate, and that rate; the
    errors of `load_audio`."""
    name = name or str(path)
    if not hasattr(path, "read") and not os.path.isfile(path):  # type: ignore[arg-type]
        raise AudioError(f"{name}: audio file not found", "audio_missing")
    if not hasattr(path, "read") and os.path.getsize(path) == 0:  # type: ignore[arg-type]
        raise AudioError(f"{name}: audio file is empty (0 bytes)", "audio_empty")
    check_complete(path, name)
    try:
        if span is None:
            data, rate = soundfile.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
        else:
            data, rate = read_span(path, span, name)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{name}: cannot read audio ({error})") from None
    return checked_wave(torch.from_numpy(data).mean(dim=1), name), rate  # channels averaged, as OSUM does


def checked_wave(wave: torch.Tensor, name: str) -> torch.Tensor:
    """`wave` (mono samples) if it can be used: not empty, finite, not all zeros; else an `AudioError`."""
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: audio is empty", "audio_empty")
    if not bool(torch.isfinite(wave).all()):
        raise AudioError(f"{name}: audio has NaN or infinite samples", "audio_not_finite")
    if not bool(wave.any()):
        raise AudioError(f"{name}: audio is all zeros (silence without any signal)", "audio_silent")
    return wave


class AudioTooLong(AudioError):
    """Audio longer than a limit; `seconds` is its length (or, where its header states none, how much was
    decoded before decoding stopped)."""

    reason = "too_long"

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message, "too_long")
        self.seconds = seconds


UPLOAD_BLOCK_SECONDS = 10
# Up to this rate an upload is resampled whole, as `load_audio` does (the same samples as `osum predict`);
# above it, block by block (the edges of 10 s blocks differ by a filter's width; memory stays bounded).
WHOLE_RESAMPLE_RATE = 48000


def load_limited_audio(file: BinaryIO, max_seconds: float, name: str, sample_rate: int = 16000) -> torch.Tensor:
    """`load_audio` for audio from outside (a server's upload): the length the header states is checked before
    anything is decoded, and decoding goes a block at a time, each block mixed to mono at once (a file of many
    channels at a high rate is never held whole) and stopping as soon as the audio passes `max_seconds` (a
    stream whose header states no length): `AudioTooLong`. Audio above `WHOLE_RESAMPLE_RATE` is resampled
    block by block too. The other checks and errors are `load_audio`'s."""
    check_complete(file, name)
    blocks, frames = [], 0
    try:
        with soundfile.SoundFile(file) as audio:
            rate = audio.samplerate
            if audio.frames / rate > max_seconds:
                raise AudioTooLong(f"{name}: {audio.frames / rate:.1f} s of audio", audio.frames / rate)
            for block in audio.blocks(blocksize=UPLOAD_BLOCK_SECONDS * rate, dtype="float32", always_2d=True):
                frames += len(block)
                if frames / rate > max_seconds:
                    raise AudioTooLong(f"{name}: more than {max_seconds:g} s of audio", frames / rate)
                mono = torch.from_numpy(block.mean(axis=1))
                if rate > WHOLE_RESAMPLE_RATE:  # kept at `sample_rate`: a long upload at 192 kHz is never held
                    mono = torchaudio.functional.resample(mono, rate, sample_rate)
                blocks.append(mono)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{name}: cannot read audio ({error})") from None
    wave = checked_wave(torch.cat(blocks) if blocks else torch.zeros(0), name)
    if rate != sample_rate and rate <= WHOLE_RESAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


MEASURE_BLOCK_SECONDS = 30  # `measure_audio` holds this much of a file at a time


def measure_audio(path: str | Path, name: str | None = None) -> tuple[int, int]:
    """Decode the whole file, a block at a time (an hour-long recording is never held whole), with every
    check of `load_audio`; returns its sample count and rate."""
    name = name or str(path)
    if not os.path.isfile(path):
        raise AudioError(f"{name}: audio file not found", "audio_missing")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{name}: audio file is empty (0 bytes)", "audio_empty")
    check_complete(path, name)
    frames, heard = 0, False
    try:
        with soundfile.SoundFile(str(path)) as audio:
            rate = audio.samplerate
            for block in audio.blocks(blocksize=MEASURE_BLOCK_SECONDS * rate, dtype="float32", always_2d=True):
                if not numpy.isfinite(block).all():
                    raise AudioError(f"{name}: audio has NaN or infinite samples", "audio_not_finite")
                heard = heard or bool(block.any())
                frames += len(block)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"{name}: cannot read audio ({error})") from None
    if frames == 0:
        raise AudioError(f"{name}: audio is empty", "audio_empty")
    if not heard:
        raise AudioError(f"{name}: audio is all zeros (silence without any signal)", "audio_silent")
    return frames, rate


def read_span(path: str | Path | BinaryIO, span: Span, name: str) -> tuple[Any, int]:
    """Samples `span` of a file, seeking to its start (a segment of an hour-long Opus recording is read, not
    the hour); a span that ends past the file's end is an `AudioError`."""
    with soundfile.SoundFile(path if hasattr(path, "read") else str(path)) as audio:  # type: ignore[arg-type]
        first, last = round(span[0] * audio.samplerate), round(span[1] * audio.samplerate)
        if last > audio.frames + round(SPAN_SLACK_SECONDS * audio.samplerate):
            raise AudioError(f"{name}: the segment {span[0]:.2f}-{span[1]:.2f} s ends past the audio's "
                             f"{audio.frames / audio.samplerate:.2f} s", "audio_unreadable")
        audio.seek(min(first, audio.frames))
        return audio.read(max(last - first, 0), dtype="float32", always_2d=True), audio.samplerate


# Containers soundfile cannot open (video, AAC): their audio is extracted once with PyAV (FFmpeg), as WAV.
CONTAINER_SUFFIXES = (".mp4", ".m4a", ".mkv", ".mov", ".webm", ".avi")


def extract_audio(source: str | Path, target: str | Path, sample_rate: int = 16000) -> float:
    """The first audio stream of a container file (`source`, e.g. an .mp4 clip) as 16-bit mono WAV at
    `sample_rate` in `target`, written atomically; returns its duration in seconds. A file without audio, or
    that FFmpeg cannot decode, is an `AudioError` naming it."""
    try:
        import av
    except ImportError:
        raise AudioError(f"{source}: reading audio from {Path(source).suffix} files needs PyAV, which bundles "
                         "FFmpeg: pip install av (or osum[video])") from None
    target = Path(target)
    chunks = []
    try:
        with av.open(str(source)) as container:
            if not container.streams.audio:
                raise AudioError(f"{source}: the file has no audio stream", "audio_empty")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(audio=0):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except AudioError:
        raise
    except Exception as error:  # noqa: BLE001 - FFmpeg's many errors (av.error.*) all mean: cannot read it
        raise AudioError(f"{source}: cannot read audio ({type(error).__name__}: {error})") from None
    samples = torch.cat([torch.from_numpy(c) for c in chunks]).numpy() if chunks else None
    if samples is None or len(samples) == 0:
        raise AudioError(f"{source}: the audio stream holds no samples", "audio_empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    soundfile.write(partial, samples, sample_rate, format="WAV", subtype="PCM_16")
    partial.replace(target)
    return len(samples) / sample_rate

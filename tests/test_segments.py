"""Manifest lines that are segments of a longer recording (``start``/``end`` in seconds, as WenetSpeech's are):
training, `osum test`, `osum data check` and `osum data shard` read the segment, not the recording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from osum_core.cli.main import main
from osum_core.data.audio import load_audio
from osum_core.data.bad_items import BadItem
from osum_core.data.check import NoTokens
from osum_core.data.dataset import load_example_audio, prepare_example


def recording(path: Path, seconds: float, rate: int = 16000, **kwargs) -> np.ndarray:
    """A recording whose every sample says where it is (a ramp with noise), so a wrong offset shows."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.05 * np.sin(2 * np.pi * 3 * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    soundfile.write(path, samples, rate, **kwargs)
    return samples


@pytest.mark.parametrize("suffix, kwargs", [(".wav", {"subtype": "PCM_16"}), (".flac", {}), (".opus", {"format": "OGG", "subtype": "OPUS"})])
def test_a_segment_line_reads_its_segment_of_the_recording(tmp_path, registry, suffix, kwargs):
    path = tmp_path / f"long{suffix}"
    rate = 48000 if suffix == ".opus" else 16000
    recording(path, 6.0, rate, **kwargs)
    whole = load_audio(path)
    line = {"key": "seg1", "wav": str(path), "txt": "one two", "task": "<TRANSCRIBE>", "start": 2.5, "end": 4.0}
    example = prepare_example(line, registry.tasks["asr"], NoTokens())
    assert example.span == (2.5, 4.0) and example.frames == 150  # planned from start/end: 1.5 s
    segment = load_example_audio(example)
    assert len(segment) == 24000
    tolerance = 0.02 if suffix == ".opus" else 1e-4  # Opus is lossy and decodes with a delay; the rest exact
    assert torch.allclose(segment, whole[40000:64000], atol=tolerance)


def test_check_and_shard_read_segments_and_name_a_bad_one(tmp_path, capsys):
    recording(tmp_path / "meeting.wav", 5.0, subtype="PCM_16")
    good = [{"key": f"m{i}", "wav": "meeting.wav", "txt": "one two", "task": "<TRANSCRIBE>", "start": s, "end": e,
             "duration": e - s} for i, (s, e) in enumerate([(0.0, 1.5), (1.5, 4.0)])]
    manifest = tmp_path / "segments.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in good))
    assert main(["data", "check", str(manifest), "--tasks", "asr", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 2 and report["hours"] == pytest.approx(4.0 / 3600, abs=1e-4)
    assert main(["data", "shard", str(manifest), str(tmp_path / "shards"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "shards" / "shards.list"), "--tasks", "asr", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["hours"] == pytest.approx(4.0 / 3600, abs=1e-4)

    bad = [{**good[0], "key": "past", "start": 4.0, "end": 7.5, "duration": 3.5},
           {**good[0], "key": "reversed", "start": 3.0, "end": 2.0}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in bad))
    assert main(["data", "check", str(manifest), "--tasks", "asr", "--quiet"]) == 1
    errors = capsys.readouterr().err
    assert "the segment 4.00-7.50 s ends past the audio's 5.00 s" in errors
    assert "key reversed: fields 'start' and 'end' must be seconds with 0 <= start < end, got start=3.0, end=2.0" in errors


def test_a_segment_past_the_end_is_an_error_naming_the_file(tmp_path):
    recording(tmp_path / "a.wav", 1.0, subtype="PCM_16")
    with pytest.raises(BadItem, match=r"a.wav: the segment 0.50-2.00 s ends past the audio's 1.00 s"):
        load_audio(tmp_path / "a.wav", span=(0.5, 2.0))

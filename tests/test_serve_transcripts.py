"""Word times through `osum serve`'s transcription formats: SRWT's parse of each window, shifted by the window's
start, grouped into segments, written as srt, vtt and verbose_json; and streamed text joined across windows."""

from __future__ import annotations

import asyncio

import torch

from osum_core.serve.batcher import Job
from osum_core.serve.engine import Row, merge_windows
from osum_core.serve.transcripts import Word, srt, verbose_json, vtt, word_segments


def test_windows_are_parsed_by_the_task_and_word_times_shifted_by_their_start(registry):
    srwt = registry.tasks["srwt"]
    text, parsed = merge_windows(srwt, ["<0.3>three<0.7><0.8>four<1.2>", "<0.1>five<0.6>"], [0.0, 30.0])
    assert text == "<0.3>three<0.7><0.8>four<1.2> <0.1>five<0.6>"
    assert parsed.transcript == "three four five" and parsed.valid
    assert parsed.fields["timestamps"] == [("three", 0.3, 0.7), ("four", 0.8, 1.2), ("five", 30.1, 30.6)]
    # A labelled task: the label is the first window's; a broken window makes the whole answer invalid.
    ved = registry.tasks["ved"]
    _, parsed = merge_windows(ved, ["one two<laugh>", "three<cough>"], [0.0, 30.0])
    assert (parsed.transcript, parsed.label, parsed.valid) == ("one two three", "laugh", True)
    _, parsed = merge_windows(ved, ["one two<laugh>", ""], [0.0, 30.0])
    assert not parsed.valid
    assert merge_windows(None, ["a", "", "b"], [0, 30, 60]) == ("a b", None)


def test_segments_end_at_pauses_and_at_their_longest_and_are_written_as_srt_vtt_and_json():
    words = [Word("one", 0.0, 0.4), Word("two", 0.5, 0.9), Word("three", 1.6, 2.0), Word("four", 2.1, 2.5)]
    segments = word_segments(words, gap=0.5, longest=10.0)
    assert [(s.start, s.end, s.text) for s in segments] == [(0.0, 0.9, "one two"), (1.6, 2.5, "three four")]
    assert [s.text for s in word_segments(words, gap=0.5, longest=0.8)] == ["one", "two", "three", "four"]
    assert srt(segments) == ("1\n00:00:00,000 --> 00:00:00,900\none two\n\n"
                             "2\n00:00:01,600 --> 00:00:02,500\nthree four\n\n")
    assert vtt(segments) == "WEBVTT\n\n00:00:00.000 --> 00:00:00.900\none two\n\n00:00:01.600 --> 00:00:02.500\nthree four\n\n"
    assert srt([segments[0].__class__(3725.5, 3726.25, "x")]).startswith("1\n01:02:05,500 --> 01:02:06,250\n")
    body = verbose_json("one two three four", "en", 2.75, segments, words, 0.0)
    assert body["duration"] == 2.75 and body["words"][2] == {"word": "three", "start": 1.6, "end": 2.0}
    assert [s["id"] for s in body["segments"]] == [0, 1] and body["segments"][1]["start"] == 1.6
    assert "words" not in verbose_json("x", "en", 1.0, segments[:1], None, 0.0)


def test_streamed_windows_are_handed_over_in_order_and_join_as_the_answer():
    async def scenario() -> list[str]:
        row = Row(torch.zeros(10, 80), (1, 2))
        job = Job([row, row, row], settings=None, streaming=True)  # type: ignore[arg-type]
        # The second window's text arrives before the first's ends: it is held until then.
        job.row_text(1, "four", False)
        job.row_text(0, "one", False)
        job.row_text(2, "", True)  # an empty window
        job.row_text(0, " two", True)
        job.row_text(1, " five", True)
        pieces = []
        while (piece := job.texts.get_nowait()) is not None:
            pieces.append(piece)
        return pieces

    pieces = asyncio.run(scenario())
    assert pieces == ["one", " two", " four", " five"]
    assert "".join(pieces) == merge_windows(None, ["one two", "four five", ""], [0, 30, 60])[0]

"""`RequestBatcher` on its own, with a decode function that records what it is given (the model is not the
unit here; tests/test_serve*.py run it with the real one)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from osum_core.config import load_config
from osum_core.model.speech_llm import GenerationSettings
from osum_core.serve.batcher import RequestBatcher
from osum_core.serve.engine import Row, RowOutput

GREEDY = GenerationSettings(**load_config()["eval"]["generation"])
ROW = Row(torch.zeros(10, 80), (1, 2))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, GenerationSettings, list[int]]] = []

    def __call__(self, rows, settings, on_text, limits):
        self.calls.append((len(rows), settings, list(limits)))
        return [RowOutput(f"row of {limit}", limit, 3) for limit in limits]


def run_batches(jobs: list[GenerationSettings], max_batch: int = 8) -> Recorder:
    """`jobs` submitted together to a batcher; what its decode function was asked."""
    recorder = Recorder()

    async def scenario() -> None:
        batcher = RequestBatcher(recorder, max_batch=max_batch, wait_seconds=0.0, max_queue=16)
        batcher.start()
        submitted = [batcher.submit([ROW], settings) for settings in jobs]
        outputs = await asyncio.gather(*(job.outputs for job in submitted))
        assert [o[0].generated_tokens for o in outputs] == [s.max_new_tokens for s in jobs]  # each its own limit
        await batcher.stop()

    asyncio.run(scenario())
    return recorder


def test_greedy_jobs_share_a_batch_whatever_their_token_limits_and_beam_search_jobs_do_not():
    greedy = run_batches([replace(GREEDY, max_new_tokens=n) for n in (4, 9, 2)])
    assert [(rows, settings.max_new_tokens, limits) for rows, settings, limits in greedy.calls] == [(3, 9, [4, 9, 2])]
    beams = run_batches([replace(GREEDY, num_beams=2, max_new_tokens=n) for n in (4, 9, 4)])
    assert sorted((rows, limits) for rows, _, limits in beams.calls) == [(1, [9]), (2, [4, 4])]
    sampled = run_batches([replace(GREEDY, do_sample=True, temperature=t) for t in (0.5, 0.7)])
    assert len(sampled.calls) == 2  # other sampling settings, other batches


def test_a_dropped_job_is_never_decoded_and_a_dead_loop_fails_what_waits():
    recorder = Recorder()

    async def scenario() -> None:
        batcher = RequestBatcher(recorder, max_batch=8, wait_seconds=0.0, max_queue=16)
        batcher.start()
        kept, dropped = batcher.submit([ROW], GREEDY), batcher.submit([ROW], GREEDY)
        batcher.drop(dropped)
        assert (await kept.outputs)[0].text and dropped.outputs.cancelled()
        assert recorder.calls[0][0] == 1

        def broken(*_):
            raise KeyError("a bug in the loop")

        batcher.take_batch = broken  # type: ignore[method-assign]
        waiting = batcher.submit([ROW], GREEDY)
        with pytest.raises(RuntimeError, match="batching loop stopped"):
            await waiting.outputs
        with pytest.raises(RuntimeError, match="batching loop stopped"):
            batcher.submit([ROW], GREEDY)
        assert batcher.broken is not None
        await batcher.stop()  # and stopping a dead loop does not raise

    asyncio.run(scenario())

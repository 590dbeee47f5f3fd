"""Dynamic batching: concurrent requests decoded together.

A request becomes a `Job` (its rows, its generation settings) and waits in the queue. One loop takes the
oldest job, gathers the waiting jobs whose settings equal the first's, up to ``serve.max_batch`` rows, and
decodes them as one batch in a worker thread, so the event loop keeps accepting, reading and answering
other requests meanwhile; jobs with other settings wait for a batch of their own, in their order. While a
batch decodes, the next one gathers.

Before it starts, a batch that is not full waits, up to ``serve.batch_wait_ms``, for the requests it has
reason to expect, and only for those: requests the server has accepted and is still reading (`arrival`),
and the next requests of the clients the last batch has just answered (as many as it answered, until that
many have come). With nothing to expect it starts at once: a lone client never waits, and clients that
send one request after another meet in one batch instead of splitting into two that take turns.

A job hears of its rows' text as it grows (`Job.texts`, for streaming) and gets its rows' outputs, or the
error that failed its batch: an exception inside decoding fails that batch's jobs only, and the loop goes
on. A job whose client left is taken out of the queue (`drop`) if it is still waiting; one being decoded
finishes with its batch (a batch cannot lose a row midway) and its answer is not sent. More than
``serve.max_queue`` jobs waiting or decoding: `QueueFull` (the server answers 503).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from osum_core.model.speech_llm import GenerationSettings
from osum_core.serve.engine import DecodeFunction, Row, RowOutput


class QueueFull(Exception):
    pass


def batch_key(settings: GenerationSettings) -> GenerationSettings:
    """What jobs of one batch must share: their generation settings, but the token limit where decoding is
    greedy or sampled (a row cut to N tokens is the answer it gets with a limit of N; with beam search the
    best beams at N tokens are another answer)."""
    return replace(settings, max_new_tokens=0) if settings.num_beams == 1 else settings


@dataclass(frozen=True)
class BatchReport:
    """What one decoded batch did, for the metrics."""

    rows: int
    jobs: int
    audio_seconds: float
    queue_seconds: list[float]  # each job's wait, from submit to the start of its batch
    decode_seconds: float
    failed: bool


@dataclass(eq=False)
class Job:
    """One request's decoding. `streaming`: its text is wanted as it grows, through `texts` (a queue of the
    pieces, in row order, windows joined by a space, then None)."""

    rows: Sequence[Row]
    settings: GenerationSettings
    streaming: bool = False
    outputs: asyncio.Future = field(init=False)
    texts: asyncio.Queue = field(init=False)
    submitted: float = field(init=False, default=0.0)
    pending: list[str] = field(init=False)  # text of rows not yet handed over (a later window of split audio)
    finished: list[bool] = field(init=False)
    current: int = field(init=False, default=0)  # the row whose text is being handed over
    spoken: bool = field(init=False, default=False)  # some text has been handed over
    joining: bool = field(init=False, default=False)  # the next text starts a later row: a space first

    def __post_init__(self) -> None:
        self.outputs = asyncio.get_running_loop().create_future()
        self.outputs.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        self.texts = asyncio.Queue()
        self.pending = [""] * len(self.rows)
        self.finished = [False] * len(self.rows)

    def row_text(self, row: int, piece: str, finished: bool) -> None:
        """A piece of `row`'s text (on the event loop): handed over now if earlier rows are done, else kept.
        The pieces join to the answer's text: its rows' texts joined by a space (`merge_windows`)."""
        self.pending[row] += piece
        self.finished[row] = self.finished[row] or finished
        while self.current < len(self.rows):
            text, self.pending[self.current] = self.pending[self.current], ""
            if text:
                self.texts.put_nowait((" " if self.joining else "") + text)
                self.joining, self.spoken = False, True
            if not self.finished[self.current]:
                return
            self.current += 1
            self.joining = self.spoken
        self.texts.put_nowait(None)

    def finish(self, outputs: list[RowOutput] | BaseException) -> None:
        if self.outputs.done():
            return
        if isinstance(outputs, BaseException):
            self.outputs.set_exception(outputs)
            self.texts.put_nowait(None)
        else:
            self.outputs.set_result(outputs)


class Arrival:
    """A request being read (`RequestBatcher.arrival`)."""

    def __init__(self, batcher: RequestBatcher) -> None:
        self.batcher = batcher
        self.open = True
        batcher.arriving += 1

    def end(self) -> None:
        if self.open:
            self.open = False
            self.batcher.arriving -= 1
            if self.batcher.arrived is not None:
                self.batcher.arrived.set()  # a batch waiting for this request looks again


class RequestBatcher:
    """Gathers `Job`s into batches of at most `max_batch` rows and decodes them with `decode` (a
    `SpeechEngine.decode`) in one worker thread. `report(BatchReport)` is told of every batch."""

    def __init__(self, decode: DecodeFunction, *, max_batch: int, wait_seconds: float, max_queue: int,
                 report: Callable[[BatchReport], None] = lambda _: None) -> None:
        if max_batch < 1:
            raise ValueError(f"serve.max_batch must be at least 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"serve.max_queue must be at least 1, got {max_queue}")
        self.decode = decode
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self.max_queue = max_queue
        self.report = report
        self.waiting: deque[Job] = deque()
        self.decoding = 0  # jobs in the batch being decoded
        self.arriving = 0  # requests being read, not yet submitted
        self.returning = 0  # clients answered by the last batch that have not sent their next request
        self.last_end = 0.0  # when the last batch finished decoding
        self.arrived: asyncio.Event | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osum-decode")
        self.loop_task: asyncio.Task | None = None
        self.broken: BaseException | None = None  # what stopped the loop, if anything did

    @property
    def queued(self) -> int:
        return len(self.waiting) + self.decoding

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.loop_task = asyncio.get_running_loop().create_task(self.run())
        self.loop_task.add_done_callback(self.loop_ended)

    def loop_ended(self, task: asyncio.Task) -> None:
        """The loop never ends but by `stop`; if a bug ends it, every waiting request fails with it, later
        ones are refused, and /health says so, rather than requests waiting forever."""
        if task.cancelled() or task.exception() is None:
            return
        self.broken = task.exception()
        print(f"osum serve: the batching loop stopped: {self.broken!r}", file=sys.stderr, flush=True)
        for job in self.waiting:
            job.finish(RuntimeError(f"the batching loop stopped: {self.broken!r}"))
        self.waiting.clear()

    async def stop(self) -> None:
        """Stop after the batch in hand; jobs still waiting fail (the server stops only once every request
        it accepted has been answered, so none is left waiting)."""
        if self.loop_task is not None:
            self.loop_task.cancel()
            try:
                await self.loop_task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - the loop had died (`loop_ended` told of it): stop all the same
                pass
        for job in self.waiting:
            job.finish(RuntimeError("the server is stopping"))
        self.waiting.clear()
        self.worker.shutdown(wait=True)

    @contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Around a request whose body has been read, until it is submitted (or refused): meanwhile a batch
        that is not full waits for it (its audio is being decoded)."""
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.end()

    def submit(self, rows: Sequence[Row], settings: GenerationSettings, streaming: bool = False,
               arrival: Arrival | None = None) -> Job:
        if arrival is not None:
            arrival.end()
        self.returning = max(0, self.returning - 1)
        if self.broken is not None:
            raise RuntimeError(f"the batching loop stopped: {self.broken!r}")
        if self.queued >= self.max_queue:
            raise QueueFull(f"{self.queued} requests are waiting or decoding (serve.max_queue={self.max_queue})")
        job = Job(rows, settings, streaming)
        job.submitted = time.perf_counter()
        self.waiting.append(job)
        assert self.arrived is not None, "RequestBatcher.start() first"
        self.arrived.set()
        return job

    def drop(self, job: Job) -> None:
        """A job whose client has left: taken out of the queue if it is still waiting (one being decoded
        finishes with its batch, and its answer is not sent)."""
        if job in self.waiting:
            self.waiting.remove(job)
            job.outputs.cancel()
            job.texts.put_nowait(None)

    def expecting(self) -> bool:
        """Whether more requests are on their way: being read, or due from the clients the last batch
        answered (within `wait_seconds` of its end: a client that has not come back by then is not coming)."""
        recent = time.perf_counter() - self.last_end < self.wait_seconds
        return self.arriving > 0 or (self.returning > 0 and recent)

    def waiting_rows(self) -> int:
        return sum(len(job.rows) for job in self.waiting)

    def take_batch(self) -> list[Job]:
        """The oldest job and the waiting jobs with its settings, in order, up to `max_batch` rows (a job
        of more rows than that is a batch of its own). Jobs that differ only in their token limit
        (``max_tokens``) share a batch: it decodes to the largest, each row is cut to its own."""
        first = batch_key(self.waiting[0].settings)
        batch: list[Job] = []
        rows = 0
        for job in list(self.waiting):
            if batch_key(job.settings) != first:
                continue
            if batch and rows + len(job.rows) > self.max_batch:
                break
            batch.append(job)
            rows += len(job.rows)
        for job in batch:
            self.waiting.remove(job)
        return batch

    async def run(self) -> None:
        assert self.arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = max(self.waiting[0].submitted, self.last_end) + self.wait_seconds
            while (self.waiting_rows() < self.max_batch and self.expecting()
                   and (left := deadline - time.perf_counter()) > 0):
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11 on
                    break
            batch = self.take_batch()
            await self.decode_batch(loop, batch)

    async def decode_batch(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        where = [(job, n) for job in batch for n in range(len(job.rows))]  # batch row -> (job, its row)

        def on_text(row: int, piece: str, finished: bool) -> None:  # called in the worker thread
            job, n = where[row]
            if job.streaming:
                loop.call_soon_threadsafe(job.row_text, n, piece, finished)

        wants_text = any(job.streaming for job in batch)
        limits = [job.settings.max_new_tokens for job in batch for _ in job.rows]
        settings = replace(batch[0].settings, max_new_tokens=max(limits))
        began = time.perf_counter()
        waits = [began - job.submitted for job in batch]
        self.decoding = len(batch)
        try:
            outputs: Any = await loop.run_in_executor(
                self.worker, self.decode, rows, settings, on_text if wants_text else None, limits
            )
            failed = False
        except Exception as error:  # noqa: BLE001 - a failed batch fails its own requests, not the server
            outputs, failed = error, True
        finally:
            self.decoding = 0
        seconds = time.perf_counter() - began
        self.last_end = time.perf_counter()
        self.returning = len(batch)
        start = 0
        for job in batch:
            job.finish(outputs if failed else outputs[start : start + len(job.rows)])
            start += len(job.rows)
        self.report(BatchReport(len(rows), len(batch), sum(row.seconds for row in rows), waits, seconds, failed))

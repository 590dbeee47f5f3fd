"""`osum serve` under faults: a generation that raises inside a batch, a full queue, a client that stalls
mid-upload, one that leaves mid-stream. The app is built in this process (`build_app`) around a real engine
whose decoding a test can slow down or break, and served by uvicorn on a loopback port."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import socket
import threading
import time

import openai
import pytest
import uvicorn
from serve_helpers import DECODING, demo_files, free_port

from osum_core.checkpoints.loading import load_checkpoint
from osum_core.config import configured_tasks, load_config
from osum_core.serve.app import build_app
from osum_core.serve.engine import SpeechEngine

ASR = "<TRANSCRIBE>"


class Decoding:
    """The engine's decode, with faults a test switches on: `delay` seconds before each batch; `fail`: the
    next batch raises."""

    def __init__(self, engine: SpeechEngine) -> None:
        self.decode = engine.decode
        self.delay = 0.0
        self.fail = False
        self.batches: list[int] = []

    def __call__(self, rows, settings, on_text=None, limits=None):
        self.batches.append(len(rows))
        time.sleep(self.delay)
        if self.fail:
            self.fail = False
            raise RuntimeError("injected failure inside generate")
        return self.decode(rows, settings, on_text, limits)


class InProcessServer:
    def __init__(self, exported, registry, **settings) -> None:
        loaded = load_checkpoint(exported, DECODING)
        tasks = configured_tasks(registry.tasks, loaded.tasks, loaded.config["tasks"])
        cfg = {**load_config("serve")["serve"], **settings}
        self.engine = SpeechEngine(loaded, tasks, device="cpu", dtype="fp32", long_audio="split",
                                   max_audio_seconds=600)
        self.decoding = Decoding(self.engine)
        self.engine.decode = self.decoding  # type: ignore[method-assign]
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.engine, cfg, "demo"), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), f"the server did not start on port {self.port} (taken since it was free?)"
            time.sleep(0.05)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="x", max_retries=0, timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def serving(exported, registry):
    servers = []

    def start(**settings):
        servers.append(InProcessServer(exported, registry, **settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def transcribe(client, file):
    return client.audio.transcriptions.create(model="demo", file=file.open("rb")).text


def test_a_generation_that_raises_fails_its_batch_only_and_the_server_goes_on(serving, tiny_corpus):
    server = serving(max_batch=4, batch_wait_ms=300.0)
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 4)
    expected = [transcribe(client, f) for f in files]
    before = len(server.decoding.batches)
    server.decoding.fail = True
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda f: _outcome(lambda: transcribe(client, f)), files))
    failed = [o for o in outcomes if not isinstance(o, str)]
    # The requests of the failed batch, and only those, failed with a 500 in OpenAI's shape.
    assert len(failed) == server.decoding.batches[before] >= 1, (outcomes, server.decoding.batches)
    assert all(isinstance(e, openai.InternalServerError) and "injected failure" in e.message
               and e.body["type"] == "server_error" for e in failed)
    assert [o for o in outcomes if isinstance(o, str)] == [t for t, o in zip(expected, outcomes, strict=True)
                                                            if isinstance(o, str)]
    assert [transcribe(client, f) for f in files] == expected  # and the server goes on


def _outcome(call):
    try:
        return call()
    except openai.APIError as error:
        return error


def test_a_full_queue_is_a_503_and_the_accepted_requests_are_answered(serving, tiny_corpus):
    server = serving(max_batch=1, batch_wait_ms=0.0, max_queue=2)
    server.decoding.delay = 0.5
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 6)
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        outcomes = list(pool.map(lambda f: _outcome(lambda: transcribe(client, f)), files))
    busy = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert busy and all(e.status_code == 503 and e.code == "queue_full" for e in busy)
    assert 2 <= sum(isinstance(o, str) for o in outcomes) < len(files)


def test_a_client_that_stalls_mid_upload_blocks_no_one(serving, tiny_corpus):
    server = serving(max_batch=4, batch_wait_ms=10.0)
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 3)
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                    b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                    b"filename=\"a.wav\"\r\n\r\nRIFF")
    try:
        assert all(transcribe(client, f) for f in files)  # answered while the first upload is still open
    finally:
        stalled.close()


def test_a_client_that_leaves_mid_stream_costs_only_its_own_answer(serving, tiny_corpus):
    server = serving(max_batch=4, batch_wait_ms=10.0)
    server.decoding.delay = 0.2
    wav = demo_files(tiny_corpus, ASR, 1)[0].read_bytes()
    body = json.dumps({"model": "demo:asr", "stream": True, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]}]})
    leaving = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    leaving.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = leaving.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    leaving.close()  # gone after the first event
    client = server.client()
    answer = client.chat.completions.create(model="demo:asr", messages=json.loads(body)["messages"])
    assert answer.choices[0].message.content
    stream = client.chat.completions.create(model="demo:asr", messages=json.loads(body)["messages"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer.choices[0].message.content


def test_a_stream_whose_batch_fails_ends_with_an_error_event_and_the_server_goes_on(serving, tiny_corpus):
    server = serving(max_batch=4, batch_wait_ms=10.0)
    client = server.client()
    wav = demo_files(tiny_corpus, ASR, 1)[0].read_bytes()
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]}]
    server.decoding.fail = True
    with pytest.raises(openai.APIError) as error:
        list(client.chat.completions.create(model="demo:asr", messages=messages, stream=True))
    assert "injected failure" in error.value.message
    assert client.chat.completions.create(model="demo:asr", messages=messages).choices[0].message.content


def test_a_request_whose_client_gave_up_is_never_decoded(serving, tiny_corpus):
    server = serving(max_batch=1, batch_wait_ms=0.0)
    server.decoding.delay = 1.0  # each batch takes a second
    files = demo_files(tiny_corpus, ASR, 5)
    patient = server.client()
    impatient = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=0.5)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = pool.submit(transcribe, patient, files[0])  # decodes for a second
        deadline = time.monotonic() + 60
        while not server.decoding.batches:  # the others are sent once it is being decoded, however busy the machine
            assert time.monotonic() < deadline and not first.done(), "the first request was never decoded"
            time.sleep(0.01)
        gave_up = list(pool.map(lambda f: _outcome(lambda: transcribe(impatient, f)), files[1:4]))
        assert all(isinstance(o, openai.APITimeoutError) for o in gave_up), gave_up
        assert first.result()
    assert transcribe(patient, files[4])
    # The first request and the last were decoded; the three whose clients left while they waited were not.
    assert len(server.decoding.batches) == 2, server.decoding.batches

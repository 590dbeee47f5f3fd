"""`osum serve` as its users meet it: the command started on a loopback port, spoken to by the `openai` client.

The checkpoint is the tiny ASR+VED export of conftest; its answers are gibberish, but they are the model's,
so equality with `osum predict` and with one-at-a-time decoding says that serving changes nothing."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import itertools
import json
import re
import threading
import time

import openai
import pytest
import soundfile
from openai.types.audio import TranscriptionVerbose
from serve_helpers import DECODING, Server, audio_bytes, demo_files

from osum_core.checkpoints.loading import load_checkpoint
from osum_core.config import configured_tasks
from osum_core.data.dataset import TaskPrompts
from osum_core.inference.predict import Request, predict
from osum_core.model.speech_llm import GenerationSettings

ASR, VED = "<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>"


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """The export served with batches of up to 8 gathered over 300 ms, so that concurrent requests meet."""
    running = Server(exported, "--max-batch", "8", "--batch-wait-ms", "300", *DECODING,
                     log=tmp_path_factory.mktemp("serve") / "serve.log")
    yield running
    assert running.stop() == 0, running.log.read_text()[-3000:]


def predicted(exported, registry, files, task_name: str) -> list[str]:
    """`osum predict --task TASK` of `files`, with the served decoding settings."""
    loaded = load_checkpoint(exported, DECODING)
    task = configured_tasks(registry.tasks, [task_name], loaded.config["tasks"])[task_name]
    prompt = TaskPrompts.of_tasks({task_name: task}, loaded.tokenizer, loaded.config["data"]["prompt_language"])
    requests = [Request(f.stem, str(f), task, prompt.evaluation_text(task_name)) for f in files]
    settings = GenerationSettings(**loaded.config["eval"]["generation"])
    return [a.text for a in predict(loaded.model, loaded.tokenizer, requests, settings, n_mels=80, batch_size=1)]


def test_models_lists_the_checkpoint_and_its_tasks_and_an_unknown_id_is_a_404(server, exported):
    client = server.client()
    name = exported.name
    assert [m.id for m in client.models.list()] == [name, f"{name}:asr", f"{name}:ved"]
    assert client.models.retrieve(f"{name}:ved").id == f"{name}:ved"
    with pytest.raises(openai.NotFoundError) as error:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"x"))
    assert error.value.code == "model_not_found" and error.value.body["param"] == "model"
    assert name in error.value.message


def test_transcriptions_answer_as_osum_predict_in_every_format(server, exported, registry, tiny_corpus):
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 3)
    expected = predicted(exported, registry, files, "asr")
    assert all(expected), "the decoding settings give every answer a few tokens"
    for file, text in zip(files, expected, strict=True):
        answer = client.audio.transcriptions.create(model=exported.name, file=file.open("rb"))
        assert answer.text == text
        assert answer.model_extra["osum"]["task"] == "asr" and answer.model_extra["osum"]["text"] == text
    file, text = files[0], expected[0]
    assert client.audio.transcriptions.create(model=exported.name, file=file.open("rb"), response_format="text") \
        == text + "\n"
    srt = client.audio.transcriptions.create(model=exported.name, file=file.open("rb"), response_format="srt")
    assert re.fullmatch(rf"1\n00:00:00,000 --> 00:00:0\d,\d\d\d\n{re.escape(text)}\n\n", srt)
    vtt = client.audio.transcriptions.create(model=exported.name, file=file.open("rb"), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt.endswith(f"\n{text}\n\n")
    verbose = client.audio.transcriptions.create(model=exported.name, file=file.open("rb"),
                                                 response_format="verbose_json", timestamp_granularities=["segment"],
                                                 language="en", prompt="digits, spoken", temperature=0)
    assert verbose.text == text and verbose.language == "english"
    TranscriptionVerbose.model_validate(verbose.model_dump())  # OpenAI's own types, strictly
    assert verbose.duration == pytest.approx(soundfile.info(file).duration, abs=1e-3)
    assert [(s.start, s.text) for s in verbose.segments] == [(0.0, text)]
    assert verbose.segments[0].end == pytest.approx(verbose.duration)
    # Word times come from SRWT, which this checkpoint was not trained on: a 400 that says so.
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(model=exported.name, file=file.open("rb"), response_format="verbose_json",
                                           timestamp_granularities=["word"])
    assert "srwt" in error.value.message and error.value.code == "word_timestamps_unavailable"
    # A task named in the model id: its prompt, and its parse in the reply.
    ved_file = demo_files(tiny_corpus, VED, 1)
    ved = client.audio.transcriptions.create(model=f"{exported.name}:ved", file=ved_file[0].open("rb"))
    assert ved.model_extra["osum"]["text"] == predicted(exported, registry, ved_file, "ved")[0]
    assert ved.model_extra["osum"]["task"] == "ved"


def test_concurrent_requests_are_batched_and_answered_as_one_at_a_time(server, exported, tiny_corpus):
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 12) + demo_files(tiny_corpus, VED, 4)
    alone = [client.audio.transcriptions.create(model=exported.name, file=f.open("rb")).text for f in files]
    batches_before = server.metric("osum_batch_size_count")
    start = threading.Barrier(len(files))

    def send(file):
        start.wait()
        return client.audio.transcriptions.create(model=exported.name, file=file.open("rb")).text

    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        together = list(pool.map(send, files))
    assert together == alone  # greedy answers do not depend on the batch
    batches = server.metric("osum_batch_size_count") - batches_before
    assert batches < len(files) / 2, f"{len(files)} concurrent requests were decoded in {batches} batches"
    assert server.metric('osum_batch_size_bucket{le="1.0"}') < server.metric("osum_batch_size_count")


def chat_audio(client, model: str, content: list, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kwargs)


def input_audio(data: bytes, format: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": format}}


def test_chat_takes_wav_mp3_and_data_uris_with_a_task_or_an_instruction(server, exported, registry, tiny_corpus):
    client = server.client()
    file = demo_files(tiny_corpus, VED, 1)[0]
    expected = predicted(exported, registry, [file], "ved")[0]
    wav = file.read_bytes()
    answer = chat_audio(client, exported.name, [input_audio(wav)], extra_body={"osum_task": "ved"})
    assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason in ("stop", "length")
    osum = answer.model_extra["osum"]
    assert osum["task"] == "ved" and osum["text"] == expected and osum["duration"] > 0 and "label" in osum
    assert answer.usage.completion_tokens >= 4 and answer.usage.prompt_tokens > answer.usage.completion_tokens
    # The same as a model id that names the task, and as a data: URI.
    by_id = chat_audio(client, f"{exported.name}:ved", [input_audio(wav)])
    uri = {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + base64.b64encode(wav).decode()}}
    by_uri = chat_audio(client, f"{exported.name}:ved", [uri])
    assert by_id.choices[0].message.content == by_uri.choices[0].message.content == expected
    # MP3 decodes (its samples differ from the WAV's, so its answer may too) and a free-form instruction
    # is answered without a task's parse.
    mp3 = chat_audio(client, exported.name, [{"type": "text", "text": "What is said?"},
                                             input_audio(audio_bytes(file, "MP3"), "mp3")])
    assert mp3.choices[0].message.content and mp3.model_extra["osum"]["task"] is None


def test_chat_streams_token_by_token_and_the_pieces_join_to_the_answer(server, exported, tiny_corpus):
    client = server.client()
    wav = demo_files(tiny_corpus, ASR, 1)[0].read_bytes()
    whole = chat_audio(client, f"{exported.name}:asr", [input_audio(wav)])
    stream = chat_audio(client, f"{exported.name}:asr", [input_audio(wav)], stream=True,
                        stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) >= 2, "the text arrives as it is generated, not at once"
    assert chunks[0].choices[0].delta.role == "assistant"
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].model_extra["osum"]["text"] == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert len({c.id for c in chunks}) == 1


def test_errors_have_openais_shape_and_the_status_that_says_why(server, exported, tiny_corpus):
    client = server.client()
    name = exported.name
    wav = demo_files(tiny_corpus, ASR, 1)[0].read_bytes()
    cases = [
        # (call, error class, status, code)
        (lambda: client.audio.transcriptions.create(model=name, file=("a.bin", b"\x00garbage" * 100)),
         openai.APIStatusError, 415, "unsupported_audio_format"),
        (lambda: client.audio.transcriptions.create(model=name, file=("cut.wav", wav[: len(wav) // 2])),
         openai.BadRequestError, 400, "invalid_audio"),
        (lambda: client.audio.transcriptions.create(model=name, file=("zero.wav", wav[:44] + bytes(len(wav) - 44))),
         openai.UnprocessableEntityError, 422, "invalid_audio"),
        (lambda: client.audio.transcriptions.create(model=name, file=("a.wav", wav), response_format="xml"),
         openai.BadRequestError, 400, "invalid_value"),
        (lambda: chat_audio(client, name, [input_audio(wav, "webm")]), openai.APIStatusError, 415,
         "unsupported_audio_format"),
        (lambda: chat_audio(client, name, [{"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]),
         openai.BadRequestError, 400, "invalid_base64"),
        (lambda: chat_audio(client, name, [{"type": "text", "text": "hello"}]), openai.BadRequestError, 400,
         "missing_audio"),
        (lambda: chat_audio(client, name, [input_audio(wav)]), openai.BadRequestError, 400, "missing_instruction"),
        (lambda: chat_audio(client, name, [{"type": "audio_url", "audio_url": {"url": "file:///etc/passwd"}}]),
         openai.BadRequestError, 400, "unsupported_url"),
        (lambda: chat_audio(client, f"{name}:ved", [input_audio(wav)], n=2), openai.BadRequestError, 400,
         "invalid_value"),
        (lambda: chat_audio(client, f"{name}:ved", [input_audio(wav)], max_tokens=10**6), openai.BadRequestError, 400,
         "invalid_value"),
        (lambda: chat_audio(client, f"{name}:ved", [input_audio(wav)], extra_body={"osum_task": "sttc"}),
         openai.BadRequestError, 400, "unknown_task"),
    ]
    for call, kind, status, code in cases:
        with pytest.raises(kind) as error:
            call()
        assert (error.value.status_code, error.value.code) == (status, code), error.value.body
        assert error.value.body["message"] and "type" in error.value.body and "param" in error.value.body
    status, body = server.get("/v1/no-such-endpoint")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    # The server answers as before.
    assert client.audio.transcriptions.create(model=name, file=("a.wav", wav)).text


def test_long_audio_is_decoded_in_windows_and_the_answers_joined(server, exported, tiny_corpus):
    client = server.client()
    file = demo_files(tiny_corpus, ASR, 1)[0]
    long = audio_bytes(file, seconds=65)  # the model reads 30 s at once: three windows, the last 5 s
    answer = client.audio.transcriptions.create(model=exported.name, file=("long.wav", long),
                                                response_format="verbose_json")
    assert answer.duration == pytest.approx(65.0)
    wave, rate = soundfile.read(io.BytesIO(long), dtype="float32")
    windows = []
    for start in (0, 30, 60):
        piece = io.BytesIO()
        soundfile.write(piece, wave[start * rate : (start + 30) * rate], rate, format="WAV", subtype="FLOAT")
        windows.append(client.audio.transcriptions.create(model=exported.name, file=("w.wav", piece.getvalue())).text)
    assert all(windows) and answer.text == " ".join(windows)


def test_requests_that_differ_in_max_tokens_share_a_batch_and_each_gets_its_own(server, exported, tiny_corpus):
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 6)
    limits = [1, 2, 3, 5, 7, 8]

    def ask(file, limit):
        answer = chat_audio(client, f"{exported.name}:asr", [input_audio(file.read_bytes())], max_tokens=limit,
                            temperature=0, top_p=0.5)  # greedy: top_p does not matter, nor split the batch
        return answer.choices[0].message.content, answer.usage.completion_tokens, answer.choices[0].finish_reason

    alone = [ask(f, n) for f, n in zip(files, limits, strict=True)]
    before = server.metric("osum_batch_size_count")
    start = threading.Barrier(len(files))

    def together(pair):
        start.wait()
        return ask(*pair)

    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        batched = list(pool.map(together, zip(files, limits, strict=True)))
    assert batched == alone
    # A row is cut at its own limit (min_new_tokens=4 does not outlast a smaller max_tokens), and says so.
    assert [tokens for _, tokens, _ in alone][:4] == limits[:4]
    assert all(tokens <= n for (_, tokens, _), n in zip(alone, limits, strict=True))
    assert [reason for _, _, reason in alone] == ["length" if tokens == n else "stop"
                                                  for (_, tokens, _), n in zip(alone, limits, strict=True)]
    assert server.metric("osum_batch_size_count") - before < len(files) / 2


def test_the_api_key_guards_every_v1_route_and_other_origins_cannot_post(exported, tiny_corpus, tmp_path):
    server = Server(exported, "--api-key", "sesame", *DECODING, log=tmp_path / "serve.log")
    try:
        wav = demo_files(tiny_corpus, ASR, 1)[0].read_bytes()
        for call in (lambda c: c.models.list(),
                     lambda c: chat_audio(c, f"{exported.name}:asr", [input_audio(wav)]),
                     lambda c: c.audio.transcriptions.create(model=exported.name, file=("a.wav", wav))):
            with pytest.raises(openai.AuthenticationError):
                call(server.client(api_key="wrong"))
            call(server.client(api_key="sesame"))
        # A page of another origin posting to the server (a form needs no permission) is refused.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("POST", "/v1/chat/completions", "{}", {"Origin": "http://elsewhere.example",
                                                                   "Authorization": "Bearer sesame"})
        refused = connection.getresponse()
        assert refused.status == 403 and json.loads(refused.read())["error"]["code"] == "cross_origin"
    finally:
        assert server.stop() == 0


def test_metrics_and_health(server):
    status, text = server.get("/metrics")
    assert status == 200
    for name in ("osum_requests_total", "osum_request_latency_seconds_bucket", "osum_batch_size_bucket",
                 "osum_queue_seconds_bucket", "osum_batch_real_time_factor_bucket", "osum_audio_seconds_total"):
        assert name in text
    status, health = server.get("/health")
    assert status == 200 and json.loads(health)["status"] == "ok"


def test_limits_and_the_api_key(exported, tiny_corpus, tmp_path):
    server = Server(exported, "--api-key", "sesame", "serve.max_audio_seconds=40", "serve.long_audio=refuse",
                    "serve.max_request_mb=1.5", *DECODING, log=tmp_path / "serve.log")
    try:
        file = demo_files(tiny_corpus, ASR, 1)[0]
        with pytest.raises(openai.AuthenticationError) as error:
            server.client().audio.transcriptions.create(model=exported.name, file=file.open("rb"))
        assert error.value.code == "invalid_api_key"
        client = server.client(api_key="sesame")
        assert client.audio.transcriptions.create(model=exported.name, file=file.open("rb")).text
        for seconds, code, words in ((35, "audio_too_long", "at most 30"), (45, "audio_too_long", "at most 40"),
                                     (60, "request_too_large", "serve.max_request_mb")):
            data = audio_bytes(file, "FLAC" if seconds < 60 else "WAV", seconds=seconds)
            with pytest.raises(openai.APIStatusError) as error:
                client.audio.transcriptions.create(model=exported.name, file=("long.flac", data))
            assert (error.value.status_code, error.value.code) == (413, code) and words in error.value.message
        # A chunked upload (no Content-Length) is cut off once it passes the limit.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        chunks = itertools.chain([head], (b"x" * 65536 for _ in range(40)))  # 2.5 MB of a file part
        connection.request("POST", "/v1/audio/transcriptions", chunks, {
            "Authorization": "Bearer sesame", "Content-Type": "multipart/form-data; boundary=b"}, encode_chunked=True)
        cut = connection.getresponse()
        assert cut.status == 413 and json.loads(cut.read())["error"]["code"] == "request_too_large"
        status, _ = server.get("/health")  # open without the key, as load balancers probe it
        assert status == 200
    finally:
        assert server.stop() == 0


def test_sigterm_answers_what_is_in_flight_then_exits_0(exported, tiny_corpus, tmp_path):
    # 300 tokens an answer: the batch decodes for a while after SIGTERM.
    server = Server(exported, "eval.generation.min_new_tokens=300", "eval.generation.max_new_tokens=300",
                    log=tmp_path / "serve.log")
    client = server.client()
    files = demo_files(tiny_corpus, ASR, 6)
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        answers = [pool.submit(client.audio.transcriptions.create, model=exported.name, file=f.open("rb"))
                   for f in files]
        deadline = time.monotonic() + 60
        while server.metric("osum_queued_requests") < len(files):  # every request accepted, waiting or decoding
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.01)
        status = server.stop()
        texts = [a.result().text for a in answers]
    assert status == 0, server.log.read_text()[-3000:]
    assert all(len(text.split()) > 10 for text in texts)
    with pytest.raises(openai.APIConnectionError):  # and it no longer listens
        client.models.list()

"""The HTTP API of ``osum serve`` (FastAPI): OpenAI's transcription and chat endpoints over one
`SpeechEngine`, every request decoded through one `RequestBatcher`.

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format,
                                    timestamp_granularities[], temperature
    POST /v1/chat/completions       messages with an input_audio (or audio_url data: URI) part and text; stream
    GET  /v1/models[/ID]            the checkpoint's NAME and NAME:<task> for each task it was trained on
    GET  /health, GET /metrics      liveness; Prometheus text
    GET  /                          the demo page

Model ids: ``NAME`` answers transcriptions with ``serve.transcription_task`` and chat with the instruction
given; ``NAME:<task>`` asks that task (its prompt, and its parser for the answer). Every error has OpenAI's
shape (`errors.APIError`). Nothing a request sends names a path on the server: audio comes in the request.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from osum_core.model.speech_llm import GenerationSettings
from osum_core.serve.batcher import Arrival, QueueFull, RequestBatcher
from osum_core.serve.engine import Audio, RowOutput, SpeechEngine, merge_windows
from osum_core.serve.errors import APIError, bad_field
from osum_core.serve.metrics import ServerMetrics
from osum_core.serve.transcripts import FORMATS, Segment, Word, srt, verbose_json, vtt, word_segments
from osum_core.task import Prediction, Task

# The audio formats a chat request may declare (input_audio.format): what soundfile reads.
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "opus")


class BodyTooLarge(APIError):
    pass


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: at once when its Content-Length says so, else
    (a chunked upload) as soon as that many bytes have arrived."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def too_large(self) -> BodyTooLarge:
        return BodyTooLarge(413, f"the request is larger than this server takes ({self.limit / 2**20:g} MB, "
                            "serve.max_request_mb)", code="request_too_large")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse(self.too_large().body(), status_code=413)(scope, receive, send)
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self.too_large()
            return message

        await self.app(scope, limited, send)


class Guard:
    """The API key on /v1 (401 in OpenAI's shape without it), and every request counted and timed for
    /metrics by endpoint and status."""

    def __init__(self, app: Any, api: SpeechAPI, api_key: str | None) -> None:
        self.app = app
        self.metrics = api.metrics
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        path = scope["path"]
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if self.expected is not None and path.startswith("/v1/") and not hmac.compare_digest(given, self.expected):
                refusal = APIError(401, "Incorrect API key provided: send Authorization: Bearer KEY "
                                   "(osum serve --api-key)", code="invalid_api_key")
                await error_response(refusal)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def number(value: Any, param: str, low: float, high: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise bad_field(param, f"{param} must be a number, got {value!r}") from None
    if not low <= result <= high:
        raise bad_field(param, f"{param} must be between {low:g} and {high:g}, got {value!r}")
    return result


class SpeechAPI:
    """The routes' logic over an engine and a batcher; `build_app` wires it into FastAPI."""

    def __init__(self, engine: SpeechEngine, settings: Mapping[str, Any], name: str) -> None:
        self.engine = engine
        self.settings = settings
        self.name = name
        self.created = int(time.time())
        self.metrics = ServerMetrics()
        self.batcher = RequestBatcher(
            engine.decode, max_batch=settings["max_batch"], wait_seconds=settings["batch_wait_ms"] / 1000,
            max_queue=settings["max_queue"], report=self.metrics.batch,
        )

    # --- models -----------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        return [self.name, *(f"{self.name}:{task}" for task in self.engine.tasks)]

    def model_card(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "osum"}

    def task_of(self, model_id: Any) -> Task | None:
        """The task a model id names (None for the checkpoint's own name); 404 for an id not listed."""
        if not isinstance(model_id, str) or not model_id:
            raise bad_field("model", "give a model: one of " + ", ".join(self.model_ids()), code="missing_model")
        if model_id == self.name:
            return None
        task = model_id[len(self.name) + 1 :] if model_id.startswith(self.name + ":") else None
        if task not in self.engine.tasks:
            raise APIError(404, f"The model `{model_id}` does not exist; this server has "
                           f"{', '.join(self.model_ids())}", param="model", code="model_not_found")
        return self.engine.tasks[task]

    def named_task(self, name: Any) -> Task:
        if name not in self.engine.tasks:
            raise bad_field("osum_task", f"no task {name!r} in this checkpoint; it has "
                            f"{', '.join(self.engine.tasks)}", code="unknown_task")
        return self.engine.tasks[name]

    # --- decoding -----------------------------------------------------------------------------------------
    def generation(self, temperature: float | None, top_p: float | None = None,
                   max_tokens: int | None = None) -> GenerationSettings:
        changes: dict[str, Any] = {}
        if temperature is not None:
            changes.update(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0)
        if top_p is not None:
            changes["top_p"] = top_p
        if max_tokens is not None:
            changes["max_new_tokens"] = max_tokens
        return self.engine.settings(**changes)

    async def read_audio(self, data: bytes, name: str) -> Audio:
        return await run_in_threadpool(self.engine.read_audio, data, name)

    async def decode(self, audio: Audio, prompt: str, settings: GenerationSettings, arrival: Arrival) -> list[RowOutput]:
        job = self.submit(audio, prompt, settings, False, arrival)
        try:
            return await job.outputs
        except Exception as error:  # noqa: BLE001 - the batch failed: its requests get a 500, the server goes on
            raise decoding_failed(error) from error

    def submit(self, audio: Audio, prompt: str, settings: GenerationSettings, streaming: bool,
               arrival: Arrival) -> Any:
        try:
            return self.batcher.submit(self.engine.rows(audio, prompt), settings, streaming, arrival)
        except QueueFull as full:
            raise APIError(503, f"the server is busy: {full}; retry later", code="queue_full") from None

    # --- /v1/audio/transcriptions -----------------------------------------------------------------------
    async def transcription(self, request: Request) -> Response:
        with self.batcher.arrival() as arrival:
            return await self.transcribe(request, arrival)

    async def transcribe(self, request: Request, arrival: Arrival) -> Response:
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_field("file", "give the audio as the multipart field 'file'", code="missing_file")
        task = self.task_of(form.get("model"))
        response_format = str(form.get("response_format") or "json")
        if response_format not in FORMATS:
            raise bad_field("response_format", f"response_format must be one of {', '.join(FORMATS)}, got "
                            f"{response_format!r}")
        granularities = [str(g) for g in [*form.getlist("timestamp_granularities[]"),
                                           *form.getlist("timestamp_granularities")]]
        unknown = [g for g in granularities if g not in ("word", "segment")]
        if unknown:
            raise bad_field("timestamp_granularities", f"timestamp_granularities are word and segment, got {unknown}")
        if granularities and response_format != "verbose_json":
            raise bad_field("timestamp_granularities", "timestamp_granularities need response_format=verbose_json")
        temperature = number(form["temperature"], "temperature", 0, 2) if form.get("temperature") else None
        language = str(form["language"]) if form.get("language") else None
        # OpenAI's `prompt` (a context hint for Whisper) is accepted and not used: osum's models were not
        # trained with one, and it is not an instruction (README, "Serving").
        word_task = self.engine.tasks.get(self.settings["word_timestamps_task"])
        wants_words = "word" in granularities
        wants_times = wants_words or response_format in ("srt", "vtt") or "segment" in granularities
        if task is None:
            task = word_task if wants_times and word_task is not None else self.transcription_task()
        if wants_words and task is not word_task:
            why = (f"the model names task {task.name}" if word_task is not None
                   else f"this checkpoint was not trained on {self.settings['word_timestamps_task']} "
                        "(serve.word_timestamps_task), the task that gives word times")
            raise bad_field("timestamp_granularities", f"word timestamps are not available: {why}",
                            code="word_timestamps_unavailable")
        audio = await self.read_audio(await upload.read(), upload.filename or "file")
        prompt = self.engine.prompt(task, language)
        outputs = await self.decode(audio, prompt, self.generation(temperature), arrival)
        text, parsed = merge_windows(task, [o.text for o in outputs], audio.offsets)
        transcript = parsed.transcript if parsed is not None else text
        words = None
        if task is word_task and parsed is not None:
            words = [Word(str(w), float(s), float(e)) for w, s, e in parsed.fields.get("timestamps", ())]
        segments = (word_segments(words, self.settings["segment_gap_seconds"], self.settings["segment_max_seconds"])
                    if words else [Segment(0.0, audio.seconds, transcript)])
        if response_format == "text":
            return PlainTextResponse(transcript + "\n")
        if response_format == "srt":
            return PlainTextResponse(srt(segments))
        if response_format == "vtt":
            return PlainTextResponse(vtt(segments), media_type="text/vtt")
        extra = {"osum": parsed_json(task, parsed, text)}
        usage = {"type": "duration", "seconds": round(audio.seconds, 3)}
        if response_format == "json":
            return JSONResponse({"text": transcript, "usage": usage, **extra})
        body = verbose_json(transcript, language or self.engine.prompt_language, audio.seconds, segments,
                            words if wants_words else None,
                            temperature if temperature is not None else self.default_temperature())
        return JSONResponse({**body, "usage": usage, **extra})

    def default_temperature(self) -> float:
        generation = self.engine.generation
        return generation.temperature if generation.do_sample else 0.0

    def transcription_task(self) -> Task:
        name = self.settings["transcription_task"]
        if name not in self.engine.tasks:
            raise bad_field("model", f"this checkpoint was not trained on {name} (serve.transcription_task); "
                            f"name a task in the model id: {', '.join(self.model_ids()[1:])}", code="no_transcription_task")
        return self.engine.tasks[name]

    # --- /v1/chat/completions ---------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        with self.batcher.arrival() as arrival:
            return await self.answer_chat(request, arrival)

    async def answer_chat(self, request: Request, arrival: Arrival) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not JSON ({error})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        task = self.task_of(body.get("model"))
        if body.get("osum_task") is not None:
            named = self.named_task(body["osum_task"])
            if task is not None and named is not task:
                raise bad_field("osum_task", f"osum_task {named.name} and model {body['model']} name different tasks")
            task = named
        if body.get("n", 1) != 1:
            raise bad_field("n", "osum answers with one choice (n=1)")
        data, text = message_audio_and_text(body.get("messages"))
        if not text and task is None:
            raise bad_field("messages", "give an instruction (a text part) or name a task (osum_task, or a model "
                            f"id: {', '.join(self.model_ids()[1:])})", code="missing_instruction")
        limit = self.settings["max_new_tokens"]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            max_tokens = int(number(max_tokens, "max_tokens", 1, limit))
        temperature = number(body["temperature"], "temperature", 0, 2) if body.get("temperature") is not None else None
        top_p = number(body["top_p"], "top_p", 0, 1) if body.get("top_p") is not None else None
        settings = self.generation(temperature, top_p, max_tokens)
        audio = await self.read_audio(data, "the input audio")
        prompt = text or self.engine.prompt(task, body.get("language"))  # type: ignore[arg-type]
        reply = ChatReply(self.name if body["model"] == self.name else body["model"], task, audio, settings)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            job = self.submit(audio, prompt, settings, True, arrival)
            return StreamingResponse(reply.events(job, bool(options.get("include_usage"))),
                                     media_type="text/event-stream")
        outputs = await self.decode(audio, prompt, settings, arrival)
        return JSONResponse(reply.completion(outputs))


def decoding_failed(error: Exception) -> APIError:
    return APIError(500, f"decoding failed: {type(error).__name__}: {error}", code="decoding_failed")


def parsed_json(task: Task | None, parsed: Prediction | None, text: str) -> dict[str, Any]:
    """A task's parse of an answer, as the ``osum`` field of a reply."""
    if task is None or parsed is None:
        return {"task": None, "text": text}
    return {"task": task.name, "text": text, "transcript": parsed.transcript, "label": parsed.label,
            "fields": json.loads(json.dumps(dict(parsed.fields))), "valid": parsed.valid}


def decode_base64(data: Any, param: str) -> bytes:
    if not isinstance(data, str):
        raise bad_field(param, f"{param} must be base64 text")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_field(param, f"{param} is not valid base64", code="invalid_base64") from None


def audio_part(part: Mapping[str, Any]) -> bytes:
    """The audio bytes of an ``input_audio`` part or an ``audio_url`` part with a ``data:`` URI."""
    if part["type"] == "input_audio":
        audio = part.get("input_audio") or {}
        declared = str(audio.get("format") or "wav").lower()
        if declared not in AUDIO_FORMATS:
            raise APIError(415, f"input_audio.format {declared!r} is not one osum reads ({', '.join(AUDIO_FORMATS)}); "
                           "convert the audio first (a browser's webm recording to WAV, as the demo page does)",
                           param="input_audio.format", code="unsupported_audio_format")
        return decode_base64(audio.get("data"), "input_audio.data")
    url = (part.get("audio_url") or {}).get("url")
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad_field("audio_url.url", "audio_url must be a data: URI (data:audio/wav;base64,...); osum fetches "
                        "nothing and reads no path", code="unsupported_url")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise bad_field("audio_url.url", "the data: URI must be base64 (data:audio/wav;base64,...)")
    return decode_base64(payload, "audio_url.url")


def message_audio_and_text(messages: Any) -> tuple[bytes, str]:
    """The audio and the instruction of a chat: the last user message's audio part and its text parts."""
    if not isinstance(messages, list) or not messages:
        raise bad_field("messages", "messages must be a non-empty list", code="missing_messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise bad_field("messages", "no user message", code="missing_messages")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise bad_field("messages", "a message's content is a string or a list of parts")
    audio = [p for p in parts if p.get("type") in ("input_audio", "audio_url")]
    unknown = sorted({str(p.get("type")) for p in parts} - {"text", "input_audio", "audio_url"})
    if unknown:
        raise bad_field("messages", f"content parts of type {unknown} are not supported (text, input_audio, audio_url)")
    if len(audio) != 1:
        raise bad_field("messages", f"the last user message must hold one audio part (input_audio or audio_url), "
                        f"it holds {len(audio)}", code="missing_audio" if not audio else "too_many_audio")
    text = "\n".join(str(p.get("text") or "") for p in parts if p.get("type") == "text").strip()
    return audio_part(audio[0]), text


class ChatReply:
    """The chat completion (or its stream of chunks) for one request."""

    def __init__(self, model: str, task: Task | None, audio: Audio, settings: GenerationSettings) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.task = task
        self.audio = audio
        self.settings = settings

    def parts(self, outputs: list[RowOutput]) -> tuple[str, dict[str, Any], str, dict[str, int]]:
        text, parsed = merge_windows(self.task, [o.text for o in outputs], self.audio.offsets)
        osum = {**parsed_json(self.task, parsed, text), "duration": round(self.audio.seconds, 3)}
        finish = "length" if any(o.generated_tokens >= self.settings.max_new_tokens for o in outputs) else "stop"
        prompt_tokens = sum(o.input_tokens for o in outputs)
        completion_tokens = sum(o.generated_tokens for o in outputs)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return text, osum, finish, usage

    def completion(self, outputs: list[RowOutput]) -> dict[str, Any]:
        text, osum, finish, usage = self.parts(outputs)
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage, "osum": osum,
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra)

    async def events(self, job: Any, include_usage: bool) -> AsyncIterator[str]:
        usage_field = {"usage": None} if include_usage else {}
        yield self.delta({"role": "assistant", "content": ""}, **usage_field)
        try:
            while (piece := await job.texts.get()) is not None:
                yield self.delta({"content": piece}, **usage_field)
            outputs = await job.outputs
        except Exception as error:  # noqa: BLE001 - the stream has begun: the error is its last event
            yield f"data: {json.dumps(decoding_failed(error).body())}\n\n"
            return
        _, osum, finish, usage = self.parts(outputs)
        yield self.delta({}, finish, osum=osum, **usage_field)
        if include_usage:
            yield self.chunk([], usage=usage)
        yield "data: [DONE]\n\n"


def build_app(engine: SpeechEngine, settings: Mapping[str, Any], name: str, api_key: str | None = None) -> FastAPI:
    """The server's ASGI app: `settings` is the config's ``serve`` section, `name` the checkpoint's model id."""
    api = SpeechAPI(engine, settings, name)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        api.batcher.start()
        yield
        await api.batcher.stop()

    app = FastAPI(title="osum", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return error_response(APIError(error.status_code, str(error.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(APIError(422, str(error), code="invalid_request"))

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:
        return error_response(APIError(500, f"{type(error).__name__}: {error}", code="server_error"))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await api.transcription(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await api.chat(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card(m) for m in api.model_ids()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        api.task_of(model_id)
        return api.model_card(model_id)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "tasks": list(engine.tasks), "queued": api.batcher.queued,
                "max_batch": settings["max_batch"]}

    @app.get("/metrics")
    async def metrics() -> Response:
        api.metrics.queued.set(api.batcher.queued)
        return Response(api.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("osum_core.serve").joinpath("page/index.html").read_text("utf-8"))

    app.add_middleware(Guard, api=api, api_key=api_key)
    app.add_middleware(BodyLimit, limit=int(settings["max_request_mb"] * 2**20))
    return app


ENDPOINTS = ("/v1/audio/transcriptions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")

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
A client that leaves before its answer costs no decoding if its request is still waiting (it is dropped from
the queue) and is counted under status 499.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from osum_core.model.speech_llm import GenerationSettings
from osum_core.serve.batcher import Arrival, Job, QueueFull, RequestBatcher
from osum_core.serve.chat import ChatReply, ChatRequest, decoding_failed
from osum_core.serve.engine import Audio, RowOutput, SpeechEngine, answer_json, merge_windows
from osum_core.serve.errors import APIError, bad_field, error_response, number
from osum_core.serve.metrics import ServerMetrics
from osum_core.serve.middleware import BodyLimit, Guard
from osum_core.serve.transcripts import FORMATS, Segment, Word, srt, verbose_json, vtt, word_segments
from osum_core.task import Task

CLIENT_LEFT = 499  # the status counted for a request whose client left before its answer (nginx's)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds the events back


class ClientLeft(Exception):
    pass


async def client_gone(request: Request) -> None:
    """Returns when the client of `request` (its body already read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
        # Uploads decoded at once: a burst of long uploads holds this many decoded waveforms, not one each.
        self.audio_slots = asyncio.Semaphore(settings["audio_workers"])

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

    def named_task(self, name: str) -> Task:
        if name not in self.engine.tasks:
            raise bad_field("osum_task", f"no task {name!r} in this checkpoint; it has "
                            f"{', '.join(self.engine.tasks)}", code="unknown_task")
        return self.engine.tasks[name]

    # --- decoding -----------------------------------------------------------------------------------------
    def generation(self, temperature: float | None, top_p: float | None = None,
                   max_tokens: int | None = None) -> GenerationSettings:
        """The checkpoint's decoding settings with a request's: temperature 0 is greedy. Greedy decoding
        ignores the sampling settings, so they are the checkpoint's whatever the request said: requests that
        decode alike share a batch."""
        changes: dict[str, Any] = {}
        if temperature is not None:
            changes.update(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0)
        if top_p is not None:
            changes["top_p"] = top_p
        if max_tokens is not None:
            changes["max_new_tokens"] = max_tokens
        settings = self.engine.settings(**changes)
        if not settings.do_sample:
            own = self.engine.generation
            settings = self.engine.settings(**{**changes, "temperature": own.temperature, "top_p": own.top_p,
                                               "top_k": own.top_k})
        return settings

    async def read_audio(self, data: bytes, name: str) -> Audio:
        async with self.audio_slots:
            return await run_in_threadpool(self.engine.read_audio, data, name)

    def submit(self, audio: Audio, prompt: str, settings: GenerationSettings, streaming: bool,
               arrival: Arrival) -> Job:
        try:
            return self.batcher.submit(self.engine.rows(audio, prompt), settings, streaming, arrival)
        except QueueFull as full:
            raise APIError(503, f"the server is busy: {full}; retry later", code="queue_full") from None
        except RuntimeError as broken:
            raise APIError(503, str(broken), code="server_broken") from None

    async def decode(self, request: Request, audio: Audio, prompt: str, settings: GenerationSettings,
                     arrival: Arrival) -> list[RowOutput]:
        """The request's answer rows, once its batch has decoded; `ClientLeft` if its client leaves first
        (and, if it is still waiting, it is dropped from the queue)."""
        job = self.submit(audio, prompt, settings, False, arrival)
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({job.outputs, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not job.outputs.done():
            self.batcher.drop(job)
            raise ClientLeft()
        if job.outputs.cancelled():
            raise ClientLeft()
        error = job.outputs.exception()
        if error is not None:
            raise decoding_failed(error) from error  # the batch failed: its requests get a 500, the server goes on
        return job.outputs.result()

    # --- /v1/audio/transcriptions -----------------------------------------------------------------------
    async def transcription(self, request: Request) -> Response:
        async with request.form(max_files=1, max_fields=32) as form:
            with self.batcher.arrival() as arrival:  # from here on a batch may wait for this request
                return await self.transcribe(request, form, arrival)

    async def transcribe(self, request: Request, form: FormData, arrival: Arrival) -> Response:
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
        prompt = self.engine.prompt(task, language)
        audio = await self.read_audio(await upload.read(), upload.filename or "file")
        outputs = await self.decode(request, audio, prompt, self.generation(temperature), arrival)
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
        extra = {"osum": answer_json(task, parsed, text)}
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
        try:
            body = await request.json()
            json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\ud800) is not text
        except (json.JSONDecodeError, UnicodeError, RecursionError) as error:
            raise APIError(400, f"the request body is not JSON that osum reads ({type(error).__name__})",
                           code="invalid_json") from None
        with self.batcher.arrival() as arrival:  # from here on a batch may wait for this request
            return await self.answer_chat(request, ChatRequest.read(body, self.settings["max_new_tokens"]), arrival)

    async def answer_chat(self, request: Request, asked: ChatRequest, arrival: Arrival) -> Response:
        task = self.task_of(asked.model)
        if asked.task_name is not None:
            named = self.named_task(asked.task_name)
            if task is not None and named is not task:
                raise bad_field("osum_task", f"osum_task {named.name} and model {asked.model} name different tasks")
            task = named
        if not asked.instruction and task is None:
            raise bad_field("messages", "give an instruction (a text part) or name a task (osum_task, or a model "
                            f"id: {', '.join(self.model_ids()[1:])})", code="missing_instruction")
        settings = self.generation(asked.temperature, asked.top_p, asked.max_tokens)
        prompt = asked.instruction or self.engine.prompt(task, asked.language)  # type: ignore[arg-type]
        audio = await self.read_audio(asked.audio, "the input audio")
        reply = ChatReply(asked.model, task, audio, settings)
        if asked.stream:
            job = self.submit(audio, prompt, settings, True, arrival)
            return StreamingResponse(reply.events(job, asked.include_usage, self.batcher.drop),
                                     media_type="text/event-stream", headers=STREAM_HEADERS)
        return JSONResponse(reply.completion(await self.decode(request, audio, prompt, settings, arrival)))


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

    @app.exception_handler(ClientDisconnect)  # the client left while its request was being read
    @app.exception_handler(ClientLeft)  # or while it waited for its answer
    async def client_left(_: Request, __: Exception) -> Response:
        return Response(status_code=CLIENT_LEFT)

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

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        broken = api.batcher.broken
        body = {"status": "ok" if broken is None else f"broken: {broken!r}", "model": name,
                "tasks": list(engine.tasks), "queued": api.batcher.queued, "max_batch": settings["max_batch"]}
        return JSONResponse(body, status_code=200 if broken is None else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        api.metrics.queued.set(api.batcher.queued)
        return Response(api.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("osum_core.serve").joinpath("page/index.html").read_text("utf-8"))

    app.add_middleware(BodyLimit, limit=int(settings["max_request_mb"] * 2**20))
    app.add_middleware(Guard, metrics=api.metrics, api_key=api_key)  # outermost: it counts what BodyLimit refuses
    return app


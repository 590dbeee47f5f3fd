"""``/v1/chat/completions``: the request read and checked (`ChatRequest`), and the reply, whole or as a
stream of server-sent events in OpenAI's chunk format (`ChatReply`)."""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from osum_core.model.speech_llm import GenerationSettings
from osum_core.serve.batcher import Job
from osum_core.serve.engine import Audio, RowOutput, answer_json, merge_windows
from osum_core.serve.errors import APIError, bad_field, flag, mapping, number, text, whole_number
from osum_core.task import Task

# The audio formats a request may declare (input_audio.format): what soundfile reads.
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "opus")


@dataclass(frozen=True)
class ChatRequest:
    """What a chat request asks, checked: the model id, the task it names (``osum_task`` or the id), the
    audio's bytes, the instruction (its text parts), and how to decode and answer."""

    model: str
    task_name: str | None
    audio: bytes
    instruction: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    language: str | None

    @classmethod
    def read(cls, body: Any, max_tokens: int) -> ChatRequest:
        """`body` (the parsed JSON) checked field by field; `max_tokens` is the most a request may ask."""
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        model = text(body.get("model"), "model")
        if not model:
            raise bad_field("model", "give a model (GET /v1/models lists them)", code="missing_model")
        if body.get("n") is not None and body["n"] != 1:
            raise bad_field("n", "osum answers with one choice (n=1)")
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        audio, instruction = message_audio_and_text(body.get("messages"))
        return cls(
            model=model,
            task_name=text(body.get("osum_task"), "osum_task"),
            audio=audio,
            instruction=instruction,
            stream=flag(body.get("stream"), "stream"),
            include_usage=flag(mapping(body.get("stream_options"), "stream_options").get("include_usage"),
                               "stream_options.include_usage"),
            max_tokens=whole_number(asked, "max_tokens", 1, max_tokens) if asked is not None else None,
            temperature=number(body["temperature"], "temperature", 0, 2) if body.get("temperature") is not None
            else None,
            top_p=number(body["top_p"], "top_p", 0, 1) if body.get("top_p") is not None else None,
            language=text(body.get("language"), "language"),
        )


def decode_base64(data: Any, param: str) -> bytes:
    if not isinstance(data, str):
        raise bad_field(param, f"{param} must be base64 text")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_field(param, f"{param} is not valid base64", code="invalid_base64") from None
    if not decoded:
        raise bad_field(param, f"{param} is empty", code="invalid_audio")
    return decoded


def audio_part(part: Mapping[str, Any]) -> bytes:
    """The audio bytes of an ``input_audio`` part or an ``audio_url`` part with a ``data:`` URI."""
    if part["type"] == "input_audio":
        audio = mapping(part.get("input_audio"), "input_audio")
        declared = (text(audio.get("format"), "input_audio.format") or "wav").lower()
        if declared not in AUDIO_FORMATS:
            raise APIError(415, f"input_audio.format {declared!r} is not one osum reads ({', '.join(AUDIO_FORMATS)}); "
                           "convert the audio first (a browser's webm recording to WAV, as the demo page does)",
                           param="input_audio.format", code="unsupported_audio_format")
        return decode_base64(audio.get("data"), "input_audio.data")
    url = text(mapping(part.get("audio_url"), "audio_url").get("url"), "audio_url.url")
    if url is None or not url.startswith("data:"):
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
    unknown = sorted({str(p.get("type")) for p in parts} - {"text", "input_audio", "audio_url"})
    if unknown:
        raise bad_field("messages", f"content parts of type {unknown} are not supported (text, input_audio, audio_url)")
    audio = [p for p in parts if p["type"] in ("input_audio", "audio_url")]
    if len(audio) != 1:
        raise bad_field("messages", f"the last user message must hold one audio part (input_audio or audio_url), "
                        f"it holds {len(audio)}", code="missing_audio" if not audio else "too_many_audio")
    texts = [text(p.get("text"), "messages.content.text") or "" for p in parts if p["type"] == "text"]
    return audio_part(audio[0]), "\n".join(texts).strip()


def decoding_failed(error: BaseException) -> APIError:
    return APIError(500, f"decoding failed: {type(error).__name__}: {error}", code="decoding_failed")


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
        osum = {**answer_json(self.task, parsed, text), "duration": round(self.audio.seconds, 3)}
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

    async def events(self, job: Job, include_usage: bool, leave: Any) -> AsyncIterator[str]:
        """The stream: a first chunk with the role, a chunk per piece of text, a last chunk with the finish
        reason and the parse (``osum``), the usage chunk if asked, ``[DONE]``. A decoding failure after the
        stream began is its last event. `leave(job)` is called if the client leaves before the end."""
        usage_field = {"usage": None} if include_usage else {}
        finished = False
        try:
            yield self.delta({"role": "assistant", "content": ""}, **usage_field)
            try:
                while (piece := await job.texts.get()) is not None:
                    yield self.delta({"content": piece}, **usage_field)
                outputs = await job.outputs
            except Exception as error:  # noqa: BLE001 - the stream has begun: the error is its last event
                finished = True
                yield f"data: {json.dumps(decoding_failed(error).body())}\n\n"
                return
            _, osum, finish, usage = self.parts(outputs)
            yield self.delta({}, finish, osum=osum, **usage_field)
            if include_usage:
                yield self.chunk([], usage=usage)
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                leave(job)

"""What every request passes before a route (plain ASGI, so that a streamed answer is never buffered):
`Guard` (the API key, cross-site requests, the request counted and timed for /metrics) and `BodyLimit` (the
request's size)."""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import urlsplit

from osum_core.serve.errors import APIError, error_response
from osum_core.serve.metrics import ServerMetrics

# The endpoints /metrics names (any other path is counted as "other").
ENDPOINTS = ("/v1/audio/transcriptions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: at once when its Content-Length says so, else
    (a chunked upload) as soon as that many bytes have arrived."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def too_large(self) -> APIError:
        return APIError(413, f"the request is larger than this server takes ({self.limit / 2**20:g} MB, "
                        "serve.max_request_mb)", code="request_too_large")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await error_response(self.too_large())(scope, receive, send)
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
    """The API key on /v1 (401 in OpenAI's shape without it); a POST from a web page of another origin
    refused (403: a page the user visits could otherwise make a loopback server work, since a form post
    needs no permission); and every request counted and timed by endpoint and status."""

    def __init__(self, app: Any, metrics: ServerMetrics, api_key: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None

    def refusal(self, scope: Any) -> APIError | None:
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        # Behind a proxy, the host the browser saw is the proxy's: X-Forwarded-Host, or Host passed through.
        hosts = {headers.get(b"host", b""), *headers.get(b"x-forwarded-host", b"").split(b",")}
        if scope["method"] == "POST" and origin is not None and origin != b"null" \
                and urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") not in {h.strip() for h in hosts}:
            return APIError(403, "a request from a page of another origin is refused", code="cross_origin")
        given = headers.get(b"authorization", b"")
        if self.expected is not None and scope["path"].startswith("/v1/") \
                and not hmac.compare_digest(given, self.expected):
            return APIError(401, "Incorrect API key provided: send Authorization: Bearer KEY (osum serve --api-key)",
                            code="invalid_api_key")
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)

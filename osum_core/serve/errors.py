"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status its
clients expect (the `openai` package raises `BadRequestError` for 400, `AuthenticationError` for 401,
`NotFoundError` for 404, ...); and the checks of a request's fields that raise them."""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An answer other than success: `status`, a message that says what to change, the request field it
    concerns (`param`) and a short machine-readable `code`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_field(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def error_response(error: APIError) -> Any:
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


# Checks of a request's fields: the value, or a 400 that names the field and says what it takes.

def number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise bad_field(param, f"{param} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise bad_field(param, f"{param} must be a number, got {value!r}") from None
    if not low <= result <= high:
        raise bad_field(param, f"{param} must be between {low:g} and {high:g}, got {value!r}")
    return result


def whole_number(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(param, f"{param} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise bad_field(param, f"{param} must be between {low} and {high}, got {value!r}")
    return value


def flag(value: Any, param: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_field(param, f"{param} must be true or false, got {value!r}")
    return value


def text(value: Any, param: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise bad_field(param, f"{param} must be a string, got {value!r}")
    return value


def mapping(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_field(param, f"{param} must be an object, got {value!r}")
    return value

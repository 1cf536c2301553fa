"""The error format of the runtime API, shared by every route.

Stigg's REST SDK maps status codes to exception classes and re-sends on 408/409/429/5xx;
``x-should-retry: false`` stops it re-sending what can never succeed (stigg-api.md §1).
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

# Status -> error code, as Stigg's REST API names them.
ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "UNAVAILABLE",
}

# The JSON Schema of every error body (error_response), for the OpenAPI documents.
ERROR_BODY_SCHEMA: dict = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class ApiError(Exception):
    """Raise from a route to answer with the standard error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        retry_after_s: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or ERROR_CODES.get(status, "ERROR")
        self.retry_after_s = retry_after_s
        self.retryable = status in _RETRYABLE if retryable is None else retryable

    def response(self) -> Response:
        return error_response(
            self.status,
            self.message,
            self.code,
            retry_after_s=self.retry_after_s,
            retryable=self.retryable,
        )


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    *,
    retry_after_s: float | None = None,
    retryable: bool | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = msgspec.json.encode(
        {"error": {"code": code or ERROR_CODES.get(status, "ERROR"), "message": message}}
    )
    headers = dict(headers or {})
    if retryable is None:
        retryable = status in _RETRYABLE
    headers["x-should-retry"] = "true" if retryable else "false"
    if retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(retry_after_s)))
        headers["retry-after-ms"] = str(int(retry_after_s * 1000))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


UNAUTHENTICATED = ApiError(401, "Invalid or missing API key", "UNAUTHENTICATED")

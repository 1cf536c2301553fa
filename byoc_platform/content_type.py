"""The request content type every JSON route of the runtime API requires: ``application/json``.

A body sent as ``text/plain``, ``application/xml``, a form, or with no ``Content-Type`` at all
is refused with 415 naming the expected type, before it is read (finding F6 in
docs/reliability.md). Parameters are allowed (``application/json; charset=utf-8``, what
clients commonly send); a charset other than UTF-8 is refused, since JSON is UTF-8
(RFC 8259). The official SDKs send exactly ``application/json`` (``stigg`` REST and
``stigg-api-client-v2`` GraphQL, stigg-api.md).

Routes call :func:`require_json` first: ``require_json(request.headers)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from email.message import Message

from byoc_platform.api_errors import ApiError

JSON = "application/json"
_UTF8 = {"utf-8", "utf8"}


@functools.lru_cache(maxsize=256)
def json_content_type_problem(value: str | None) -> str | None:
    """Why a ``Content-Type`` header value is not JSON, or None when it is.

    Cached: clients send the same few values, and the MIME parser cost ~25 us per request
    (cProfile of the runtime under consumptions, docs/benchmarks-enforcement.md)."""
    if value is None or not value.strip():
        return f"Missing Content-Type: send {JSON}"
    # The stdlib's MIME header parser handles case, spaces and quoted parameters.
    parsed = Message()
    parsed["content-type"] = value
    shown = value if len(value) <= 100 else value[:100] + "..."
    if parsed.get_content_type() != JSON or "/" not in value:
        return f"Unsupported Content-Type {shown!r}: send {JSON}"
    charset = parsed.get_content_charset()
    if charset is not None and charset not in _UTF8:
        return f"Unsupported charset {charset!r} in Content-Type: send {JSON} (UTF-8)"
    return None


def require_json(headers: Mapping[str, str]) -> None:
    """Raise 415 (not retryable) unless the request says its body is JSON."""
    problem = json_content_type_problem(headers.get("content-type"))
    if problem is not None:
        raise ApiError(415, problem, retryable=False)

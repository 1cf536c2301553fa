"""Structured JSON logs on stderr, one object per line.

Secrets never reach a log: API keys are not logged by any component, and as a second line of
defence any ``byoc_...`` key-shaped token or ``X-API-KEY`` value in a message is masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRET = re.compile(r"(byoc_[A-Za-z0-9_\-]{16,}|(?i:x-api-key)[\"']?\s*[:=]\s*[\"']?[^\s\"',}]+)")


def redact(text: str) -> str:
    return _SECRET.sub("[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update({k: v for k, v in extra.items() if k not in entry})
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure(component: str, level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "botocore", "urllib3", "httpx", "httpcore", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

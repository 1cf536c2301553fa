"""OpenAPI paths of the enforcement routes. TEMPORARY."""

from typing import Any


def openapi_paths() -> dict[str, Any]:
    return {}

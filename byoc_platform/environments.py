"""Environment ids: one rule for API keys, settings and the control plane.

An environment id becomes a path segment of the archive (``events/env=<id>/...``), a label of
every rollup and the control plane's key for its catalog, so it is limited to characters that
are safe in all three: an id with ``/`` split the archive layout (restore without ``--env``
found nothing, archive expiry skipped it), and one the control plane refuses failed the rollup
of every environment of its hours (F72).
"""

from __future__ import annotations

import re

_ENVIRONMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def environment_problem(environment: object) -> str | None:
    """Why ``environment`` is not a valid environment id (None when it is)."""
    if not isinstance(environment, str) or not _ENVIRONMENT_ID.fullmatch(environment):
        return f"invalid environment id {environment!r} ({RULE})"
    return None

"""Errors of the processor's write path."""

from __future__ import annotations


class Aborted(RuntimeError):
    """The processor is stopping; a write was given up and its checkpoint not committed."""

"""Parameters of the stream semantics (DESIGN.md section 6), in integer milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byoc_platform.settings import StreamSettings


@dataclass(frozen=True)
class EngineConfig:
    """Dedup window (receive time), watermark bound and window size.

    Integer milliseconds throughout, so every comparison is exact and replays decide alike.
    """

    dedup_window_ms: int = 7 * 24 * 3600 * 1000
    out_of_orderness_ms: int = 5000
    window_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.dedup_window_ms <= 0:
            raise ValueError(f"dedup_window_ms must be > 0, got {self.dedup_window_ms}")
        if self.out_of_orderness_ms < 0:
            raise ValueError(f"out_of_orderness_ms must be >= 0, got {self.out_of_orderness_ms}")
        if self.window_ms <= 0 or 3_600_000 % self.window_ms:
            # Windows must tile the hour, or a late event's re-rollup hour would be ambiguous.
            raise ValueError(f"window_ms must divide one hour, got {self.window_ms}")

    @classmethod
    def from_settings(cls, stream: StreamSettings) -> EngineConfig:
        return cls(
            dedup_window_ms=round(stream.dedup_window_s * 1000),
            out_of_orderness_ms=stream.out_of_orderness_ms,
            window_ms=stream.window_ms,
        )

"""The pure semantic core of the stream processor (no I/O): dedup, watermark, windows.

The Kafka/ClickHouse wiring (streaming/processor/) feeds it records per partition in offset
order and writes what it drains; the Flink job (streaming/flink/) implements the same
semantics in Flink SQL, and tests/streaming/flink/test_parity.py proves the rows agree.
"""

from streaming.engine.config import EngineConfig
from streaming.engine.dimensions import Dimensions, describe
from streaming.engine.engine import StreamEngine
from streaming.engine.partition import (
    Checkpoint,
    Counters,
    InvalidRecord,
    Output,
    PartitionEngine,
    PendingOutputError,
)
from streaming.engine.rows import (
    EVENT_COLUMNS,
    LATE_HOUR_COLUMNS,
    MINUTE_COLUMNS,
    EventRow,
    LateHourRow,
    MinuteRow,
    clickhouse_row,
)
from streaming.engine.state import DedupEntry, StateError

__all__ = [
    "EVENT_COLUMNS",
    "LATE_HOUR_COLUMNS",
    "MINUTE_COLUMNS",
    "Checkpoint",
    "Counters",
    "DedupEntry",
    "Dimensions",
    "EngineConfig",
    "EventRow",
    "InvalidRecord",
    "LateHourRow",
    "MinuteRow",
    "Output",
    "PartitionEngine",
    "PendingOutputError",
    "StateError",
    "StreamEngine",
    "clickhouse_row",
    "describe",
]

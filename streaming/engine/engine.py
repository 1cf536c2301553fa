"""Several partitions' engines behind one object, for a consumer that owns many partitions.

Partitions never share state (one customer is always on one partition), so assigning,
revoking and checkpointing are per partition, exactly as consumer-group rebalances need.
"""

from __future__ import annotations

from collections.abc import Iterable

from byoc_platform.events import EventBatch
from streaming.engine.config import EngineConfig
from streaming.engine.partition import Checkpoint, Output, PartitionEngine
from streaming.engine.state import DedupEntry


class StreamEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._partitions: dict[int, PartitionEngine] = {}

    @property
    def partitions(self) -> dict[int, PartitionEngine]:
        return self._partitions

    def assign(
        self, partition: int, state: bytes | None = None, dedup: Iterable[DedupEntry] = ()
    ) -> PartitionEngine:
        """Take over a partition, fresh or from stored state (see PartitionEngine.restore)."""
        if state is None:
            engine = PartitionEngine(partition, self.config)
        else:
            engine = PartitionEngine.restore(self.config, state, dedup)
            if engine.partition != partition:
                raise ValueError(f"state of partition {engine.partition} given for {partition}")
        self._partitions[partition] = engine
        return engine

    def revoke(self, partition: int) -> None:
        """Forget a partition (after its last checkpoint was committed)."""
        self._partitions.pop(partition, None)

    def engine(self, partition: int) -> PartitionEngine:
        try:
            return self._partitions[partition]
        except KeyError:
            raise KeyError(f"partition {partition} is not assigned") from None

    def process(self, partition: int, offset: int, batch: EventBatch) -> bool:
        return self.engine(partition).process(offset, batch)

    def process_value(self, partition: int, offset: int, value: bytes) -> bool:
        return self.engine(partition).process_value(offset, value)

    def drain(self, include_open: bool = True) -> dict[int, Output]:
        """Rows of every partition since its last drain (empty outputs left out)."""
        drained = {p: e.drain(include_open) for p, e in sorted(self._partitions.items())}
        return {p: out for p, out in drained.items() if out or out.closed_windows}

    def checkpoint(self, partition: int) -> Checkpoint:
        return self.engine(partition).checkpoint()

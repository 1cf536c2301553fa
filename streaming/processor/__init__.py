"""The embedded stream processor: Kafka ``usage.events`` -> dedup + windows -> ClickHouse.

It writes ``usage_events``, ``usage_minute`` and ``late_hours`` (from ``usage.events``),
publishes ``usage.deduped``, and loads aggregated usage, ``usage.reports``, into
``usage_reports`` (and its late hours into ``late_hours``) on a thread of its own
(:mod:`.reports`: at-least-once, no checkpoint; everything below is about ``usage.events``).

Pieces: :mod:`.processor` (consumer loop, rebalances), :mod:`.writer` (the ordered write path),
:mod:`.warehouse_sink` (ClickHouse blocks with dedup tokens), :mod:`.deduped` (``usage.deduped``),
:mod:`.reports` (``usage.reports``), :mod:`.checkpoints` (SQLite state), :mod:`.health` and
:mod:`.metrics`. The semantics live in the pure core, streaming/engine/.

Where state lives, and why
--------------------------
Per-partition core state (watermark, open windows, dedup clock) and the partition's dedup
entries live in a SQLite (WAL) file under ``<data_dir>/stream/``, checkpointed together with the
partition's next offset in ONE transaction. All processor instances on the machine share the
file, so a partition that moves on a rebalance resumes from what its previous owner committed.
The checkpoint, not Kafka's committed offset, is where a partition resumes (Kafka offsets are
committed afterwards, for monitoring). Dedup state is bounded by its TTL: the engine evicts
entries a window past the receive clock, and the store deletes dedup segments once their newest
entry is past the window. In a cluster the Flink job (RocksDB state, exactly-once checkpoints)
takes this role.

Exactly-once into ClickHouse
----------------------------
1. Determinism. The core processes each partition in offset order, with a per-partition
   watermark and a dedup clock driven by the records' receive time (never the wall clock). A
   customer lives on one partition. So the rows produced for an offset range depend only on the
   log and the state at the start of the range, and that state is the checkpoint.
2. Ordering. A checkpoint is committed only after the rows of every offset it covers are
   durable in ClickHouse (and the deduplicated events acknowledged on ``usage.deduped``). A
   crash anywhere before the commit replays from the previous checkpoint; dedup claims are never
   stored without their writes (openmeter #5118 cannot happen).
3. Nothing written twice. Each block is inserted with
   ``insert_deduplication_token = topic:partition:first:last:table``, and before writing, the
   range is recorded as the partition's pending intent. A replay cuts its first batch exactly at
   the pending range, so it re-inserts byte-identical blocks with the same tokens, and ClickHouse
   drops them (the tables keep the last 1000 tokens). A retried insert (HTTP error) reuses its
   token too.
4. Convergence even without tokens (a replay with DIFFERENT batch boundaries, e.g. after the
   token window passed, or a lost intent): ``usage_events`` rows of a replayed event are identical
   and collapse under ``FINAL`` (the sorting key is the dedup key). ``usage_minute`` rows are
   SNAPSHOTS of a whole window, never increments: the snapshot after the k-th event of a window is
   a function of the window's first k events, which the replay processes in the same order, so it
   is identical to the one written before, with ``version`` = k. Different boundaries change only
   WHICH snapshots get written, never their content; ReplacingMergeTree(version) keeps the
   newest, the full window, under ``FINAL``. Late events are rows of their own, keyed by their
   idempotency key (``late_key``) with version 1, so a replayed late event replaces itself.
   ``late_hours`` rows are keyed by (environment, hour). Summing ``usage_minute FINAL`` over
   ``late_key`` therefore counts every unique event exactly once, whatever the boundaries.
5. ``usage.deduped`` is at-least-once across crashes (acknowledged before the checkpoint,
   republished on replay); its consumers count each idempotency key once.
"""

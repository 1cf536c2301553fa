"""Usage into the counters: the deduplicated events (live), the warehouse (on start), and
ReportEvents.

- Live: a consumer-group worker thread reads the stream processor's deduplicated events,
  counts them through ``UsageCounters.apply_events`` (idempotent per event) and commits
  the Kafka offsets only after the store committed the counts: a crash re-reads, never skips.
  Which topic depends on ``stream.engine`` (:func:`usage_source`): the embedded engine
  publishes ``usage.deduped`` (EventBatch records, events.py); the Flink job publishes no
  such topic, so with ``flink`` the feed reads the job's ``<flink.sink_topic_prefix>
  usage_events`` rows (one event per message, ``decode_event_row``), the rows ClickHouse
  ingests too. Only committed records are read (``isolation.level = read_committed``): the
  Flink job writes in transactions, and an aborted one is replayed by the job after restore.
  Undecodable records are logged and skipped. Aggregated usage (``usage.reports``) is read
  alongside, whichever the engine.
- On start: the current usage windows are replayed from ClickHouse ``usage_events`` (FINAL)
  through the same idempotent path before the consumer starts, so counters lost with a local
  store (a new node, a wiped volume) come back from the warehouse. With a store that already
  holds counts, the replay counts only what the store missed; never-resetting (lifetime)
  counters are replayed only into an empty store, because their event identities are not kept
  forever (see counters.py).
- ReportEvents (gRPC) produces raw events to ``usage.events`` like the REST ingestion does:
  one record per (environment, customer), split into several of at most MAX_RECORD_BYTES
  (events.py) when larger, acks=all, before the RPC answers. A retried record may land after
  a later one of the same call: the processors dedup by key and window by event time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec

from byoc_platform import clients
from byoc_platform.events import (
    SCHEMA_VERSION,
    EventBatch,
    UsageEvent,
    UsageReport,
    UsageReportBatch,
    decode_batch,
    decode_event_row,
    decode_report_batch,
    encode_batch,
    encode_report_batch,
    record_key,
    split_records,
)
from byoc_platform.settings import Settings
from enforcement.counters import UsageCounters
from enforcement.state import NO_RESOURCE, LocalState
from enforcement.usage_hook import UsageHook

log = logging.getLogger(__name__)

REPLAY_BLOCK = 5000
PRODUCE_ATTEMPTS = 3
FLINK_EVENTS_TABLE = "usage_events"  # the Flink job's sink table (streaming/flink/usage_job.py)

# One record of the deduplicated-events topic -> (environment, its events).
UsageDecoder = Callable[[bytes], tuple[str, list[UsageEvent]]]


def _batch_events(value: bytes) -> tuple[str, list[UsageEvent]]:
    batch = decode_batch(value)
    return batch.environment, batch.events


def _row_events(value: bytes) -> tuple[str, list[UsageEvent]]:
    environment, event = decode_event_row(value)
    return environment, [event]


def usage_source(settings: Settings) -> tuple[str, UsageDecoder]:
    """The topic of the deduplicated events for this stream engine, and its record decoder."""
    if settings.stream.engine == "flink":
        return settings.flink.sink_topic_prefix + FLINK_EVENTS_TABLE, _row_events
    return settings.kafka.deduped_topic, _batch_events


class UsageFeed:
    def __init__(
        self, settings: Settings, counters: UsageCounters, state: LocalState, hook: UsageHook
    ) -> None:
        self.settings = settings
        self.hook = hook
        self.counters = counters
        self.state = state
        self._producer: Any = None
        self._producer_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.replayed_events = 0
        self.replay_error: str | None = None
        self.consumer_error: str | None = None
        self.replay_done = threading.Event()

    # --- live consumer ---------------------------------------------------------------------

    async def start(self) -> None:
        if not self.settings.enforcement.consume_usage:
            self.replay_done.set()
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="enforcement-usage", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)
            self._thread = None
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
            self._producer = None

    def _run(self) -> None:
        if self.settings.enforcement.rebuild_from_warehouse:
            try:
                self.replay_from_warehouse()
            except Exception as exc:  # the warehouse may be down: count live events anyway
                self.replay_error = repr(exc)
                log.warning("replay from the warehouse failed: %r", exc)
        self.replay_done.set()
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception as exc:
                self.consumer_error = repr(exc)
                log.exception("usage consumer failed; restarting in 2 s")
                self._stop.wait(2.0)

    def _consume(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        cfg = self.settings.enforcement
        consumer = Consumer(
            {
                **clients.consumer_config(self.settings, cfg.consumer_group),
                # librdkafka's default, said: rows of an aborted Flink transaction never count.
                "isolation.level": "read_committed",
                "logger": logging.getLogger("rdkafka.consumer"),  # JSON logs, not raw stderr
            }
        )
        deduped, decode_usage = usage_source(self.settings)
        reports = self.settings.kafka.reports_topic
        consumer.subscribe([deduped, reports])
        try:
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=2000, timeout=0.2)
                if not messages:
                    continue
                by_env: dict[str, list[UsageEvent]] = defaultdict(list)
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("usage consumer: %s", error)
                        continue
                    try:
                        if message.topic() == reports:
                            # Reports keep their order (SET after DELTA): apply each batch now.
                            report_batch = decode_report_batch(message.value())
                            self.hook.apply_many(report_batch.environment, report_batch.usages)
                        else:
                            environment, events = decode_usage(message.value())
                            by_env[environment].extend(events)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.error("%s: undecodable record skipped: %s", message.topic(), exc)
                for environment, events in by_env.items():
                    self.counters.apply_events(environment, events)
                consumer.commit(asynchronous=False)
                self.consumer_error = None
        finally:
            consumer.close()

    # --- replay from the warehouse ------------------------------------------------------------

    def _replay_plan(self, environment: str, now: float) -> tuple[float | None, list[str]]:
        """(since, event names) to replay for one environment, or (None, []) for nothing."""
        env = self.state.env(environment)
        names = sorted(env.features_by_event)
        if not names:
            return None, []
        cold = self.counters.store.is_cold(environment)
        since: float | None = None
        for customer_id in list(env.customers):
            scopes = {NO_RESOURCE} | env.customer_resources(customer_id)
            for scope in scopes:
                view = env.view(customer_id, scope, now)
                for ent in view.entitlements.values():
                    if ent.feature.meter is None:
                        continue
                    if ent.reset_period is None:
                        start = 0.0 if cold else None
                    else:
                        start = float(ent.current_window(now)[0])
                    if start is not None:
                        since = start if since is None else min(since, start)
        from enforcement.periods import CALENDAR, window

        for budget in env.budgets.values():
            if budget.featureId is not None:
                start = float(window(budget.period, CALENDAR, now)[0])
                since = start if since is None else min(since, start)
        return since, names

    def replay_from_warehouse(self) -> int:
        """Count the current windows' events from ClickHouse; returns how many counted."""
        now = time.time()
        store = self.counters.store
        plans = {
            e: (*self._replay_plan(e, now), not store.is_cold(e)) for e in list(self.state.envs)
        }
        plans = {e: p for e, p in plans.items() if p[0] is not None}
        if not plans:
            return 0
        client = clients.clickhouse(self.settings)
        db = self.settings.clickhouse.database
        counted = 0
        try:
            for environment, (since, names, warm) in plans.items():
                assert since is not None
                query = (
                    "SELECT customer_id, resource_id, event_name, idempotency_key, "
                    "toUnixTimestamp64Milli(event_time) AS ts, `values` "
                    f"FROM {db}.usage_events FINAL "
                    "WHERE environment = {env:String} "
                    "AND event_time >= fromUnixTimestamp64Milli({since:Int64}) "
                    "AND event_name IN {names:Array(String)}"
                )
                params = {"env": environment, "since": int(since * 1000), "names": names}
                with client.query_row_block_stream(query, parameters=params) as stream:
                    for block in stream:
                        events = [
                            UsageEvent(
                                customerId=row[0],
                                eventName=row[2],
                                idempotencyKey=row[3],
                                timestamp=int(row[4]),
                                resourceId=row[1] or None,
                                dimensions=dict(row[5]),
                            )
                            for row in block
                        ]
                        counted += self.counters.apply_events(
                            environment, events, replay=True, skip_lifetime=warm, now=now
                        )
        finally:
            client.close()
        self.replayed_events += counted
        log.info("replayed usage from the warehouse", extra={"fields": {"counted": counted}})
        return counted

    # --- ReportEvents -------------------------------------------------------------------------

    def _get_producer(self) -> Any:
        with self._producer_lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer(
                    {
                        **clients.producer_config(self.settings),
                        "logger": logging.getLogger("rdkafka.producer"),
                    }
                )
            return self._producer

    def _produce_sync(self, environment: str, events: list[UsageEvent]) -> None:
        received = int(time.time() * 1000)

        def encode(group: list[UsageEvent]) -> bytes:
            return encode_batch(EventBatch(SCHEMA_VERSION, environment, received, group))

        self._send(self.settings.kafka.events_topic, environment, events, encode, received)

    def _produce_reports_sync(self, environment: str, reports: list[UsageReport]) -> None:
        received = int(time.time() * 1000)

        def encode(group: list[UsageReport]) -> bytes:
            return encode_report_batch(
                UsageReportBatch(SCHEMA_VERSION, environment, received, group)
            )

        self._send(self.settings.kafka.reports_topic, environment, reports, encode, received)

    def _send(
        self,
        topic: str,
        environment: str,
        items: list[Any],
        encode: Callable[[list[Any]], bytes],
        received: int,
    ) -> None:
        """One record per customer (split when larger than a record may be), keyed as the
        ingestion routes key theirs, so a customer's items keep one partition and order."""
        by_customer: dict[str, list[Any]] = defaultdict(list)
        for item in items:
            by_customer[item.customerId].append(item)
        # Every record before the first is produced: an item too large for any record
        # (ItemTooLarge) refuses the whole call with nothing of it in the log.
        pending = [
            (customer_id, value)
            for customer_id, customer_items in by_customer.items()
            for _, value in split_records(customer_items, encode)
        ]
        producer = self._get_producer()
        for attempt in range(PRODUCE_ATTEMPTS):
            failures: list[tuple[str, bytes]] = []
            errors: list[str] = []
            for customer_id, value in pending:

                def report(
                    err: Any,
                    msg: Any,
                    item: tuple[str, bytes] = (customer_id, value),
                    failures: list[tuple[str, bytes]] = failures,
                    errors: list[str] = errors,
                ) -> None:
                    if not clients.acknowledged(err, msg):  # error, or acked with no offset
                        failures.append(item)
                        errors.append(str(err or "delivered without an offset"))

                producer.produce(
                    topic,
                    value=value,
                    key=record_key(environment, customer_id),
                    timestamp=received,
                    on_delivery=report,
                )
            remaining = producer.flush(self.settings.api.produce_timeout_s)
            if remaining:
                raise RuntimeError(f"{remaining} records not acknowledged in time")
            if not failures:
                return
            # Tansu answers UNKNOWN_SERVER_ERROR during a storage hiccup: retry in the app.
            log.warning("produce attempt %d failed: %s", attempt + 1, errors[:3])
            pending = failures
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"records not durable after {PRODUCE_ATTEMPTS} attempts: {errors[:3]}")

    async def produce(self, environment: str, events: list[UsageEvent]) -> None:
        if events:
            await asyncio.to_thread(self._produce_sync, environment, events)

    async def produce_reports(self, environment: str, reports: list[UsageReport]) -> None:
        if reports:
            await asyncio.to_thread(self._produce_reports_sync, environment, reports)

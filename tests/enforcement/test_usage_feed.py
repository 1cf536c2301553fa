"""Counters fed by the real engines: ``usage.deduped`` on the Tansu broker (idempotent per
event across redeliveries), with ``stream.engine = "flink"`` the Flink job's
``<prefix>usage_events`` rows instead (written in transactions), aggregated usage from
REST /api/v2/usage (ingestion component + the usage hook), ReportEvents producing to
``usage.events``, and the rebuild from the chdb warehouse on start (a new node, and a restart
that must not double count)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpclib
import msgspec
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic
from stigg._client import Stigg as RestStigg
from stigg.client import Stigg
from stigg.generated.exceptions import GraphQLClientGraphQLMultiError
from stigg.generated.input_types import ReportUsageBaseInput, ReportUsageBulkInput, ReportUsageInput
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform import clients
from byoc_platform.events import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    EventBatch,
    UsageEvent,
    UsageReport,
    UsageReportBatch,
    decode_batch,
    encode_batch,
    encode_report_batch,
    record_key,
    split_dimensions,
)
from byoc_platform.settings import Settings
from tests.enforcement.harness import (
    ControlPlaneProcess,
    Runtime,
    make_settings,
    running,
    wait_until,
)
from tests.enforcement.test_sidecar_checks import call
from tests.enforcement.test_usage_reporting import new_customer
from tests.stack_fixtures import Stack


@pytest.fixture(scope="module")
def feed_runtime(
    infra: Stack, control_plane: ControlPlaneProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path_factory.mktemp("feed"),
        control_plane.url,
        infra.settings,
        consume_usage=True,
        rebuild_from_warehouse=True,
        consumer_group=f"enf-test-{uuid.uuid4().hex[:8]}",
    )
    with running(settings, ("enforcement", "ingest")) as runtime:
        runtime.sync_now()
        wait_until(runtime.component.usage_feed.replay_done.is_set, timeout=60)
        yield runtime


def produce_deduped(settings: Settings, customer: str, events: list[UsageEvent]) -> None:
    producer = Producer(clients.producer_config(settings))
    now = int(time.time() * 1000)
    batch = EventBatch(v=SCHEMA_VERSION, environment="development", receivedAt=now, events=events)
    producer.produce(
        settings.kafka.deduped_topic,
        value=encode_batch(batch),
        key=record_key("development", customer),
        timestamp=now,
    )
    assert producer.flush(30) == 0


def usage(runtime: Runtime, customer: str, feature: str) -> float:
    resp = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(customer_id=customer, feature_id=feature)
        ),
    )
    return resp.entitlement.current_usage


def ev(customer: str, name: str, key: str, **dims: float | str) -> UsageEvent:
    return UsageEvent(
        customerId=customer,
        eventName=name,
        idempotencyKey=key,
        timestamp=int(time.time() * 1000),
        dimensions=dims,
    )


def test_deduped_events_count_once_even_when_redelivered(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    customer = new_customer(control_plane, feed_runtime)
    events = [
        ev(customer, "api_call", "c1"),
        ev(customer, "api_call", "c2"),
        ev(customer, "api_call", "c3"),
        ev(customer, "llm.tokens", "t1", tokens=100, model="gpt"),
        ev(customer, "llm.tokens", "t2", tokens=250),
        ev(customer, "unrelated.event", "u1"),
    ]
    produce_deduped(infra.settings, customer, events)
    wait_until(lambda: usage(feed_runtime, customer, "f-tokens") == 350, timeout=60)
    assert usage(feed_runtime, customer, "f-calls") == 3
    # The stream processor redelivers after a crash: the same events again, plus one new.
    produce_deduped(infra.settings, customer, [*events[:3], ev(customer, "api_call", "c4")])
    wait_until(lambda: usage(feed_runtime, customer, "f-calls") == 4, timeout=60)
    time.sleep(1.0)  # give any double count the chance to show
    assert usage(feed_runtime, customer, "f-calls") == 4
    assert usage(feed_runtime, customer, "f-tokens") == 350


def test_rest_v2_usage_reaches_the_counters(
    control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    customer = new_customer(control_plane, feed_runtime)
    client = RestStigg(base_url=feed_runtime.api_url, api_key=feed_runtime.api_key, max_retries=0)
    first = client.v2.usage.report(
        usages=[
            {
                "customer_id": customer,
                "feature_id": "f-calls",
                "value": 7,
                "idempotency_key": "u-1",
            },
        ]
    )
    assert first.data.usages[0].current_usage == 7
    again = client.v2.usage.report(
        usages=[
            {
                "customer_id": customer,
                "feature_id": "f-calls",
                "value": 7,
                "idempotency_key": "u-1",
            },
        ]
    )
    assert again.data.usages[0].current_usage == 7  # the same report, counted once
    client.v2.usage.report(
        usages=[
            {
                "customer_id": customer,
                "feature_id": "f-storage",
                "value": 4,
                "update_behavior": "SET",
            },
        ]
    )
    assert usage(feed_runtime, customer, "f-calls") == 7
    assert usage(feed_runtime, customer, "f-storage") == 4
    check = client.v1.customers.check_entitlement(customer, feature_id="f-calls").data
    assert check.current_usage == 7


def test_sidecar_report_usage_reaches_every_runtime_instance(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime, tmp_path: Path
) -> None:
    """Replicas keep counters of their own: a ReportUsage counted only by the one that got
    it was missing on the others (F58). It goes through usage.reports as REST's does."""
    customer = new_customer(control_plane, feed_runtime)
    other_settings = make_settings(
        tmp_path / "other",
        control_plane.url,
        infra.settings,
        consume_usage=True,
        rebuild_from_warehouse=False,
        consumer_group=f"enf-test-{uuid.uuid4().hex[:8]}",
    )
    with running(other_settings) as other:
        other.sync_now()
        answer = call(
            feed_runtime,
            lambda s: s.report_usage(
                pb.ReportUsageRequest(customer_id=customer, feature_id="f-calls", value=500)
            ),
        )
        assert answer.current_usage == 500
        bulk = pb.ReportUsageBulkRequest(
            usages=[
                pb.ReportUsageRequest(customer_id=customer, feature_id="f-calls", value=20),
                pb.ReportUsageRequest(
                    customer_id=customer,
                    feature_id="f-storage",
                    value=6,
                    update_behavior=pb.UsageUpdateBehavior.USAGE_UPDATE_BEHAVIOR_SET,
                ),
            ]
        )
        answers = call(feed_runtime, lambda s: s.report_usage_bulk(bulk))
        assert [a.current_usage for a in answers.usages] == [520, 6]
        wait_until(lambda: usage(other, customer, "f-calls") == 520, timeout=60)
        wait_until(lambda: usage(other, customer, "f-storage") == 6, timeout=60)
        time.sleep(1.0)  # the instance that answered reads its own reports back: once
        assert usage(feed_runtime, customer, "f-calls") == 520
        assert usage(other, customer, "f-calls") == 520


def produce_report_records(settings: Settings, customer: str, values: list[bytes]) -> None:
    """Raw usage.reports records of ``customer`` in environment "development", in order."""
    producer = Producer(clients.producer_config(settings))
    for value in values:
        producer.produce(
            settings.kafka.reports_topic,
            value=value,
            key=record_key("development", customer),
            timestamp=int(time.time() * 1000),
        )
    assert producer.flush(30) == 0


def test_a_report_beyond_range_in_the_log_does_not_stop_the_feed(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    """A value beyond Stigg's bounds logged before every path bounded them (F57) made the
    counter inf, a SET after it NaN, and the usage.reports consumer then failed for ever,
    for every customer."""
    customer = new_customer(control_plane, feed_runtime)
    now = int(time.time() * 1000)

    def report(key: str, value: float, behavior: str = "DELTA") -> UsageReport:
        return UsageReport(
            id=key,
            customerId=customer,
            featureId="f-calls",
            value=value,
            updateBehavior=behavior,
            createdAt=now,
        )

    reports = [report("r1", 1.7e308), report("r2", 1.7e308), report("r3", 0, "SET")]
    produce_report_records(
        infra.settings,
        customer,
        [
            encode_report_batch(UsageReportBatch(SCHEMA_VERSION, "development", now, batch))
            for batch in (reports, [report("r4", 3)])
        ],
    )
    wait_until(lambda: usage(feed_runtime, customer, "f-calls") == 3, timeout=60)
    assert feed_runtime.component.usage_feed.consumer_error is None
    # Raw events of another customer are still counted after it.
    other = new_customer(control_plane, feed_runtime)
    produce_deduped(infra.settings, other, [ev(other, "api_call", "after-1")])
    wait_until(lambda: usage(feed_runtime, other, "f-calls") == 1, timeout=60)


def test_an_undecodable_report_record_does_not_stop_the_feed(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    """Invalid UTF-8 in a usage.reports record raised UnicodeDecodeError, past the feed's skip
    of undecodable records: the consumer restarted on it for ever (F80)."""
    customer = new_customer(control_plane, feed_runtime)
    now = int(time.time() * 1000)
    good = UsageReport(
        id=f"{customer}-r1",
        customerId=customer,
        featureId="f-calls",
        value=3,
        updateBehavior="DELTA",
        createdAt=now,
    )
    produce_report_records(
        infra.settings,
        customer,
        [
            b'{"v":1,"environment":"\xff\xfe","receivedAt":1,"usages":[]}',
            encode_report_batch(UsageReportBatch(SCHEMA_VERSION, "development", now, [good])),
        ],
    )
    wait_until(lambda: usage(feed_runtime, customer, "f-calls") == 3, timeout=60)
    assert feed_runtime.component.usage_feed.consumer_error is None


def test_graphql_report_usage_refusals_are_errors_naming_the_input(
    control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    """A feature that is not metered was an HTTP 400 (the SDK showed the status alone, F59)
    naming ``usages[0]``, a path the caller of ReportUsage never sent."""
    customer = new_customer(control_plane, feed_runtime)
    client = Stigg.create_client(
        feed_runtime.api_key, api_url=f"{feed_runtime.api_url}/graphql", enable_edge=False
    )
    try:
        with pytest.raises(GraphQLClientGraphQLMultiError) as raised:
            client.report_usage(
                ReportUsageInput(customer_id=customer, feature_id="f-seats", value=1)
            )
        [error] = raised.value.errors
        assert error.message == "input.featureId: feature 'f-seats' is not metered"
        with pytest.raises(GraphQLClientGraphQLMultiError) as raised:
            client.report_usage_bulk(
                ReportUsageBulkInput(
                    usages=[
                        ReportUsageBaseInput(customer_id=customer, feature_id="f-calls", value=1),
                        ReportUsageBaseInput(customer_id="nobody", feature_id="f-calls", value=1),
                    ]
                )
            )
        [error] = raised.value.errors
        assert error.message == "input.usages[1].customerId: customer 'nobody' not found"
    finally:
        client.http_client.close()
    assert usage(feed_runtime, customer, "f-calls") == 0


def test_report_events_produces_to_usage_events(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    customer = new_customer(control_plane, feed_runtime)
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    call(
        feed_runtime,
        lambda s: s.report_events(
            pb.ReportEventsRequest(
                events=[
                    pb.Event(
                        event_name="api_call",
                        customer_id=customer,
                        idempotency_key="e-1",
                        timestamp=stamp,
                        dimensions={
                            "tokens": pb.EventDimensionValue(number_value=12),
                            "region": pb.EventDimensionValue(string_value="eu"),
                            "ok": pb.EventDimensionValue(boolean_value=True),
                        },
                    ),
                ]
            )
        ),
    )
    consumer = Consumer(clients.consumer_config(infra.settings, f"enf-read-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([infra.settings.kafka.events_topic])
    found: list[UsageEvent] = []
    deadline = time.monotonic() + 60
    try:
        while not found and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error() or message.key() != record_key("development", customer):
                    continue
                found.extend(decode_batch(message.value()).events)
    finally:
        consumer.close()
    assert len(found) == 1
    event = found[0]
    assert event.idempotencyKey == "e-1"
    assert event.timestamp == int(stamp.timestamp() * 1000)
    assert event.dimensions == {"tokens": 12.0, "region": "eu", "ok": True}


def records_of(infra: Stack, customer: str, expected_events: int) -> list[list[UsageEvent]]:
    """The usage.events records of ``customer`` (their events), read until ``expected_events``
    events arrived or 60 s passed."""
    consumer = Consumer(clients.consumer_config(infra.settings, f"enf-read-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([infra.settings.kafka.events_topic])
    records: list[list[UsageEvent]] = []
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, records)) < expected_events and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error() or message.key() != record_key("development", customer):
                    continue
                assert len(message.value()) <= MAX_RECORD_BYTES
                records.append(decode_batch(message.value()).events)
    finally:
        consumer.close()
    return records


def big_event(customer: str, key: str, size: int) -> pb.Event:
    return pb.Event(
        event_name="api_call",
        customer_id=customer,
        idempotency_key=key,
        dimensions={"prompt": pb.EventDimensionValue(string_value="p" * size)},
    )


def test_report_events_over_one_record_are_split_not_refused(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    """1000 events of 900 bytes: one protobuf message under gRPC's 1 MiB, but more JSON than
    a Kafka record may hold; it used to be one record the broker refused (UNAVAILABLE, which
    the SDK retries forever)."""
    customer = new_customer(control_plane, feed_runtime)
    events = [big_event(customer, f"big-{i:04d}", 900) for i in range(1000)]
    call(feed_runtime, lambda s: s.report_events(pb.ReportEventsRequest(events=events)))
    records = records_of(infra, customer, 1000)
    assert len(records) >= 2
    keys = [event.idempotencyKey for record in records for event in record]
    assert keys == [f"big-{i:04d}" for i in range(1000)]


def test_report_events_refuses_an_event_no_record_can_hold(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime
) -> None:
    customer = new_customer(control_plane, feed_runtime)
    fits, too_big = big_event(customer, "fits", 10), big_event(customer, "too-big", 600_000)
    with pytest.raises(grpclib.GRPCError) as raised:
        call(
            feed_runtime,
            lambda s: s.report_events(pb.ReportEventsRequest(events=[fits, too_big])),
        )
    assert raised.value.status == grpclib.Status.INVALID_ARGUMENT
    assert "'too-big'" in str(raised.value.message)
    assert f"at most {MAX_RECORD_BYTES}" in str(raised.value.message)
    # Nothing of the refused call was produced: the next call's event is the customer's first.
    after = big_event(customer, "after", 10)
    call(feed_runtime, lambda s: s.report_events(pb.ReportEventsRequest(events=[after])))
    records = records_of(infra, customer, 1)
    assert [event.idempotencyKey for record in records for event in record] == ["after"]


def insert_warehouse_events(infra: Stack, customer: str, keys: list[str]) -> None:
    client = infra.clickhouse()
    now = datetime.now(UTC)
    rows = [["development", customer, "", "api_call", key, now, now, {}, {}, "{}"] for key in keys]
    client.insert(
        f"{infra.settings.clickhouse.database}.usage_events",
        rows,
        column_names=[
            "environment",
            "customer_id",
            "resource_id",
            "event_name",
            "idempotency_key",
            "event_time",
            "ingest_time",
            "labels",
            "values",
            "dimensions",
        ],
    )
    client.close()


def test_counters_rebuilt_from_the_warehouse_on_start(
    infra: Stack, control_plane: ControlPlaneProcess, feed_runtime: Runtime, tmp_path: Path
) -> None:
    customer = new_customer(control_plane, feed_runtime)
    group = f"enf-test-{uuid.uuid4().hex[:8]}"

    def settings(data_dir: Path) -> Settings:
        return make_settings(
            data_dir,
            control_plane.url,
            infra.settings,
            consume_usage=True,
            rebuild_from_warehouse=True,
            consumer_group=group,
        )

    # A node counts two events from the topic, then stops.
    with running(settings(tmp_path / "a")) as node:
        node.sync_now()
        produce_deduped(
            infra.settings,
            customer,
            [ev(customer, "api_call", "w1"), ev(customer, "api_call", "w2")],
        )
        wait_until(lambda: usage(node, customer, "f-calls") == 2, timeout=60)
    # Meanwhile the warehouse holds five events of the window, two of them the same ones.
    insert_warehouse_events(infra, customer, ["w1", "w2", "w3", "w4", "w5"])
    # Restart on the same store: the replay adds the three it missed, never the two again.
    with running(settings(tmp_path / "a")) as node:
        wait_until(node.component.usage_feed.replay_done.is_set, timeout=60)
        assert node.component.usage_feed.replay_error is None
        assert usage(node, customer, "f-calls") == 5
        assert node.component.usage_feed.replay_from_warehouse() == 0  # idempotent
        assert usage(node, customer, "f-calls") == 5
    # A brand-new node (empty store, new consumer group): everything from the warehouse,
    # and the topic's redelivery of w1/w2 to the new group does not add to it.
    fresh = settings(tmp_path / "b")
    fresh.enforcement.consumer_group = f"enf-test-{uuid.uuid4().hex[:8]}"
    with running(fresh) as node:
        wait_until(node.component.usage_feed.replay_done.is_set, timeout=60)
        assert usage(node, customer, "f-calls") == 5
        time.sleep(2.0)  # the new group reads the topic from the beginning meanwhile
        assert usage(node, customer, "f-calls") == 5


def flink_row(customer: str, name: str, key: str, **dims: float | str | bool) -> bytes:
    """A usage_events row as the Flink job writes it (streaming/flink/usage_job.py, one JSON
    row per message; the shape of its real output, tests/byoc_platform/test_events.py)."""
    labels, values = split_dimensions(dims)
    now = int(time.time() * 1000)
    row = {
        "environment": "development",
        "customer_id": customer,
        "resource_id": "",
        "event_name": name,
        "idempotency_key": key,
        "event_time": now,
        "ingest_time": now,
        "labels": labels,
        "values": values,
        "dimensions": msgspec.json.encode(dict(sorted(dims.items()))).decode(),
    }
    return json.dumps(row, separators=(",", ":")).encode()


def create_topic(settings: Settings, topic: str) -> None:
    admin = clients.kafka_admin(settings)
    futures = admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    futures[topic].result(30)


def produce_in_transaction(
    settings: Settings, topic: str, customer: str, rows: list[bytes]
) -> None:
    """As the Flink job's exactly-once Kafka sink does: rows inside a committed transaction.
    (Not an aborted one: Tansu hands aborted records to read_committed consumers too.)"""
    producer = Producer(
        {
            **clients.producer_config(settings),
            "enable.idempotence": True,
            "transactional.id": f"test-flink-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for row in rows:
        producer.produce(topic, value=row, key=record_key("development", customer))
    producer.commit_transaction(30)


def test_with_the_flink_engine_its_usage_events_rows_feed_the_counters_once(
    infra: Stack, control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    """In a cluster nothing publishes usage.deduped: the counters read the Flink job's rows."""
    settings = make_settings(
        tmp_path,
        control_plane.url,
        infra.settings,
        consume_usage=True,
        consumer_group=f"enf-test-{uuid.uuid4().hex[:8]}",
    )
    settings.stream.engine = "flink"
    settings.flink.sink_topic_prefix = f"byoc.rows.t{uuid.uuid4().hex[:8]}."
    topic = settings.flink.sink_topic_prefix + "usage_events"
    create_topic(infra.settings, topic)
    with running(settings) as node:
        customer = new_customer(control_plane, node)
        rows = [
            flink_row(customer, "api_call", "c1"),
            flink_row(customer, "api_call", "c2"),
            flink_row(customer, "llm.tokens", "t1", tokens=100, model="gpt", cached=True),
            flink_row(customer, "llm.tokens", "t2", tokens=250.5),
            flink_row(customer, "unrelated.event", "u1", tokens=1),
        ]
        produce_in_transaction(infra.settings, topic, customer, rows)
        wait_until(lambda: usage(node, customer, "f-tokens") == 350.5, timeout=60)
        assert usage(node, customer, "f-calls") == 2
        # A row again (same environment, customer, key) counts once; a bad one is skipped.
        bad = b'{"environment":"development","customer_id":"%s"}' % customer.encode()
        again = [rows[0], bad, flink_row(customer, "api_call", "c3"), rows[2]]
        produce_in_transaction(infra.settings, topic, customer, again)
        wait_until(lambda: usage(node, customer, "f-calls") == 3, timeout=60)
        time.sleep(1.0)  # give any double count the chance to show
        assert usage(node, customer, "f-calls") == 3
        assert usage(node, customer, "f-tokens") == 350.5
        assert node.component.usage_feed.consumer_error is None

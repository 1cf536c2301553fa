"""Helpers for the stream processor tests: isolated topics, real processor processes, and an
independent model of the expected results (plain Python, deliberately not the engine)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic

from byoc_platform import clients
from byoc_platform.events import EventBatch, UsageEvent, decode_batch, encode_batch, record_key
from byoc_platform.settings import Settings
from tests.stack_fixtures import free_port

REPO = Path(__file__).resolve().parents[3]


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included (health endpoints)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def isolated_settings(
    base: Settings, data_dir: Path, partitions: int = 4, **stream: Any
) -> Settings:
    """``base`` (a running stack) with own topics, consumer group, data dir and health port."""
    tag = uuid.uuid4().hex[:10]
    s = base.model_copy(deep=True)
    s.data_dir = data_dir
    s.kafka.events_topic = f"test.events.{tag}"
    s.kafka.deduped_topic = f"test.deduped.{tag}"
    s.kafka.reports_topic = f"test.reports.{tag}"
    s.kafka.partitions = partitions
    s.stream.consumer_group = f"test-stream-{tag}"
    for name, value in stream.items():
        setattr(s.stream, name, value)
    s.ports.stream = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    admin = clients.kafka_admin(s)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics(s)]
    )
    for future in futures.values():
        future.result(30)
    return s


def topics(s: Settings) -> list[str]:
    return [s.kafka.events_topic, s.kafka.deduped_topic, s.kafka.reports_topic]


def write_config(s: Settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(s.model_dump(mode="json", exclude={"api_key"})))
    return path


class ProcessorProcess:
    """`python -m byoc_platform stream` as a real child process (so SIGKILL is real)."""

    def __init__(self, s: Settings, name: str = "p") -> None:
        self.settings = s
        self.name = name
        self.config = write_config(s, s.data_dir / f"settings-{name}-{s.ports.stream}.yaml")
        self.log_path = s.data_dir / f"stream-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
        env["BYOC_CONFIG_FILE"] = str(self.config)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "byoc_platform", "stream"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ports.stream}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def readiness(self) -> dict[str, Any] | None:
        try:
            status, body = self.get("/readyz")
        except OSError:
            return None
        data = json.loads(body)
        data["http_status"] = status
        return data

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            ready = self.readiness()
            if ready and ready["http_status"] == 200:
                return ready
            time.sleep(0.1)
        assert self.process is not None
        self.process.kill()  # a failed test must not leave its processor running
        self.process.wait(10)
        raise AssertionError(f"processor {self.name} not ready in {timeout_s}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"processor {self.name} exited with {code}:\n{self.log_tail()}")

    def metric(self, name: str) -> float:
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                metric = line.split(" ")[0].split("{")[0]
                if metric == name:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(60)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        return self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# ------------------------------------------------------------------------ producing


@dataclass
class Produced:
    """Records as the broker stored them: partition -> [(offset, EventBatch)]."""

    by_partition: dict[int, list[tuple[int, EventBatch]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def end_offsets(self) -> dict[int, int]:
        return {p: max(o for o, _ in recs) + 1 for p, recs in self.by_partition.items() if recs}


class EventProducer:
    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.producer = Producer(clients.producer_config(s, **{"partitioner": "murmur2_random"}))
        self.produced = Produced()
        self.errors: list[str] = []

    def send(self, batch: EventBatch) -> None:
        customer = batch.events[0].customerId

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.produced.by_partition[msg.partition()].append((msg.offset(), batch))

        self.producer.produce(
            self.settings.kafka.events_topic,
            key=record_key(batch.environment, customer),
            value=encode_batch(batch),
            timestamp=batch.receivedAt,
            on_delivery=delivered,
        )
        self.producer.poll(0)

    def flush(self) -> Produced:
        assert self.producer.flush(60) == 0
        assert not self.errors, self.errors
        for records in self.produced.by_partition.values():
            records.sort(key=lambda r: r[0])
        return self.produced


# ------------------------------------------------------------------------ checkpoints


def checkpointed_offsets(s: Settings) -> dict[int, int | None]:
    """Next offsets in the processor's checkpoint DB (read-only, like an operator would)."""
    path = s.data_dir / "stream" / "checkpoints.db"
    if not path.exists():
        return {}
    stream = f"{s.stream.consumer_group}/{s.kafka.events_topic}"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT partition, next_offset FROM partitions WHERE stream = ?", (stream,)
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return dict(rows)


def dedup_store_stats(s: Settings) -> tuple[int, int]:
    """(segments, entries) of the processor's stored dedup state."""
    path = s.data_dir / "stream" / "checkpoints.db"
    stream = f"{s.stream.consumer_group}/{s.kafka.events_topic}"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        segments, entries = db.execute(
            "SELECT count(*), coalesce(sum(entries), 0) FROM dedup_segments WHERE stream = ?",
            (stream,),
        ).fetchone()
    finally:
        db.close()
    return int(segments), int(entries)


def wait_checkpointed(
    s: Settings,
    end_offsets: dict[int, int],
    timeout_s: float = 90.0,
    alive: Any = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        done = checkpointed_offsets(s)
        if all((done.get(p) or 0) >= end for p, end in end_offsets.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"not checkpointed in {timeout_s}s: have {done}, want {end_offsets}")


def consume_all(s: Settings, topic: str, expected_records: int, timeout_s: float = 60) -> list:
    consumer = Consumer(clients.consumer_config(s, f"reader-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    out: list[EventBatch] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected_records and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                if message.error() is None:
                    out.append(decode_batch(message.value()))
        # Drain a little longer: at-least-once may have delivered more.
        for message in consumer.consume(1000, 1.0):
            if message.error() is None:
                out.append(decode_batch(message.value()))
    finally:
        consumer.close()
    return out


# ------------------------------------------------------------------------ the expected model


def labels_and_values(dimensions: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    labels: dict[str, str] = {}
    values: dict[str, float] = {}
    for name, value in dimensions.items():
        if isinstance(value, bool):
            labels[name] = "true" if value else "false"
        elif isinstance(value, (int, float)):
            values[name] = float(value)
        else:
            labels[name] = str(value)
    return labels, values


def canonical(labels: dict[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)


@dataclass
class Expected:
    unique: dict[tuple[str, str, str], tuple[UsageEvent, int]]  # key -> (first event, receivedAt)
    minutes: dict[tuple, list[float]]  # (cust, res, name, labels, minute_s, metric) -> aggregates
    late_events: int
    late_hours: set[tuple[str, int]]  # (environment, hour epoch seconds)
    duplicates: int


def expected_results(
    produced: Produced, window_ms: int = 60_000, ooo_ms: int = 5000, dedup_ms: int = 7 * 86_400_000
) -> Expected:
    """Dedup (first wins, receive-time window), per-partition watermark, 1-minute aggregates."""
    unique: dict[tuple[str, str, str], tuple[UsageEvent, int]] = {}
    minutes: dict[tuple, list[float]] = {}
    late_events = 0
    duplicates = 0
    late_hours: set[tuple[str, int]] = set()
    for _, records in sorted(produced.by_partition.items()):
        seen: dict[tuple[str, str, str], int] = {}
        clock: int | None = None
        max_ts: int | None = None
        for _, batch in records:
            clock = batch.receivedAt if clock is None else max(clock, batch.receivedAt)
            for event in batch.events:
                key = (batch.environment, event.customerId, event.idempotencyKey)
                if key in seen and clock - seen[key] < dedup_ms:
                    duplicates += 1
                    continue
                seen[key] = clock
                unique[key] = (event, batch.receivedAt)
                ts = event.timestamp
                start = ts - ts % window_ms
                if max_ts is not None and start + window_ms - 1 <= max_ts - ooo_ms:
                    late_events += 1
                    late_hours.add((batch.environment, (ts - ts % 3_600_000) // 1000))
                max_ts = ts if max_ts is None else max(max_ts, ts)
                labels, values = labels_and_values(event.dimensions)
                base = (
                    event.customerId,
                    event.resourceId or "",
                    event.eventName,
                    canonical(labels),
                )
                for metric, value in [("", 1.0), *values.items()]:
                    mkey = (*base, start // 1000, metric)
                    agg = minutes.get(mkey)
                    if agg is None:
                        minutes[mkey] = [1, value, value, value, ts, ts]
                    else:
                        agg[0] += 1
                        agg[1] += value
                        agg[2] = min(agg[2], value)
                        agg[3] = max(agg[3], value)
                        agg[4] = min(agg[4], ts)
                        agg[5] = max(agg[5], ts)
    return Expected(unique, minutes, late_events, late_hours, duplicates)


# ------------------------------------------------------------------------ reading ClickHouse


def minute_aggregates(ch: Any, db: str, environment: str) -> dict[tuple, list[float]]:
    rows = ch.query(
        "SELECT customer_id, resource_id, event_name, dimensions_key, toUnixTimestamp(minute), "
        "metric, sum(count), sum(sum), min(min), max(max), "
        "toUnixTimestamp64Milli(min(first_event_time)), "
        "toUnixTimestamp64Milli(max(last_event_time)) "
        f"FROM {db}.usage_minute FINAL WHERE environment = {{env:String}} "
        "GROUP BY customer_id, resource_id, event_name, dimensions_key, minute, metric",
        parameters={"env": environment},
    ).result_rows
    return {tuple(r[:6]): [int(r[6]), r[7], r[8], r[9], int(r[10]), int(r[11])] for r in rows}


def late_row_count(ch: Any, db: str, environment: str) -> int:
    return int(
        ch.query(
            f"SELECT count() FROM {db}.usage_minute FINAL WHERE environment = {{env:String}} "
            "AND late_key != '' AND metric = ''",
            parameters={"env": environment},
        ).result_rows[0][0]
    )


def late_hours(ch: Any, db: str, environment: str) -> set[tuple[str, int]]:
    rows = ch.query(
        f"SELECT environment, toUnixTimestamp(hour) FROM {db}.late_hours FINAL "
        "WHERE environment = {env:String}",
        parameters={"env": environment},
    ).result_rows
    return {(r[0], int(r[1])) for r in rows}


def event_rows(ch: Any, db: str, environment: str, final: bool = True) -> list[tuple]:
    return ch.query(
        "SELECT customer_id, idempotency_key, toUnixTimestamp64Milli(event_time), "
        f"`values`, labels FROM {db}.usage_events {'FINAL' if final else ''} "
        "WHERE environment = {env:String}",
        parameters={"env": environment},
    ).result_rows


# ------------------------------------------------------------------------ fault injection


class ClickHouseFaultProxy:
    """An HTTP proxy in front of the warehouse that can break INSERTs on purpose.

    Modes for INSERT requests (anything else always passes):
    - ``pass``: forward.
    - ``block_after(n)``: forward ``n`` more inserts, then hold every later insert forever
      (the processor is stuck mid-flush, as if killed there).
    - ``lose_acks(n)``: forward the next ``n`` inserts but answer them with 502, as if the
      response was lost after ClickHouse had stored the block.
    """

    def __init__(self, target: str) -> None:
        import http.server
        import threading as _threading

        self.target = target.rstrip("/")
        self.inserts_forwarded = 0
        self.acks_lost = 0
        self.blocked = _threading.Event()
        self._release = _threading.Event()
        self._lock = _threading.Lock()
        self._pass_left: int | None = None
        self._lose_left = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(b"")

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(chunks)
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query).get("query", [""])[0]
                # clickhouse-connect sends the INSERT statement in the URL or heading the body.
                is_insert = query.lstrip().upper().startswith("INSERT") or body[
                    :16
                ].lstrip().upper().startswith(b"INSERT")
                lose = False
                if is_insert:
                    with proxy._lock:
                        if proxy._pass_left is not None:
                            if proxy._pass_left <= 0:
                                proxy.blocked.set()
                                block = True
                            else:
                                proxy._pass_left -= 1
                                block = False
                        else:
                            block = False
                        if not block and proxy._lose_left > 0:
                            proxy._lose_left -= 1
                            lose = True
                    if block:
                        proxy._release.wait()
                        self.close_connection = True
                        return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower()
                    not in ("host", "content-length", "transfer-encoding", "connection")
                }
                request = urllib.request.Request(
                    proxy.target + self.path,
                    data=body if self.command == "POST" else None,
                    headers=headers,
                    method=self.command,
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, payload = response.status, response.read()
                        out_headers = dict(response.headers.items())
                except urllib.error.HTTPError as exc:
                    status, payload, out_headers = exc.code, exc.read(), dict(exc.headers.items())
                if is_insert and status == 200:
                    with proxy._lock:
                        proxy.inserts_forwarded += 1
                        if lose:
                            proxy.acks_lost += 1
                if lose:
                    status, payload, out_headers = 502, b"ack lost (test proxy)\n", {}
                self.send_response(status)
                for k, v in out_headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        import http.server as _hs

        self._server = _hs.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = _threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def block_after(self, inserts: int) -> None:
        with self._lock:
            self._pass_left = inserts

    def lose_acks(self, inserts: int) -> None:
        with self._lock:
            self._lose_left = inserts

    def release(self) -> None:
        """Back to pass-through; held inserts are dropped unanswered (their client is gone)."""
        with self._lock:
            self._pass_left = None
        self._release.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


def pending_intents(s: Settings) -> list[tuple[int, str]]:
    path = s.data_dir / "stream" / "checkpoints.db"
    stream = f"{s.stream.consumer_group}/{s.kafka.events_topic}"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(
            "SELECT partition, pending_job FROM partitions WHERE stream = ? "
            "AND pending_job IS NOT NULL",
            (stream,),
        ).fetchall()
    finally:
        db.close()

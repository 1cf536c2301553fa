"""Benchmark of the embedded stream processor (`byoc stream`) on a real local stack.

Two phases, each on fresh topics and a fresh consumer group, against the real processor process
(`python -m byoc_platform stream`):

1. Throughput: pre-load N events into ``usage.events`` (records of ``--events-per-record``
   events of one customer, as the runtime API writes them), start the processor, and time from
   the moment it has joined its group until every event is durable in ClickHouse AND
   checkpointed (its ``byoc_stream_events_durable_total`` counter, which the writer bumps only
   after the inserts, the ``usage.deduped`` acks and the checkpoint commit). ``usage_events`` is
   counted at the end to confirm.
2. Freshness: produce at a fixed rate (``--rate`` events/s) for ``--seconds``; every 20 ms one
   extra *marker* event for a customer of its own is produced. Its "API ack" time is the Kafka
   acknowledgement (the runtime API answers 200 right after that ack, acks=all). A poller asks
   ClickHouse every ``--poll-ms`` which outstanding markers have a ``usage_minute`` row (a
   marker's row exists only once that event has been written); freshness = completion time of
   the first query that saw it - ack time (an upper bound; the resolution is the poll interval
   plus one query, both printed).

The last line printed is one JSON object with events_per_s, freshness_p50_ms, freshness_p99_ms
(and the details). Runs its own stack (KMS, S3, Kafka on S3, warehouse) on free ports unless
``--stack-settings`` names the settings JSON of a running one.

    .venv/bin/python bench/stream.py --events 500000 --rate 20000 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import NewTopic  # noqa: E402
from proc_cpu import cpu_seconds_if_running  # noqa: E402

from byoc_platform import clients  # noqa: E402
from byoc_platform.events import (  # noqa: E402
    SCHEMA_VERSION,
    EventBatch,
    UsageEvent,
    encode_batch,
    record_key,
)
from byoc_platform.settings import Settings  # noqa: E402


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_priority(pids: list[int], nice: int) -> None:
    """Give these processes' scheduler autogroups (one per session: the stack's children run in
    sessions of their own) the nice value ``nice``, so the measured pipeline competes less with
    unrelated work on a shared machine. Needs root; reported in the output."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        except OSError as exc:
            say(f"cannot set autogroup nice of {pid}: {exc}")


def checkpointed(s: Settings) -> dict[int, int]:
    """Next offsets in the processors' checkpoint DB: everything below is durable in ClickHouse."""
    import sqlite3

    path = s.data_dir / "stream" / "checkpoints.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT partition, next_offset FROM partitions WHERE stream = ?",
            (f"{s.stream.consumer_group}/{s.kafka.events_topic}",),
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {p: o or 0 for p, o in rows}


class CpuMeter:
    """CPU seconds used by named processes between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._start: dict[str, float | None] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds_if_running(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            now, then = cpu_seconds_if_running(pid), self._start.get(name)
            if now is not None and then is not None:
                out[name] = round(now - then, 2)
        return out


# ------------------------------------------------------------------------ stack + processor


def start_own_stack(data_dir: Path) -> tuple[Settings, Any]:
    from tests.stack_fixtures import start_stack, test_settings

    settings = test_settings(data_dir)
    stack = start_stack(settings, ["kms", "s3", "kafka", "warehouse"])
    return settings, stack


def phase_settings(base: Settings, data_dir: Path, phase: str) -> Settings:
    from tests.stack_fixtures import free_port

    tag = f"{phase}-{uuid.uuid4().hex[:8]}"
    s = base.model_copy(deep=True)
    s.data_dir = data_dir / tag
    s.data_dir.mkdir(parents=True)
    s.kafka.events_topic = f"bench.events.{tag}"
    s.kafka.deduped_topic = f"bench.deduped.{tag}"
    s.stream.consumer_group = f"bench-{tag}"
    s.ports.stream = free_port()
    s.log_level = "WARNING"
    admin = clients.kafka_admin(s)  # keep a reference: its futures die with it
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=s.kafka.partitions, replication_factor=1)
            for t in (s.kafka.events_topic, s.kafka.deduped_topic)
        ]
    )
    for future in futures.values():
        future.result(30)
    return s


class Processor:
    def __init__(self, s: Settings, profile: Path | None, name: str = "stream") -> None:
        self.settings = s
        self.name = name
        config = s.data_dir / f"settings-{name}.yaml"
        config.write_text(yaml.safe_dump(s.model_dump(mode="json", exclude={"api_key"})))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
        env["BYOC_CONFIG_FILE"] = str(config)
        command = [sys.executable, "-m", "byoc_platform", "stream"]
        self.profiled = profile is not None
        if profile is not None:
            py_spy = Path(sys.executable).parent / "py-spy"
            record = ["record", "--idle", "--threads", "--format", "raw", "-r", "50"]
            command = [str(py_spy), *record, "-o", str(profile), "--", *command]
        self.log = open(s.data_dir / f"{name}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{s.ports.stream}"

    @property
    def pid(self) -> int:
        """The processor's own pid (py-spy's child when profiling)."""
        if not self.profiled:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = children.read_text().split() if children.exists() else []
        return int(found[0]) if found else self.process.pid

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"processor exited ({self.process.returncode}); see {self.log.name}"
                )
            try:
                if self._get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("processor not ready")

    def died(self) -> SystemExit:
        self.log.flush()
        tail = (self.settings.data_dir / f"{self.name}.log").read_text(errors="replace")[-3000:]
        return SystemExit(f"processor exited ({self.process.returncode}):\n{tail}")

    def metric(self, name: str) -> float:
        try:
            _, body = self._get("/metrics")
        except OSError:
            if self.process.poll() is not None:
                raise self.died() from None
            raise
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split(" ")[1])
        return 0.0

    def stages(self) -> dict[str, float]:
        """Mean seconds per writer stage (from the processor's histogram), in ms."""
        _, body = self._get("/metrics")
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for line in body.decode().splitlines():
            for suffix, target in (("_sum{", sums), ("_count{", counts)):
                if line.startswith("byoc_stream_write_stage_seconds" + suffix):
                    name = line.split('stage="')[1].split('"')[0]
                    target[name] = float(line.rsplit(" ", 1)[1])
        return {k: round(1000 * sums[k] / counts[k], 1) for k in sums if counts.get(k)}

    def stop(self) -> None:
        # Under py-spy, stop the profiled child so py-spy writes its profile and exits.
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if self.profiled and children.exists() else []
        for pid in pids:
            os.kill(int(pid), signal.SIGTERM)
        if not pids:
            self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# ------------------------------------------------------------------------ workload


def make_producer(s: Settings) -> Producer:
    return Producer(
        clients.producer_config(
            s,
            **{
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 200_000,
            },
        )
    )


def record(environment: str, customer: int, serial: int, size: int, now_ms: int) -> EventBatch:
    events = [
        UsageEvent(
            customerId=f"cust-{customer}",
            eventName="tokens.used" if i % 3 else "api.call",
            idempotencyKey=f"{customer}-{serial}-{i}",
            timestamp=now_ms - (i % 50),
            resourceId=f"ws-{customer % 4}",
            dimensions={"model": ("gpt-4", "claude", "llama")[i % 3], "tokens": 100 + i},
        )
        for i in range(size)
    ]
    return EventBatch(SCHEMA_VERSION, environment, now_ms, events)


def throughput(base: Settings, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    s = phase_settings(base, data_dir, "throughput")
    environment = f"bench-{uuid.uuid4().hex[:6]}"
    producer = make_producer(s)
    records = args.events // args.events_per_record
    total = records * args.events_per_record
    say(f"throughput: pre-loading {total} events in {records} records ...")
    start_ms = int(time.time() * 1000) - 60_000
    t0 = time.monotonic()
    end_offsets: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            end_offsets[msg.partition()] = max(
                end_offsets.get(msg.partition(), 0), msg.offset() + 1
            )

    for r in range(records):
        # Event time advances as if the load had arrived at --rate events/s.
        now_ms = start_ms + (r * args.events_per_record * 1000) // max(args.rate, 1)
        batch = record(environment, r % args.customers, r, args.events_per_record, now_ms)
        while True:
            try:
                producer.produce(
                    s.kafka.events_topic,
                    key=record_key(environment, f"cust-{r % args.customers}"),
                    value=encode_batch(batch),
                    timestamp=now_ms,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0
    say(f"  pre-loaded in {time.monotonic() - t0:.1f}s; starting {args.instances} processor(s)")
    procs = []
    for i in range(args.instances):
        si = s.model_copy(deep=True)
        if i:
            from tests.stack_fixtures import free_port

            si.ports.stream = free_port()
        profile = args.profile_dir / f"throughput-{i}.txt" if args.profile_dir else None
        procs.append(Processor(si, profile, name=f"stream-{i}"))
    if args.autogroup_nice is not None:
        raise_priority([p.process.pid for p in procs], args.autogroup_nice)
    try:
        started = time.monotonic()
        procs[0].wait_ready()
        ready = time.monotonic()
        meter = CpuMeter({**{p.name: p.pid for p in procs}, **args.stack_pids})
        meter.start()
        last_report = ready
        while True:
            done = checkpointed(s)
            if all(done.get(p, 0) >= end for p, end in end_offsets.items()):
                break
            for p in procs:
                if p.process.poll() is not None:
                    raise p.died()
            if time.monotonic() - last_report > 5:
                say(f"  checkpointed offsets {done} of {end_offsets}")
                last_report = time.monotonic()
            time.sleep(0.05)
        finished = time.monotonic()
        cpu = meter.stop()
        for p in procs[1:]:
            p.wait_ready(5)  # it did join (and took partitions) during the run
    finally:
        for p in procs:
            p.stop()
    ch = clients.clickhouse(s)
    stored = ch.query(
        f"SELECT count() FROM {s.clickhouse.database}.usage_events "
        "WHERE environment = {e:String}",
        parameters={"e": environment},
    ).result_rows[0][0]
    if stored != total:
        raise SystemExit(f"throughput phase: {stored} rows in usage_events, expected {total}")
    seconds = finished - ready
    result = {
        "events": total,
        "events_per_record": args.events_per_record,
        "seconds_after_join": round(seconds, 3),
        "seconds_including_start": round(finished - started, 3),
        "events_per_s": round(total / seconds),
        "instances": args.instances,
        "cpu_seconds": cpu,
        "events_per_processor_cpu_s": round(
            total / sum(cpu.get(p.name, 0) for p in procs) if cpu.get(procs[0].name) else 0
        ),
    }
    say(f"  throughput: {result}")
    return result


def freshness(base: Settings, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    s = phase_settings(base, data_dir, "freshness")
    environment = f"fresh-{uuid.uuid4().hex[:6]}"
    proc = Processor(s, args.profile_dir / "freshness.txt" if args.profile_dir else None)
    if args.autogroup_nice is not None:
        raise_priority([proc.process.pid], args.autogroup_nice)
    producer = make_producer(s)
    acked: dict[str, float] = {}
    visible: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    query_ms: list[float] = []

    def poll() -> None:
        ch = clients.clickhouse(s, compress=False, autogenerate_session_id=False)
        db = s.clickhouse.database
        while not stop.is_set() or len(visible) < len(acked):
            with lock:
                outstanding = [m for m in acked if m not in visible]
            if outstanding:
                q0 = time.monotonic()
                rows = ch.query(
                    f"SELECT DISTINCT customer_id FROM {db}.usage_minute "
                    "WHERE environment = %(e)s AND customer_id IN %(m)s",
                    parameters={"e": environment, "m": tuple(outstanding)},
                ).result_rows
                seen_at = time.monotonic()
                query_ms.append((seen_at - q0) * 1000)
                with lock:
                    for (customer,) in rows:
                        visible.setdefault(customer, seen_at)
            if stop.is_set() and time.monotonic() > stop_deadline[0]:
                return
            time.sleep(args.poll_ms / 1000)

    stop_deadline = [float("inf")]
    try:
        proc.wait_ready()
        meter = CpuMeter({"processor": proc.pid, "bench": os.getpid(), **args.stack_pids})
        meter.start()
        say(f"freshness: {args.rate} events/s for {args.seconds}s, markers every 20 ms")
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        tick_s = 0.01
        per_tick = args.rate * tick_s / args.events_per_record  # records per 10 ms
        debt = 0.0
        serial = 0
        marker = 0
        t_start = time.monotonic()
        next_tick = t_start
        next_marker = t_start
        sent_events = 0
        while time.monotonic() - t_start < args.seconds:
            now = time.monotonic()
            if now < next_tick:
                time.sleep(next_tick - now)
            next_tick += tick_s
            debt += per_tick
            now_ms = int(time.time() * 1000)
            while debt >= 1:
                debt -= 1
                serial += 1
                customer = serial % args.customers
                producer.produce(
                    s.kafka.events_topic,
                    key=record_key(environment, f"cust-{customer}"),
                    value=encode_batch(
                        record(environment, customer, serial, args.events_per_record, now_ms)
                    ),
                    timestamp=now_ms,
                )
                sent_events += args.events_per_record
            if time.monotonic() >= next_marker:
                next_marker += 0.02
                marker += 1
                name = f"marker-{marker}"
                event = UsageEvent(
                    customerId=name, eventName="marker", idempotencyKey=name, timestamp=now_ms
                )

                def on_ack(err: Any, msg: Any, name: str = name) -> None:
                    if err is None:
                        with lock:
                            acked[name] = time.monotonic()

                producer.produce(
                    s.kafka.events_topic,
                    key=record_key(environment, name),
                    value=encode_batch(EventBatch(SCHEMA_VERSION, environment, now_ms, [event])),
                    timestamp=now_ms,
                    on_delivery=on_ack,
                )
            producer.poll(0)
        elapsed = time.monotonic() - t_start
        cpu = {name: round(v / elapsed, 2) for name, v in meter.stop().items()}
        producer.flush(60)
        stop_deadline[0] = time.monotonic() + 30
        stop.set()
        poller.join(60)
        durable = proc.metric("byoc_stream_events_durable_total")
        stages = proc.stages()
        flushes = proc.metric("byoc_stream_batch_seconds_count")
    finally:
        stop.set()
        proc.stop()
    latencies = sorted((visible[m] - acked[m]) * 1000 for m in acked if m in visible)
    if not latencies:
        raise SystemExit("no marker became visible")
    result = {
        "offered_events_per_s": round(sent_events / elapsed),
        "seconds": round(elapsed, 1),
        "markers": len(acked),
        "markers_visible": len(latencies),
        "freshness_p50_ms": round(statistics.median(latencies), 1),
        "freshness_p99_ms": round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1
        ),
        "freshness_max_ms": round(latencies[-1], 1),
        "poll_interval_ms": args.poll_ms,
        "poll_query_p50_ms": round(statistics.median(query_ms), 1) if query_ms else None,
        "events_durable_at_end": int(durable),
        "cores_used_while_producing": cpu,
        "flushes": int(flushes),
        "writer_stage_mean_ms": stages,
    }
    say(f"  freshness: {result}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="throughput phase size")
    parser.add_argument("--events-per-record", type=int, default=100)
    parser.add_argument("--instances", type=int, default=1, help="processors in the group")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=20_000, help="freshness phase events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="freshness phase length")
    parser.add_argument("--poll-ms", type=float, default=50.0)
    parser.add_argument("--stack-settings", type=Path, help="settings JSON of a running stack")
    parser.add_argument("--profile-dir", type=Path, help="record py-spy profiles (raw) here")
    parser.add_argument(
        "--autogroup-nice",
        type=int,
        help="scheduler priority (-20..19) for the stack, processor and bench (root; shared hosts)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-freshness", action="store_true")
    args = parser.parse_args(argv)
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="byoc-bench-stream-") as tmp:
        data_dir = Path(tmp)
        stack = None
        args.stack_pids = {}
        if args.stack_settings:
            base = Settings.model_validate_json(args.stack_settings.read_text())
        else:
            say("starting a local stack (KMS, S3, Kafka on S3, warehouse) on free ports ...")
            base, stack = start_own_stack(data_dir / "stack")
            args.stack_pids = {
                name: running.process.pid for name, running in stack.supervisor.running.items()
            }
        if args.autogroup_nice is not None:
            raise_priority([os.getpid(), *args.stack_pids.values()], args.autogroup_nice)
        try:
            out: dict[str, Any] = {
                "cores": os.cpu_count(),
                "load_avg_1m_at_start": os.getloadavg()[0],
            }
            if not args.skip_throughput:
                out["throughput"] = throughput(base, data_dir, args)
            if not args.skip_freshness:
                out["freshness"] = freshness(base, data_dir, args)
        finally:
            if stack is not None:
                stack.supervisor.stop()
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out["events_per_s"] = out.get("throughput", {}).get("events_per_s")
    out["freshness_p50_ms"] = out.get("freshness", {}).get("freshness_p50_ms")
    out["freshness_p99_ms"] = out.get("freshness", {}).get("freshness_p99_ms")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

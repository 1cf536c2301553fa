"""SET levels: the hour's last reported level of a key, sent to the control plane as SET.

A SET report says "this customer's usage of the feature is now L"; Stigg turns it into the
difference from the level it holds for the customer's usage period. The warehouse does not
know those periods, so it cannot turn a level into a DELTA itself: the hour's last SET of each
key (the rollup's ``REPORTED_SET`` row) is sent as it is, ``updateBehavior: SET``.

The ledger ``usage_published_levels`` works as the DELTA ledger (ledger.py): revisions 0, 1, ...
per (key, hour), each the level sent under ``byoc-level:<hour>:<digest>:r<revision>``,
``pending`` before it is sent and ``sent`` after the acknowledgement (``delta`` and ``total``
both hold the level). A level already sent is not sent again; a changed one (a late SET report
of the hour) is a new revision.

A SET is absolute, so an older level must never arrive after a newer one: the level of an hour
is sent only while no LATER hour holds a SET report of the key (a retried or re-rolled older
hour would otherwise set the control plane back). Such levels are skipped and counted as
superseded. DELTA reports of a key that also gets SETs are published hourly as DELTAs, after
the hour's level: the order of the two inside one hour is not kept. A level sent after later
hours' DELTAs of its key were acknowledged (a retry, a backfill) includes them, or it would
wipe them: the value set is the level plus the DELTAs published for the later hours.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from assets.partitions import ch_time
from assets.publish.ledger import Entry, Key, Plan, idempotency_key, read_ledger
from assets.quality.reconciliation import close
from assets.rollups.compute import first_receipts

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

TABLE = "usage_published_levels"
KEY_PREFIX = "byoc-level"
# Far enough, and far enough from the end of ClickHouse's DateTime (2106) for the reads'
# 7-day margin (compute.RECEIPTS_WINDOW).
END_OF_TIME = datetime(2100, 1, 1, tzinfo=UTC)


def read_levels(client: Client, db: str, hour: datetime) -> list[Entry]:
    return read_ledger(client, db, hour, table=TABLE, behavior="SET")


def superseded(client: Client, db: str, hour: datetime, keys: list[Key]) -> set[Key]:
    """The keys among ``keys`` with a SET report first received for a later hour than ``hour``.
    A later receipt of an older report (a retry without createdAt just after the hour ended)
    belongs to the older hour's level (first_receipts): it supersedes nothing."""
    found: set[Key] = set()
    for env in sorted({k[0] for k in keys}):
        rows = client.query(
            f"SELECT DISTINCT customer_id, resource, feature FROM ({first_receipts(db)}) "
            "WHERE behavior = 'SET' AND customer_id IN {customers:Array(String)}",
            parameters={
                "env": env,
                "customers": sorted({k[1] for k in keys if k[0] == env}),
                "start": ch_time(hour + timedelta(hours=1)),
                "end": ch_time(END_OF_TIME),
            },
        ).result_rows
        found |= {(env, *r) for r in rows}
    return found & set(keys)


def later_deltas(client: Client, db: str, hour: datetime, keys: list[Key]) -> dict[Key, float]:
    """Per key among ``keys``: the DELTAs the control plane acknowledged for hours after
    ``hour`` (the DELTA ledger, usage_published)."""
    if not keys:
        return {}
    rows = client.query(
        f"SELECT environment, customer_id, resource_id, feature_id, sum(delta) FROM ("
        f"  SELECT environment, customer_id, resource_id, feature_id, delta, status "
        f"  FROM {db}.usage_published FINAL WHERE hour > {{hour:DateTime('UTC')}} "
        "   AND environment IN {envs:Array(String)} AND customer_id IN {customers:Array(String)}"
        ") WHERE status = 'sent' GROUP BY environment, customer_id, resource_id, feature_id",
        parameters={
            "hour": ch_time(hour),
            "envs": sorted({k[0] for k in keys}),
            "customers": sorted({k[1] for k in keys}),
        },
    ).result_rows
    wanted = set(keys)
    return {key: float(r[4]) for r in rows if (key := (r[0], r[1], r[2], r[3])) in wanted}


@dataclass
class LevelPlan(Plan):
    superseded: int = 0  # keys whose level a later hour's SET replaces: not sent
    # Pending revisions never to be sent (a newer level of the hour, or a later hour's SET,
    # replaces them): recorded as ``replaced`` so that no retry waits for them.
    replaced: list[Entry] = field(default_factory=list)


def plan_levels(
    hour: datetime, targets: dict[Key, float], ledger: list[Entry], later: set[Key]
) -> LevelPlan:
    """What to send so that the control plane holds each key's level of the hour (pure)."""
    by_key: dict[Key, list[Entry]] = defaultdict(list)
    for entry in ledger:
        by_key[entry.key].append(entry)
    resend: list[Entry] = []
    new: list[Entry] = []
    replaced: list[Entry] = []
    unchanged = skipped = 0
    for key in sorted(set(targets) | set(by_key)):
        entries = sorted(by_key.get(key, []), key=lambda e: e.revision)
        pending = [e for e in entries if e.status == "pending"]
        last = entries[-1] if entries else None
        if key in later or key not in targets:
            skipped += key in targets
            replaced += pending
            continue
        if last is not None and close(last.delta, targets[key]):
            if last.status == "sent":
                unchanged += 1
            else:
                resend.append(last)  # its key again: counted once if it did arrive
            replaced += [e for e in pending if e is not last]
            continue
        replaced += pending
        revision = last.revision + 1 if last is not None else 0
        new.append(
            Entry(
                *key,
                hour=hour,
                revision=revision,
                delta=targets[key],
                total=targets[key],
                idempotency_key=idempotency_key(key, hour, revision, KEY_PREFIX),
                status="pending",
                behavior="SET",
            )
        )
    return LevelPlan(
        resend=resend, new=new, unchanged=unchanged, superseded=skipped, replaced=replaced
    )

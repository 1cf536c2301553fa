"""Credit consumption under faults (invariant 5): application threads spend one customer's
grant through the official SDK (with retries) while components are killed, then an exact
reconciliation replays every idempotency key on the healed stack.

Why the replay is exact: a consumption is idempotent per key (a replay answers the original
consumption and changes nothing), so after replaying every key ever sent, each key is either
applied once (answered 200) or refused (insufficient credits), and the customer's usage must
equal the sum of the applied keys' amounts: a key applied twice, a lost acknowledged
consumption, or an overdraft each breaks that equality or the bound.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import httpx
from stigg._client import Stigg
from stigg._exceptions import APIStatusError, BadRequestError

from tests.faults.workload import SDK_MAX_RETRIES, SDK_TIMEOUT_S

CUSTOMER = "customer-globex"  # seeded, without grants: the test's grant is its only credit
CURRENCY = "credits"
GRANT = 5000


@dataclass
class CreditLedger:
    sent: dict[str, int] = field(default_factory=dict)  # idempotency key -> amount
    acked: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # insufficient credits (a clean 4xx)
    failed: list[str] = field(default_factory=list)  # other errors after the SDK's retries
    lock: threading.Lock = field(default_factory=threading.Lock)


def sdk(base_url: str, api_key: str) -> Stigg:
    return Stigg(
        api_key=api_key,
        base_url=base_url,
        max_retries=SDK_MAX_RETRIES,
        timeout=httpx.Timeout(SDK_TIMEOUT_S, connect=3.0),
    )


def grant_credits(base_url: str, api_key: str) -> str:
    client = sdk(base_url, api_key)
    try:
        return client.v1.credits.grants.create(
            amount=GRANT,
            currency_id=CURRENCY,
            customer_id=CUSTOMER,
            display_name="fault test credits",
            grant_type="PAID",
        ).data.id
    finally:
        client.close()


class CreditSpender(threading.Thread):
    def __init__(
        self,
        index: int,
        seed: int,
        base_url: str,
        api_key: str,
        ledger: CreditLedger,
        stop: threading.Event,
        pace_s: float = 0.1,
    ) -> None:
        super().__init__(name=f"credits-{index}", daemon=True)
        self.index = index
        self.seed = seed
        self.rng = random.Random(f"{seed}/credits/{index}")
        self.client = sdk(base_url, api_key)
        self.ledger = ledger
        self.stop_event = stop
        self.pace_s = pace_s
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                key = f"s{self.seed}-credit-{self.index}-{n}"
                amount = self.rng.randint(5, 25)
                with self.ledger.lock:
                    self.ledger.sent[key] = amount
                try:
                    self.client.v1.credits.consumption.consume(
                        amount=amount,
                        currency_id=CURRENCY,
                        customer_id=CUSTOMER,
                        idempotency_key=key,
                    )
                except BadRequestError as exc:
                    with self.ledger.lock:
                        if "INSUFFICIENT_CREDITS" in str(exc.body):
                            self.ledger.refused.add(key)
                        else:
                            self.ledger.failed.append(f"{key}: {exc}")
                except APIStatusError as exc:
                    with self.ledger.lock:
                        self.ledger.failed.append(f"{key}: {exc.status_code} {exc}")
                except Exception as exc:  # connection errors after the retries
                    with self.ledger.lock:
                        self.ledger.failed.append(f"{key}: {exc!r}")
                else:
                    with self.ledger.lock:
                        self.ledger.acked.add(key)
                self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.pace_s)
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()


@dataclass
class CreditFigures:
    sent: int
    acked: int
    refused_during_run: int
    applied_after_replay: int
    applied_amount: int
    usage: float
    granted: int
    acked_then_refused: list[str]


def reconcile_credits(base_url: str, api_key: str, ledger: CreditLedger) -> CreditFigures:
    """Replay every key once on the healed stack and compare with the customer's usage."""
    client = sdk(base_url, api_key)
    applied: dict[str, int] = {}
    acked_then_refused = []
    try:
        for key, amount in sorted(ledger.sent.items()):
            try:
                client.v1.credits.consumption.consume(
                    amount=amount, currency_id=CURRENCY, customer_id=CUSTOMER, idempotency_key=key
                )
            except BadRequestError as exc:
                assert "INSUFFICIENT_CREDITS" in str(exc.body), exc
                if key in ledger.acked:
                    acked_then_refused.append(key)
                continue
            applied[key] = amount
        usage = client.v1.customers.check_entitlement(CUSTOMER, currency_id=CURRENCY).data
    finally:
        client.close()
    return CreditFigures(
        sent=len(ledger.sent),
        acked=len(ledger.acked),
        refused_during_run=len(ledger.refused),
        applied_after_replay=len(applied),
        applied_amount=sum(applied.values()),
        usage=float(usage.current_usage or 0.0),
        granted=int(usage.usage_limit or 0),
        acked_then_refused=acked_then_refused,
    )

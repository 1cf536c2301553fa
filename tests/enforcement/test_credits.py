"""Credits end to end through the official SDKs: grants (REST and synced from the control
plane), consumption, reservations through the reserving check, release, the ledger listing,
and the credit denial reasons on both REST and gRPC."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from stigg._client import Stigg as RestStigg
from stigg._exceptions import BadRequestError, ConflictError, NotFoundError
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.catalog import Budget, Change, Customer, Subscription
from tests.enforcement.harness import ControlPlaneProcess, Runtime
from tests.enforcement.test_sidecar_checks import call
from tests.enforcement.test_usage_reporting import new_customer

R = pb.AccessDeniedReason


def rest(runtime: Runtime, key: str | None = None) -> RestStigg:
    return RestStigg(base_url=runtime.api_url, api_key=key or runtime.api_key, max_retries=0)


def grant(client: RestStigg, customer: str, amount: float, **kwargs: object) -> str:
    resp = client.v1.credits.grants.create(
        amount=amount,
        currency_id="credits",
        customer_id=customer,
        display_name=kwargs.pop("display_name", "pack"),  # type: ignore[arg-type]
        grant_type=kwargs.pop("grant_type", "PAID"),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    return resp.data.id


def credit_check(client: RestStigg, customer: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return client.v1.customers.check_entitlement(
        customer,
        currency_id="credits",
        **kwargs,  # type: ignore[arg-type]
    ).data


def test_grant_from_the_control_plane_reaches_the_ledger(runtime: Runtime) -> None:
    v2 = call(
        runtime,
        lambda s: s.get_entitlement_v2(
            pb.GetEntitlementV2Request(customer_id="c-pro", currency_id="credits")
        ),
    )
    assert v2.entitlement.has_access is True
    assert v2.entitlement.credit.usage_limit == 100
    assert v2.entitlement.credit.remaining == 100
    assert v2.entitlement.credit.currency.currency_id == "credits"
    data = credit_check(rest(runtime), "c-pro")
    assert data.type == "CREDIT" and data.is_granted is True
    assert data.usage_limit == 100
    grants = list(rest(runtime).v1.credits.grants.list(customer_id="c-pro"))
    assert [g.id for g in grants] == ["g-pro"]


def test_grant_consume_reserve_release_and_ledger(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    client = rest(runtime)
    customer = new_customer(control_plane, runtime)
    promo = grant(
        client,
        customer,
        50,
        grant_type="PROMOTIONAL",
        priority=10,
        metadata={"campaign": "launch"},
        cost={"amount": 0, "currency": "usd"},
    )
    paid = grant(client, customer, 100)
    listed = {g.id: g for g in client.v1.credits.grants.list(customer_id=customer)}
    assert set(listed) == {promo, paid}
    assert listed[promo].metadata == {"campaign": "launch"}
    assert listed[promo].status == "ACTIVE"
    assert credit_check(client, customer).usage_limit == 150

    consumed = client.v1.credits.consumption.consume(
        amount=30, currency_id="credits", customer_id=customer, idempotency_key="k1"
    )
    assert consumed.data.amount == 30
    assert consumed.data.credit is not None and consumed.data.credit.current_usage == 30
    again = client.v1.credits.consumption.consume(
        amount=30, currency_id="credits", customer_id=customer, idempotency_key="k1"
    )
    assert again.data.credit is not None and again.data.credit.current_usage == 30  # idempotent
    by_grant = {
        g.id: g.consumed_amount for g in client.v1.credits.grants.list(customer_id=customer)
    }
    assert by_grant == {promo: 30, paid: 0}  # promotional, priority 10, drawn first

    held = credit_check(
        client, customer, reserve_amount=100, reservation_id="r1", reservation_ttl_seconds=600
    )
    assert held.is_granted is True
    assert held.reservation is not None and held.reservation.amount == 100
    assert held.reservation.status == "ACTIVE"
    assert held.current_usage == 130 and held.reserved == 100
    refused = credit_check(client, customer, reserve_amount=50, reservation_id="r2")
    assert refused.is_granted is False
    assert refused.access_denied_reason == "InsufficientCredits"
    assert refused.reservation is None

    released = client.v1.credits.reservations.release(
        "r1", consumed_amount=60, currency_id="credits", customer_id=customer
    )
    assert released.data.reservation.status == "RELEASED"
    assert released.data.reservation.consumed_amount == 60
    assert released.data.credit is not None and released.data.credit.current_usage == 90
    with pytest.raises(ConflictError):
        client.v1.credits.reservations.release(
            "r1", consumed_amount=1, currency_id="credits", customer_id=customer
        )
    with pytest.raises(BadRequestError) as refused_err:
        client.v1.credits.consumption.consume(
            amount=61, currency_id="credits", customer_id=customer, idempotency_key="k2"
        )
    assert refused_err.value.body["error"]["code"] == "INSUFFICIENT_CREDITS"  # type: ignore[index]
    assert credit_check(client, customer).current_usage == 90

    events = list(client.v1.credits.list_ledger(customer_id=customer, limit=2))
    types = [e.event_type for e in events]
    assert types.count("CREDITS_GRANTED") == 2
    assert "CREDITS_CONSUMED" in types
    assert "CREDITS_RESERVED" in types
    assert "CREDITS_RESERVATION_RELEASED" in types
    assert sum(e.amount for e in events) == pytest.approx(150 - 90)
    only = list(client.v1.credits.list_ledger(customer_id=customer, event_type="CREDITS_GRANTED"))
    assert {e.credit_grant_id for e in only} == {promo, paid}


def test_credit_denial_reasons(control_plane: ControlPlaneProcess, runtime: Runtime) -> None:
    client = rest(runtime)
    none = new_customer(control_plane, runtime)
    assert credit_check(client, none).access_denied_reason == "EntitlementNotFound"
    revoked = new_customer(control_plane, runtime)
    grant_id = grant(client, revoked, 10)
    voided = client.v1.credits.grants.void(grant_id)
    assert voided.data.status == "VOIDED"
    assert credit_check(client, revoked).access_denied_reason == "Revoked"
    assert credit_check(client, "nobody").access_denied_reason == "CustomerNotFound"
    v2 = call(
        runtime,
        lambda s: s.get_entitlement_v2(
            pb.GetEntitlementV2Request(customer_id=revoked, currency_id="credits")
        ),
    )
    assert v2.entitlement.access_denied_reason == R.ACCESS_DENIED_REASON_REVOKED


def test_credit_priced_feature_needs_credits(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    customer = new_customer(control_plane, runtime, plan="plan-pro")  # f-images: 5 credits
    grant(rest(runtime), customer, 10)
    ok = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id=customer,
                feature_id="f-images",
                options=pb.MeteredEntitlementOptions(requested_usage=2),
            )
        ),
    )
    assert ok.has_access is True
    short = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id=customer,
                feature_id="f-images",
                options=pb.MeteredEntitlementOptions(requested_usage=3),
            )
        ),
    )
    assert short.has_access is False
    assert short.access_denied_reason == R.ACCESS_DENIED_REASON_INSUFFICIENT_CREDITS


def test_currency_budget(control_plane: ControlPlaneProcess, runtime: Runtime) -> None:
    client = rest(runtime)
    customer = new_customer(control_plane, runtime)
    with control_plane.client() as cp:
        cp.put_entity(
            "development",
            Budget(
                id=f"b-{customer}",
                customerId=customer,
                currencyId="credits",
                limit=50,
                period="DAY",
            ),
        )
    runtime.sync_now()
    grant(client, customer, 100)
    client.v1.credits.consumption.consume(
        amount=50, currency_id="credits", customer_id=customer, idempotency_key="b1"
    )
    data = credit_check(client, customer, requested_usage=1)
    assert data.is_granted is False
    assert data.access_denied_reason == "BudgetExceeded"


def test_consumption_async_reports_refusals(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    client = rest(runtime)
    customer = new_customer(control_plane, runtime)
    grant(client, customer, 10)
    with runtime.http() as http:
        resp = http.post(
            "/api/v1/credits/consumption/async",
            json={
                "consumptions": [
                    {
                        "amount": 4,
                        "currencyId": "credits",
                        "customerId": customer,
                        "idempotencyKey": "a1",
                    },
                    {
                        "amount": 4,
                        "currencyId": "credits",
                        "customerId": customer,
                        "idempotencyKey": "a2",
                    },
                    {
                        "amount": 4,
                        "currencyId": "credits",
                        "customerId": customer,
                        "idempotencyKey": "a3",
                    },
                ]
            },
        )
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert data["consumed"] == 2
    assert [r["code"] for r in data["refused"]] == ["INSUFFICIENT_CREDITS"]
    assert credit_check(client, customer).current_usage == 8
    # An unknown customer in one item: 404 naming that item, and none of the batch applied.
    with runtime.http() as http:
        unknown = http.post(
            "/api/v1/credits/consumption/async",
            json={
                "consumptions": [
                    {"amount": 1, "currencyId": "credits", "customerId": c, "idempotencyKey": k}
                    for c, k in [(customer, "b1"), ("nobody-at-all", "b2")]
                ]
            },
        )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"].startswith("consumptions[1]: customer")
    assert credit_check(client, customer).current_usage == 8


def test_credits_are_scoped_to_the_key_environment(runtime: Runtime) -> None:
    staging = rest(runtime, runtime.key_for("staging"))
    assert list(staging.v1.credits.grants.list(customer_id="c-pro")) == []
    assert list(staging.v1.credits.list_ledger(customer_id="c-pro")) == []
    with pytest.raises(NotFoundError):
        staging.v1.credits.consumption.consume(
            amount=1, currency_id="credits", customer_id="c-pro", idempotency_key="x"
        )
    with pytest.raises(NotFoundError):
        staging.v1.credits.grants.void("g-pro")
    assert credit_check(rest(runtime), "c-pro").usage_limit == 100


def test_fractional_balances_answer_whole_credit_units(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    # The cached balance after a spend is usage limit minus available, in floats: it answered
    # 0.10001999999985856 for 0.10002 (credits are whole 0.00001 units).
    client = rest(runtime)
    customer = new_customer(control_plane, runtime)
    grant(client, customer, 1000.1)
    usages = []
    for index, amount in enumerate([0.1, 0.00002, 0.00001, 0.3]):
        consumed = client.v1.credits.consumption.consume(
            amount=amount, currency_id="credits", customer_id=customer, idempotency_key=f"f{index}"
        )
        assert consumed.data.credit is not None
        usages.append(consumed.data.credit.current_usage)
        usages.append(credit_check(client, customer).current_usage)
    assert usages == [0.1, 0.1, 0.10002, 0.10002, 0.10003, 0.10003, 0.40003, 0.40003]


def test_bad_credit_requests_are_4xx(runtime: Runtime) -> None:
    with runtime.http() as http:
        missing = http.post("/api/v1/credits/consumption", json={"amount": 1})
        assert missing.status_code == 400
        assert "currencyId" in missing.json()["error"]["message"]
        negative = http.post(
            "/api/v1/credits/consumption",
            json={
                "amount": -1,
                "currencyId": "credits",
                "customerId": "c-pro",
                "idempotencyKey": "neg",
            },
        )
        assert negative.status_code == 400 and "amount" in negative.json()["error"]["message"]
        not_json = http.post(
            "/api/v1/credits/grants", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400
        # Invalid UTF-8 and absurd nesting surface as Python errors, not msgspec's: still 400,
        # not retryable (they were a 500 the SDK retried).
        for path, body in [
            ("/api/v1/credits/consumption", b'{"amount":1,"currencyId":"\xff"}'),
            ("/api/v1/credits/consumption/async", b'{"consumptions":["\xfe"]}'),
            ("/api/v1/credits/grants", b"[" * 100_000 + b"]" * 100_000),
            ("/api/v1/credits/reservations/r-1/release", b"[" * 100_000 + b"]" * 100_000),
        ]:
            answer = http.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (path, answer.text)
            assert "not valid JSON" in answer.json()["error"]["message"]
            assert answer.headers["x-should-retry"] == "false"
        # A HEAD of a reserving check holds nothing (HEAD runs the GET route).
        check = "/api/v1/customers/c-pro/entitlements/check?currencyId=credits"
        before = http.get(check).json()["data"]
        assert before["usageLimit"] - before["currentUsage"] - before["reserved"] >= 7
        head = http.head(f"{check}&reserveAmount=7&reservationId=head-1")
        assert head.status_code == 400
        assert http.get(check).json()["data"]["reserved"] == before["reserved"]
        assert http.head(check).is_success
        unknown_res = http.post(
            "/api/v1/credits/reservations/none/release",
            json={"consumedAmount": 0, "currencyId": "credits", "customerId": "c-pro"},
        )
        assert unknown_res.status_code == 404


def test_concurrent_rest_consumers_never_overdraw(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    customer = new_customer(control_plane, runtime)
    grant(rest(runtime), customer, 100)
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(
            base_url=runtime.api_url, headers={"X-API-KEY": runtime.api_key}, timeout=60
        ) as http:
            while True:
                resp = http.post(
                    "/api/v1/credits/consumption",
                    json={
                        "amount": 1,
                        "currencyId": "credits",
                        "customerId": customer,
                        "idempotencyKey": uuid.uuid4().hex,
                    },
                )
                with lock:
                    (granted if resp.status_code == 200 else refused).append(resp.status_code)
                if resp.status_code != 200:
                    assert resp.json()["error"]["code"] == "INSUFFICIENT_CREDITS"
                    return

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(granted) == 100
    assert len(refused) == 64
    assert credit_check(rest(runtime), customer).current_usage == 100
    runtime.component.credits.ledger.check_invariants()


def test_entitlements_state_v2_lists_features_and_credits(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    customer = new_customer(control_plane, runtime)
    grant(rest(runtime), customer, 25)
    state = call(
        runtime,
        lambda s: s.get_entitlements_state_v2(
            pb.GetEntitlementsStateV2Request(customer_id=customer)
        ),
    )
    assert state.access_denied_reason is None
    credits = [e.credit for e in state.entitlements if e.credit.currency.currency_id]
    assert [(c.currency.currency_id, c.usage_limit, c.remaining) for c in credits] == [
        ("credits", 25, 25)
    ]
    features = {e.metered.feature.id for e in state.entitlements if e.metered.feature}
    assert {"f-calls", "f-tokens", "f-storage"} <= features
    listed = rest(runtime).v1.customers.retrieve_entitlements(customer).data.entitlements
    assert any(e.type == "CREDIT" and e.usage_limit == 25 for e in listed)


def test_a_synced_grant_this_runtime_cannot_read_does_not_stall_the_feed(
    control_plane: ControlPlaneProcess, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """The sync hands each grant change to the ledger before it moves the cursor; one that
    raised would be replayed, and raise, on every later sync, so no change after it arrived."""
    customer = new_customer(control_plane, runtime)
    credits = runtime.component.credits

    def change(seq: int, grant_id: str, data: dict) -> Change:
        return Change(
            seq=seq, environment="development", kind="grant", op="upsert", id=grant_id, data=data
        )

    unreadable = change(
        1,
        f"g-unreadable-{customer}",
        {"customerId": customer, "currencyId": "credits", "amount": "a lot"},
    )
    credits.apply_grant_change("development", unreadable)
    assert f"grant g-unreadable-{customer} from the control plane is not a valid grant" in (
        caplog.text
    )
    readable = change(
        2,
        f"g-readable-{customer}",
        {
            "id": f"g-readable-{customer}",
            "customerId": customer,
            "currencyId": "credits",
            "amount": 7,
            "effectiveAt": "2026-01-01T00:00:00Z",
            "createdAt": "2026-01-01T00:00:00Z",
        },
    )
    credits.apply_grant_change("development", readable)
    grants = list(rest(runtime).v1.credits.grants.list(customer_id=customer))
    assert [g.id for g in grants] == [f"g-readable-{customer}"]


def _customer_with_resources(
    control_plane: ControlPlaneProcess, runtime: Runtime, resources: list[str]
) -> str:
    customer = f"cu-{uuid.uuid4().hex[:8]}"
    with control_plane.client() as cp:
        cp.put_entity("development", Customer(id=customer, name=customer, resourceIds=resources))
        for resource in resources:
            cp.put_entity(
                "development",
                Subscription(
                    id=f"s-{customer}-{resource}",
                    customerId=customer,
                    planId="plan-basic",
                    resourceId=resource,
                    startDate="2025-01-01T00:00:00Z",
                ),
            )
    runtime.sync_now()
    return customer


def _listed_credits(runtime: Runtime, customer: str, resource: str | None) -> list[tuple]:
    params = {"resourceId": resource} if resource else {}
    listing = httpx.get(
        f"{runtime.api_url}/api/v1/customers/{customer}/entitlements",
        params=params,
        headers={"X-API-KEY": runtime.api_key},
    )
    assert listing.status_code == 200, listing.text
    return [
        (e["currency"]["currencyId"], e["isGranted"], e["usageLimit"])
        for e in listing.json()["data"]["entitlements"]
        if e["type"] == "CREDIT"
    ]


def test_the_entitlements_of_a_resource_list_its_own_wallets(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    """The listing took its currencies from the customer-level wallets: a resource's wallet
    was missing, or another resource listed a wallet it does not have."""
    client = rest(runtime)
    customer = _customer_with_resources(control_plane, runtime, ["r1", "r2"])
    grant(client, customer, 100, resource_id="r1")
    assert _listed_credits(runtime, customer, "r1") == [("credits", True, 100)]
    assert _listed_credits(runtime, customer, "r2") == []
    grant(client, customer, 7)  # a customer-level wallet too
    assert _listed_credits(runtime, customer, "r1") == [("credits", True, 100)]
    assert _listed_credits(runtime, customer, "r2") == []


def test_a_release_without_resource_answers_the_reservation_s_wallet(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    client = rest(runtime)
    customer = _customer_with_resources(control_plane, runtime, ["team-a"])
    grant(client, customer, 500, resource_id="team-a")
    grant(client, customer, 9)  # the customer-level wallet the answer used to describe
    held = credit_check(
        client, customer, resource_id="team-a", reserve_amount=40, reservation_id=f"h-{customer}"
    )
    assert held.is_granted is True

    released = httpx.post(
        f"{runtime.api_url}/api/v1/credits/reservations/h-{customer}/release",
        json={"consumedAmount": 10, "currencyId": "credits", "customerId": customer},
        headers={"X-API-KEY": runtime.api_key},
    )

    assert released.status_code == 200, released.text
    credit = released.json()["data"]["credit"]
    assert (credit["usageLimit"], credit["currentUsage"]) == (500, 10)
    after = credit_check(client, customer, resource_id="team-a")
    assert (after.usage_limit, after.current_usage) == (500, 10)


def test_a_hold_on_a_grant_that_expires_is_reported_apart(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    """Credits held on a grant that expired during the hold are no longer in currentUsage
    (nor in the limit) but can still be released: Stigg reports them as
    reservedOnExpiredGrants, which the checks never sent."""
    client = rest(runtime)
    customer = new_customer(control_plane, runtime)
    expire_at = datetime.now(UTC) + timedelta(seconds=3)
    grant(client, customer, 10, priority=1, expire_at=expire_at.isoformat())
    grant(client, customer, 100)
    held = credit_check(client, customer, reserve_amount=8, reservation_id=f"x-{customer}")
    assert held.is_granted is True and held.reserved == 8
    assert held.reserved_on_expired_grants is None

    deadline = time.monotonic() + 30
    after = credit_check(client, customer)
    while after.usage_limit != 100 and time.monotonic() < deadline:
        time.sleep(0.5)  # the expiry sweep runs in the background
        after = credit_check(client, customer)

    assert (after.usage_limit, after.current_usage, after.reserved) == (100, 0, 0)
    assert after.reserved_on_expired_grants == 8


def test_a_customer_without_subscription_still_lists_its_credits(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    """A credit check needs no subscription (it granted), but the listings answered
    NoActiveSubscription with no credit entries: the wallet was invisible there."""
    customer = f"cu-{uuid.uuid4().hex[:8]}"
    with control_plane.client() as cp:
        cp.put_entity("development", Customer(id=customer, name=customer))
    runtime.sync_now()
    grant(rest(runtime), customer, 12)
    assert credit_check(rest(runtime), customer).is_granted
    listing = httpx.get(
        f"{runtime.api_url}/api/v1/customers/{customer}/entitlements",
        headers={"X-API-KEY": runtime.api_key},
    ).json()["data"]
    assert listing["accessDeniedReason"] == "NoActiveSubscription"
    assert _listed_credits(runtime, customer, None) == [("credits", True, 12)]
    state = call(
        runtime,
        lambda s: s.get_entitlements_state_v2(
            pb.GetEntitlementsStateV2Request(customer_id=customer)
        ),
    )
    assert (
        state.access_denied_reason
        == pb.AccessDeniedReason.ACCESS_DENIED_REASON_NO_ACTIVE_SUBSCRIPTION
    )
    assert [(e.credit.currency.currency_id, e.credit.usage_limit) for e in state.entitlements] == [
        ("credits", 12)
    ]

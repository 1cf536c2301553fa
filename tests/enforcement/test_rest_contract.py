"""The enforcement REST routes accept exactly what their OpenAPI document declares valid
(finding F7 of the reliability run): empty ids are refused, a 405/OPTIONS lists every method of
the path, the check's parameter rules are in the document, cursors out of range are 400s."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcement import rest_params as p
from enforcement.openapi import CHECK_QUERY
from tests.enforcement.harness import ControlPlaneProcess, Runtime
from tests.enforcement.test_usage_reporting import new_customer

CHECK = "/api/v1/customers/c-pro/entitlements/check"


def error_of(resp: httpx.Response) -> str:
    return resp.json()["error"]["message"]


# --- empty ids (below the documented minLength) -------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers/c-pro/entitlements?resourceId=",
        "/api/v1/credits/ledger?customerId=c-pro&resourceId=",
        "/api/v1/credits/grants?customerId=c-pro&resourceId=",
        f"{CHECK}?featureId=f-sso&resourceId=",
        f"{CHECK}?featureId=",
    ],
)
def test_an_empty_query_id_is_a_400_naming_it(runtime: Runtime, path: str) -> None:
    with runtime.http() as http:
        resp = http.get(path)
    assert resp.status_code == 400
    name = path.rsplit("&", 1)[-1].rsplit("?", 1)[-1].rstrip("=")
    assert f"{name} must not be empty" in error_of(resp)


def test_an_empty_optional_body_id_is_a_400_naming_it(runtime: Runtime) -> None:
    body = {"amount": 1, "currencyId": "credits", "customerId": "c-pro", "idempotencyKey": "k"}
    with runtime.http() as http:
        resp = http.post("/api/v1/credits/consumption", json={**body, "resourceId": ""})
        assert resp.status_code == 400 and "resourceId must not be empty" in error_of(resp)
        # null is "not given" (the SDK sends it for an explicit None), as the document says.
        ok = http.post("/api/v1/credits/consumption", json={**body, "resourceId": None})
    assert ok.status_code == 200, ok.text


def test_empty_numbers_and_cursors_are_400s(runtime: Runtime) -> None:
    with runtime.http() as http:
        for path, name in [
            (f"{CHECK}?featureId=f-calls&requestedUsage=", "requestedUsage"),
            ("/api/v1/credits/ledger?customerId=c-pro&after=", "after"),
            ("/api/v1/credits/ledger?customerId=c-pro&limit=", "limit"),
            ("/api/v1/credits/ledger?customerId=c-pro&eventType=", "eventType"),
            ("/api/v1/credits/ledger?customerId=c-pro&eventType=CREDITS_GRANTED,", "eventType"),
        ]:
            resp = http.get(path)
            assert resp.status_code == 400, path
            assert name in error_of(resp), path


# --- methods ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["OPTIONS", "DELETE", "PUT"])
def test_a_405_on_grants_lists_both_its_methods(runtime: Runtime, method: str) -> None:
    with runtime.http() as http:
        resp = http.request(method, "/api/v1/credits/grants")
    assert resp.status_code == 405
    allowed = {m.strip() for m in resp.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert allowed <= {"GET", "POST", "HEAD"}


def test_grants_get_and_post_still_reach_their_handlers(runtime: Runtime) -> None:
    with runtime.http() as http:
        listed = http.get("/api/v1/credits/grants", params={"customerId": "c-pro"})
        created = http.post("/api/v1/credits/grants", json={"amount": 1})
    assert listed.status_code == 200 and isinstance(listed.json()["data"], list)
    assert created.status_code == 400 and "customerId" in error_of(created)


# --- cursors ------------------------------------------------------------------------------


def test_cursor_beyond_the_documented_18_digits_is_a_400_at_rest(runtime: Runtime) -> None:
    with runtime.http() as http:
        for name in ("after", "before"):
            for raw in ("9" * 19, "9223372036854775808", "\u00b2", "-1", "1e3"):
                resp = http.get("/api/v1/credits/ledger", params={"customerId": "c-pro", name: raw})
                assert resp.status_code == 400, (name, raw, resp.text)
                assert name in error_of(resp)
            ok = http.get("/api/v1/credits/ledger", params={"customerId": "c-pro", name: "9" * 18})
            assert ok.status_code == 200, ok.text


def test_after_and_before_together_answer_the_events_between(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    customer = new_customer(control_plane, runtime)
    ledger = "/api/v1/credits/ledger"
    with runtime.http() as http:
        for n in range(4):
            grant = {
                "amount": n + 1,
                "currencyId": "credits",
                "customerId": customer,
                "displayName": f"g{n}",
                "grantType": "PAID",
            }
            assert http.post("/api/v1/credits/grants", json=grant).status_code == 200
        ids, cursors, after = [], [], None
        for _ in range(3):  # one event per page: the cursor of each of the 3 newest
            params: dict[str, Any] = {"customerId": customer, "limit": 1}
            if after is not None:
                params["after"] = after
            page = http.get(ledger, params=params).json()
            ids.append(page["data"][0]["eventId"])
            after = page["pagination"]["next"]
            cursors.append(after)
        between = http.get(
            ledger, params={"customerId": customer, "after": cursors[0], "before": cursors[2]}
        )
        assert between.status_code == 200, between.text
        assert [e["eventId"] for e in between.json()["data"]] == [ids[1]]
        empty = http.get(
            ledger, params={"customerId": customer, "after": cursors[0], "before": cursors[0]}
        )
        assert empty.status_code == 200 and empty.json()["data"] == []


# --- amounts, times, currencies -----------------------------------------------------------


def consumption(**fields: Any) -> dict[str, Any]:
    return {
        "amount": 1,
        "currencyId": "credits",
        "customerId": "c-pro",
        "idempotencyKey": uuid.uuid4().hex,
        **fields,
    }


@pytest.mark.parametrize("amount", [0.000004, 0.0000075, 1e12 + 1, 0])
def test_amounts_outside_the_documented_bounds_are_refused_before_rounding(
    runtime: Runtime, amount: float
) -> None:
    with runtime.http() as http:
        resp = http.post("/api/v1/credits/consumption", json=consumption(amount=amount))
    assert resp.status_code == 400 and "amount must be at" in error_of(resp)


def test_the_documented_smallest_amount_is_consumed(runtime: Runtime) -> None:
    with runtime.http() as http:
        resp = http.post("/api/v1/credits/consumption", json=consumption(amount=p.MIN_AMOUNT))
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"]["amount"] == pytest.approx(0.00001)


@pytest.mark.parametrize(
    ("created_at", "status"),
    [
        ("2025-01-01T00:00:00Z", 200),
        ("2025-01-01t00:00:00.5z", 200),  # RFC 3339 allows lower-case t and z
        ("2016-12-31T23:59:60Z", 200),  # a leap second
        ("2025-01-01", 400),  # a date is not a date-time
        ("2025-01-01T00:00:00", 400),  # no offset
        ("2025-01-01T00:00:60Z", 400),  # a leap second only at 23:59:60 UTC
        ("1899-12-31T23:59:59Z", 400),  # outside the documented years
    ],
)
def test_times_are_rfc3339_as_documented(runtime: Runtime, created_at: str, status: int) -> None:
    with runtime.http() as http:
        resp = http.post("/api/v1/credits/consumption", json=consumption(createdAt=created_at))
    assert resp.status_code == status, resp.text
    if status == 400:
        assert "createdAt" in error_of(resp)


def test_consuming_an_unknown_currency_is_a_404_not_an_empty_wallet(runtime: Runtime) -> None:
    with runtime.http() as http:
        resp = http.post("/api/v1/credits/consumption", json=consumption(currencyId="gold"))
    assert resp.status_code == 404 and "currency 'gold' not found" in error_of(resp)


# --- the check's parameter rules are the document's -----------------------------------------


def test_the_served_document_carries_the_check_rules(runtime: Runtime) -> None:
    with httpx.Client(base_url=runtime.api_url) as http:
        doc = http.get("/openapi.json").json()
    params = doc["paths"]["/api/v1/customers/{id}/entitlements/check"]["get"]["parameters"]
    (query,) = [q for q in params if q["in"] == "query"]
    assert query["style"] == "form" and query["explode"] is True
    assert query["schema"] == json.loads(json.dumps(CHECK_QUERY))
    assert len(query["schema"]["oneOf"]) == 3


VALID_VALUES: dict[str, Any] = {
    "featureId": "f-calls",
    "currencyId": "credits",
    "requestedUsage": 1,
    "requestedValues": "basic,pro",
    "reserveAmount": 0.5,
    "reservationTtlSeconds": 60,
    "reservationMetadata": '{"run": "r1"}',
}
CHECK_VALIDATOR = jsonschema_rs.validator_for(CHECK_QUERY, validate_formats=True)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    present=st.sets(
        st.sampled_from(
            [*VALID_VALUES, "reservationId", "reservationExpiresAt"],
        )
    )
)
def test_a_check_is_refused_exactly_when_the_document_says_it_is_invalid(
    runtime: Runtime, present: set[str]
) -> None:
    """Every combination of well-formed parameters: 400 iff the schema refuses it (the only
    rule outside the schema, expiry relative to the clock, is kept satisfied)."""
    query: dict[str, Any] = {k: v for k, v in VALID_VALUES.items() if k in present}
    if "reservationId" in present:
        query["reservationId"] = f"r-{uuid.uuid4().hex}"
    if "reservationExpiresAt" in present:
        soon = datetime.now(UTC) + timedelta(hours=1)
        query["reservationExpiresAt"] = soon.isoformat().replace("+00:00", "Z")
    valid = CHECK_VALIDATOR.is_valid(query)
    with runtime.http() as http:
        resp = http.get(CHECK, params={k: str(v) for k, v in query.items()})
    if valid:
        assert resp.status_code == 200, (query, resp.text)
    else:
        assert resp.status_code == 400, (query, resp.text)


def test_the_clock_rule_of_reservation_expiry_is_a_400(runtime: Runtime) -> None:
    base = {"currencyId": "credits", "reserveAmount": "1", "reservationId": "r-clock"}
    with runtime.http() as http:
        for at, message in [
            (time.time() - 60, "in the future"),
            (time.time() + 86_400 + 600, "at most 24 hours ahead"),
        ]:
            stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
            resp = http.get(CHECK, params={**base, "reservationExpiresAt": stamp})
            assert resp.status_code == 400 and message in error_of(resp)

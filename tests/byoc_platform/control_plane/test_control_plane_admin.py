from __future__ import annotations

import httpx
import pytest

from byoc_platform.catalog import Entitlement, Feature, Plan, Subscription
from byoc_platform.control_plane.client import ControlPlaneClient, ControlPlaneRequestError
from tests.byoc_platform.control_plane.cp_harness import API_KEY, ControlPlaneProcess


def _url(cp: ControlPlaneProcess, env: str, kind: str, id: str) -> str:
    return f"{cp.url}/byoc/v1/environments/{env}/{kind}/{id}"


def test_upsert_and_delete_append_changes_in_order(client: ControlPlaneClient) -> None:
    env = "admin-basic"
    plan = Plan(id="plan-team", entitlements=[Entitlement(featureId="f", usageLimit=10)])
    c1 = client.put_entity(env, plan)
    assert (c1.seq, c1.kind, c1.op, c1.id) == (1, "plan", "upsert", "plan-team")
    assert client.get_entity(env, "plan", "plan-team") == plan

    updated = Plan(id="plan-team", entitlements=[Entitlement(featureId="f", usageLimit=20)])
    c2 = client.put_entity(env, updated)
    assert c2.seq == 2 and client.get_entity(env, "plan", "plan-team") == updated

    c3 = client.delete_entity(env, "plan", "plan-team")
    assert c3 is not None and (c3.seq, c3.op, c3.data) == (3, "delete", {})
    assert client.get_entity(env, "plan", "plan-team") is None

    feed = client.changes(env).changes
    assert [(c.seq, c.op) for c in feed] == [(1, "upsert"), (2, "upsert"), (3, "delete")]
    assert feed[1].data["entitlements"][0]["usageLimit"] == 20


def test_delete_of_a_missing_entity_is_404_and_appends_nothing(
    shared_cp: ControlPlaneProcess, client: ControlPlaneClient
) -> None:
    env = "admin-missing"
    client.put_entity(env, Feature(id="feature-a"))
    r = httpx.delete(_url(shared_cp, env, "feature", "nope"), headers={"X-API-KEY": API_KEY})
    assert r.status_code == 404 and "'nope' not found" in r.json()["error"]["message"]
    assert client.delete_entity(env, "feature", "nope") is None
    assert client.changes(env).cursor == 1


def test_plural_kind_in_path_is_accepted(shared_cp: ControlPlaneProcess) -> None:
    r = httpx.put(
        _url(shared_cp, "admin-plural", "features", "feature-p"),
        headers={"X-API-KEY": API_KEY},
        json={"featureType": "BOOLEAN"},  # id may be left out: the path names it
    )
    assert r.status_code == 200
    assert r.json()["change"]["kind"] == "feature" and r.json()["change"]["id"] == "feature-p"


def test_unknown_kind_is_404(shared_cp: ControlPlaneProcess) -> None:
    r = httpx.put(
        _url(shared_cp, "development", "widget", "w1"), headers={"X-API-KEY": API_KEY}, json={}
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND" and "'widget'" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("feature", {"featureType": "NUMBR"}, "$.featureType"),
        ("plan", {"entitlements": [{"featureId": "f", "usageLimt": 5}]}, "usageLimt"),
        ("subscription", {"customerId": "c", "startDate": "2025-01-01T00:00:00Z"}, "planId"),
        ("grant", {"customerId": "c", "currencyId": "x", "amount": "ten"}, "$.amount"),
        (
            "grant",
            {
                "customerId": "c",
                "currencyId": "x",
                "amount": 1,
                "effectiveAt": "yesterday",
                "createdAt": "2025-01-01T00:00:00Z",
            },
            "$.effectiveAt",
        ),
        ("feature", {"id": "other-id"}, "$.id"),
        ("feature", [1, 2], "must be an object"),
    ],
)
def test_invalid_entity_is_422_naming_the_field_and_appends_nothing(
    shared_cp: ControlPlaneProcess, kind: str, body: object, field: str
) -> None:
    env = "admin-invalid"
    r = httpx.put(_url(shared_cp, env, kind, "x1"), headers={"X-API-KEY": API_KEY}, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "UNPROCESSABLE_ENTITY"
    assert field in r.json()["error"]["message"]
    with shared_cp.client() as c:
        assert c.changes(env).changes == []


def test_body_that_is_not_json_is_400(shared_cp: ControlPlaneProcess) -> None:
    r = httpx.put(
        _url(shared_cp, "admin-invalid", "feature", "x"),
        headers={"X-API-KEY": API_KEY},
        content=b"{not json",
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_REQUEST"


def test_client_raises_request_error_with_code_and_message(client: ControlPlaneClient) -> None:
    # A catalog struct built in Python can still be refused, e.g. an unparseable date.
    bad = Subscription(id="s", customerId="c", planId="p", startDate="not a date")
    with pytest.raises(ControlPlaneRequestError) as info:
        client.put_entity("admin-client", bad)
    assert info.value.status == 422 and info.value.code == "UNPROCESSABLE_ENTITY"
    assert "startDate" in info.value.message

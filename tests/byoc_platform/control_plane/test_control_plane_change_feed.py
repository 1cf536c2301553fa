from __future__ import annotations

import httpx
import pytest

from byoc_platform.catalog import Feature
from byoc_platform.control_plane.client import ControlPlaneClient
from byoc_platform.control_plane.seed import SECTIONS
from byoc_platform.control_plane.store import MAX_PAGE, Store, Upsert
from tests.byoc_platform.control_plane.cp_harness import API_KEY, ControlPlaneProcess


def test_snapshot_from_zero_holds_the_seed_in_dependency_order(client: ControlPlaneClient) -> None:
    page = client.changes("development", after=0, limit=5000)
    seqs = [c.seq for c in page.changes]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    order = list(SECTIONS.values())
    ranks = [order.index(c.kind) for c in page.changes]
    assert ranks == sorted(ranks)  # currencies, features, plans, ... never a forward reference
    assert {c.kind for c in page.changes} == set(order)
    assert all(c.environment == "development" and c.data["id"] == c.id for c in page.changes)


def test_paging_follows_the_cursor_without_gaps_or_repeats(client: ControlPlaneClient) -> None:
    env = "paging"
    for i in range(7):
        client.put_entity(env, Feature(id=f"feature-{i}"))
    pages = []
    after = 0
    while True:
        page = client.changes(env, after=after, limit=3)
        pages.append(([c.seq for c in page.changes], page.cursor, page.hasMore))
        if not page.hasMore:
            break
        after = page.cursor
    assert pages == [([1, 2, 3], 3, True), ([4, 5, 6], 6, True), ([7], 7, False)]
    assert [c.id for c in client.iter_changes(env, after=2, limit=2)] == [
        f"feature-{i}" for i in range(2, 7)
    ]


def test_empty_page_returns_the_given_cursor(client: ControlPlaneClient) -> None:
    page = client.changes("development", after=10_000)
    assert (page.changes, page.cursor, page.hasMore) == ([], 10_000, False)
    page = client.changes("no-such-environment")
    assert (page.changes, page.cursor, page.hasMore) == ([], 0, False)


def test_limit_defaults_to_500_and_is_capped_at_5000(shared_cp: ControlPlaneProcess) -> None:
    env = "big"
    # Written straight into the database (WAL: the running server sees it at once).
    store = Store.open(shared_cp.data_dir)
    try:
        store.write_catalog({env: [Upsert("feature", Feature(id=f"f{i}")) for i in range(5003)]})
    finally:
        store.close()
    with shared_cp.client() as c:
        default = c.changes(env)
        assert len(default.changes) == 500 and default.cursor == 500 and default.hasMore
        capped = c.changes(env, after=0, limit=100_000)
        assert len(capped.changes) == MAX_PAGE == 5000 and capped.hasMore
        rest = c.changes(env, after=capped.cursor, limit=100_000)
        assert [ch.seq for ch in rest.changes] == [5001, 5002, 5003] and not rest.hasMore


@pytest.mark.parametrize(
    ("query", "field"),
    [("after=-1", "after"), ("after=abc", "after"), ("limit=0", "limit"), ("limit=x", "limit")],
)
def test_bad_paging_parameters_are_422_naming_the_parameter(
    shared_cp: ControlPlaneProcess, query: str, field: str
) -> None:
    r = httpx.get(
        f"{shared_cp.url}/byoc/v1/environments/development/changes?{query}",
        headers={"X-API-KEY": API_KEY},
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "UNPROCESSABLE_ENTITY"
    assert f"`{field}`" in r.json()["error"]["message"]

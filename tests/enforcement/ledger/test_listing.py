"""The ledger listing and the grant list: contract event types, filters, cursor pagination."""

from __future__ import annotations

import threading

import pytest

from enforcement.ledger import InvalidInput, Ledger
from enforcement.ledger.unit import Unit
from tests.enforcement.ledger.conftest import T0, postgres_ledger
from tests.enforcement.ledger.helpers import CURRENCY, CUSTOMER, ENV, at, consume, grant


def walk(ledger: Ledger, **kw: object) -> list[str]:
    """Event ids newest first, page by page via `next`."""
    seen: list[str] = []
    after = None
    while True:
        page = ledger.ledger_events(ENV, CUSTOMER, after=after, limit=3, **kw)  # type: ignore[arg-type]
        seen += [e.event_id for e in page.data]
        if page.next is None:
            return seen
        after = page.next


def populate(ledger: Ledger) -> None:
    grant(ledger, "g1", 10)
    grant(ledger, "g2", 10, currency_id="tokens")
    for n in range(5):
        consume(ledger, 1, f"k{n}", now=at(minutes=n))
    ledger.reserve(ENV, CUSTOMER, CURRENCY, 2, "r", ttl_s=600, now=at(minutes=6))
    ledger.release(ENV, "r", 1, now=at(minutes=7))
    ledger.void_grant(ENV, "g2", now=at(minutes=8))


def test_pages_cover_every_event_once_newest_first(ledger: Ledger) -> None:
    populate(ledger)
    everything = ledger.ledger_events(ENV, CUSTOMER, limit=100)
    assert [e.event_type for e in everything.data] == [
        "CREDITS_VOIDED",
        "CREDITS_RESERVATION_RELEASED",
        "CREDITS_RESERVED",
        *["CREDITS_CONSUMED"] * 5,
        "CREDITS_GRANTED",
        "CREDITS_GRANTED",
    ]
    assert everything.next is None and everything.prev is None
    assert walk(ledger) == [e.event_id for e in everything.data]


def test_prev_pages_back_to_newer_events(ledger: Ledger) -> None:
    populate(ledger)
    first = ledger.ledger_events(ENV, CUSTOMER, limit=4)
    second = ledger.ledger_events(ENV, CUSTOMER, limit=4, after=first.next)
    back = ledger.ledger_events(ENV, CUSTOMER, limit=4, before=second.prev)
    assert first.prev is None and second.prev is not None
    assert [e.event_id for e in back.data] == [e.event_id for e in first.data]
    assert back.prev is None and back.next == first.next


def test_after_and_before_together_list_the_events_between_them(ledger: Ledger) -> None:
    populate(ledger)
    ids = [e.event_id for e in ledger.ledger_events(ENV, CUSTOMER, limit=100).data]
    cursors = [e.cursor for e in ledger.ledger_events(ENV, CUSTOMER, limit=100).data]
    between = ledger.ledger_events(ENV, CUSTOMER, after=cursors[1], before=cursors[6], limit=100)
    assert [e.event_id for e in between.data] == ids[2:6]
    # Paged with the same lower bound: the same events, newest first.
    first = ledger.ledger_events(ENV, CUSTOMER, after=cursors[1], before=cursors[6], limit=3)
    rest = ledger.ledger_events(ENV, CUSTOMER, after=first.next, before=cursors[6], limit=3)
    assert [e.event_id for e in first.data + rest.data] == ids[2:6]
    assert first.prev == cursors[2]  # newer events exist (the `after` one)
    empty = ledger.ledger_events(ENV, CUSTOMER, after=cursors[3], before=cursors[2], limit=10)
    assert empty.data == [] and empty.next is None and empty.prev is None


def test_the_largest_64_bit_cursor_is_a_valid_empty_page(ledger: Ledger) -> None:
    populate(ledger)
    page = ledger.ledger_events(ENV, CUSTOMER, before="9223372036854775807")
    assert page.data == [] and page.next is None


def test_filters(ledger: Ledger) -> None:
    populate(ledger)
    tokens = ledger.ledger_events(ENV, CUSTOMER, "tokens").data
    assert [e.event_type for e in tokens] == ["CREDITS_VOIDED", "CREDITS_GRANTED"]
    held = ledger.ledger_events(ENV, reservation_id="r").data
    assert [e.event_type for e in held] == ["CREDITS_RESERVATION_RELEASED", "CREDITS_RESERVED"]
    types = ledger.ledger_events(ENV, event_types=["CREDITS_GRANTED", "CREDITS_VOIDED"]).data
    assert len(types) == 3
    assert ledger.ledger_events(ENV, "someone-else").data == []
    assert ledger.ledger_events("staging", CUSTOMER).data == []


def test_api_shape_matches_the_contract(ledger: Ledger) -> None:
    populate(ledger)
    body = ledger.ledger_events(ENV, CUSTOMER, limit=2).to_api()
    assert set(body) == {"data", "pagination"} and set(body["pagination"]) == {"next", "prev"}
    voided = body["data"][0]
    assert voided["eventType"] == "CREDITS_VOIDED" and voided["amount"] == -10.0
    assert voided["creditGrantId"] == "g2" and voided["creditCurrencyId"] == "tokens"
    assert voided["customerId"] == CUSTOMER and voided["timestamp"] == "2025-01-01T00:08:00Z"
    released = body["data"][1]
    assert released["holdReturnedAmount"] == 2.0 and released["reservationId"] == "r"


@pytest.mark.parametrize(
    "kw",
    [
        {"after": "abc"},
        {"before": "-1"},
        {"after": "9223372036854775808"},  # 2**63: beyond the 64-bit seq (was OverflowError)
        {"before": "99999999999999999999"},  # 20 digits
        {"after": "\u00b2"},  # a digit to str.isdigit, not to int()
        {"limit": 0},
        {"limit": 1001},
        {"event_types": ["CREDITS_STOLEN"]},
    ],
)
def test_bad_paging_arguments_are_refused(ledger: Ledger, kw: dict) -> None:
    with pytest.raises(InvalidInput):
        ledger.ledger_events(ENV, CUSTOMER, **kw)


def test_grant_list_pages_and_scopes_by_resource(ledger: Ledger) -> None:
    for n in range(5):
        grant(ledger, f"g{n}", n + 1)
    grant(ledger, "team", 3, resource_id="team-a")
    grant(ledger, "tok", 3, currency_id="tokens")
    first = ledger.list_grants(ENV, CUSTOMER, CURRENCY, limit=3, now=T0)
    rest = ledger.list_grants(ENV, CUSTOMER, CURRENCY, limit=3, after=first.next, now=T0)
    assert [g.id for g in first.data + rest.data] == ["g4", "g3", "g2", "g1", "g0"]
    assert rest.next is None
    assert [g.id for g in ledger.list_grants(ENV, CUSTOMER, resource_id="team-a").data] == ["team"]
    assert len(ledger.list_grants(ENV, CUSTOMER).data) == 6  # all currencies, no resource
    body = first.to_api()
    assert body["data"][0]["id"] == "g4" and body["data"][0]["status"] == "ACTIVE"
    assert body["pagination"]["next"] == first.next


def test_a_client_tailing_the_listing_misses_no_event_committed_late_on_postgres(
    pg_template: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances write to two wallets of one customer; the first holds its transaction
    open after inserting its event (a slow commit). A client that read the newest event and
    then asks for the newer ones (``before``) must still get the first one's event: its
    cursor may not be older than an event already shown."""
    first = postgres_ledger(pg_template)
    url = first.engine.url.render_as_string(hide_password=False)
    second, reader = Ledger.from_url(url), Ledger.from_url(url)
    held, go_on = threading.Event(), threading.Event()
    flush = Unit.flush

    def slow_flush(unit: Unit) -> None:
        flush(unit)
        if any(
            e["event_type"] == "CREDITS_CONSUMED" and e["currency_id"] == "USD"
            for e in unit._events
        ):
            held.set()
            go_on.wait(10)

    try:
        grant(first, "g-usd", 10, currency_id="USD")
        grant(second, "g-eur", 10, currency_id="EUR")
        monkeypatch.setattr(Unit, "flush", slow_flush)
        writers = [
            threading.Thread(
                target=consume, args=(first, 1, "k-usd"), kwargs={"currency_id": "USD"}
            ),
        ]
        writers[0].start()
        assert held.wait(10)
        writers.append(
            threading.Thread(
                target=consume, args=(second, 1, "k-eur"), kwargs={"currency_id": "EUR"}
            )
        )
        writers[1].start()
        writers[1].join(1.0)  # on the old code the second commits now, past the held one
        shown = reader.ledger_events(ENV, CUSTOMER, limit=100).data
        go_on.set()
        for writer in writers:
            writer.join(10)
        newer = reader.ledger_events(ENV, CUSTOMER, before=shown[0].cursor, limit=100).data
        everything = reader.ledger_events(ENV, CUSTOMER, limit=100).data
        seen = {e.event_id for e in shown} | {e.event_id for e in newer}
        assert [e.event_type for e in everything].count("CREDITS_CONSUMED") == 2
        assert [e for e in everything if e.event_id not in seen] == []
        first.check_invariants()
    finally:
        go_on.set()
        for instance in (first, second, reader):
            instance.close()

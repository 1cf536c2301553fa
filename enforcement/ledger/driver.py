"""The ledger's hot statements on SQLite, executed by the driver itself.

Why: a batch of consumptions runs about nine statements (BEGIN, the data version, the
idempotency keys, due reservations, five bulk writes). Through SQLAlchemy's execution layer
each costs 8-40 us of Python (execution context, result proxy, events) around 1-5 us of
SQLite's own work: about 250 us per batch, a third of a small batch's CPU (measured:
docs/benchmarks-enforcement.md, "Session 5"). The statements are still SQLAlchemy Core,
compiled once per shape; only their execution on SQLite goes to the sqlite3 connection
directly, in the same transaction. Driver errors are wrapped exactly as SQLAlchemy wraps them
(``DBAPIError.instance``), so retries (``commit.is_transient``) and callers see the same
exceptions. Other dialects execute through SQLAlchemy as before.
"""

from __future__ import annotations

import re
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, exc
from sqlalchemy.dialects import sqlite

_SQLITE = sqlite.dialect()
_POSTCOMPILE = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
T = TypeVar("T")


def sqlite_driver(conn: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection under ``conn``, or None on another database."""
    if conn.dialect.name != "sqlite":
        return None
    return conn.connection.driver_connection  # type: ignore[return-value]


def call(sql: str, params: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` (a driver call for ``sql``), wrapping driver errors as SQLAlchemy does."""
    try:
        return fn()
    except sqlite3.Error as error:
        raise exc.DBAPIError.instance(sql, params, error, sqlite3.Error) from error


def execute(raw: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    return call(sql, params, lambda: raw.execute(sql, params))


def executemany(raw: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    call(sql, rows, lambda: raw.executemany(sql, rows))


class Query:
    """A Core SELECT: on SQLite compiled once per number of values in each expanding
    parameter and run by the driver (rows are named tuples with the selected column names);
    elsewhere run by SQLAlchemy (rows are SQLAlchemy rows). Either way ``row.<column>``."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._row = namedtuple("Row", list(statement.selected_columns.keys()))  # type: ignore[misc]
        compiled = statement.compile(dialect=_SQLITE)
        self._sql = compiled.string
        self._names: list[str] = list(compiled.positiontup or [])
        self._defaults: dict[str, Any] = dict(compiled.params)
        self._expanding = tuple(sorted(set(_POSTCOMPILE.findall(self._sql))))
        self._shapes: dict[tuple[int, ...], str] = {}

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        raw = sqlite_driver(conn)
        sizes = tuple(len(params[name]) for name in self._expanding)
        if raw is None or 0 in sizes:  # (an empty IN: SQLAlchemy's own rendering)
            return list(conn.execute(self.statement, params))
        sql = self._shapes.get(sizes)
        if sql is None:
            count = dict(zip(self._expanding, sizes, strict=True))
            sql = self._shapes[sizes] = _POSTCOMPILE.sub(
                lambda m: ", ".join("?" * count[m.group(1)]), self._sql
            )
        values = {**self._defaults, **params}
        args: list[Any] = []
        for name in self._names:
            if name in self._expanding:
                args.extend(values[name])
            else:
                args.append(values[name])
        make = self._row._make
        return [make(row) for row in execute(raw, sql, args).fetchall()]

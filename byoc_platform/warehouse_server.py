"""The warehouse process: owns the chdb data directory, serves the ClickHouse HTTP interface.

chdb lets ONE process open a data directory (platform-facts.md), so the local stack runs this
one process and every other component talks to it with clickhouse-connect over HTTP, exactly
as to a ClickHouse server. It implements the part of the HTTP protocol clickhouse-connect
uses: ``GET /ping``; ``POST /`` with the SQL in the ``query`` parameter or the body;
``INSERT ... FORMAT X`` followed by data (chunked, optionally lz4/zstd/gzip encoded);
``database``, ``param_*`` and any other parameter as a setting; errors as ClickHouse sends them.

Run: ``python -m byoc_platform.warehouse_server --data-dir DIR --host 127.0.0.1 --port 8123``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

from byoc_platform import logs

log = logging.getLogger("byoc.warehouse")

# URL parameters that are part of the HTTP protocol, not ClickHouse settings.
_PROTOCOL_PARAMS = {
    "query",
    "database",
    "default_format",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "compress",
    "decompress",
    "user",
    "password",
    "quota_key",
    "buffer_size",
    "wait_end_of_query",
    "client_protocol_version",
    "enable_http_compression",
    "http_zlib_compression_level",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close",
}
_INSERT_FORMAT = re.compile(rb"^\s*INSERT\s.*?\sFORMAT\s+(\w+)[ \t]*\r?\n?", re.I | re.S)
_TRAILING_FORMAT = re.compile(r"\sFORMAT\s+(\w+)\s*;?\s*$", re.I)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class QueryError(Exception):
    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def _decode_body(data: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return data
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    raise QueryError(f"unsupported Content-Encoding {encoding!r}", 415)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _settings_clause(settings: dict[str, str]) -> str:
    return ", ".join(f"{k} = {_quote(v)}" for k, v in settings.items())


class Warehouse:
    """The chdb engine of one data directory; one short-lived connection per request."""

    def __init__(self, data_dir: Path) -> None:
        self.path = str(data_dir.resolve())
        # The first connection opens (and holds) the engine for the life of the process.
        self._engine = chdb.connect(self.path)
        self._tmp = Path(self.path) / "tmp_inserts"
        self._tmp.mkdir(exist_ok=True)

    def execute(
        self, sql: bytes, data: bytes | None, params: dict[str, str]
    ) -> tuple[bytes, str, dict[str, Any]]:
        """Run one statement; returns (body, format, summary)."""
        settings = {
            k: v
            for k, v in params.items()
            if k not in _PROTOCOL_PARAMS and not k.startswith("param_")
        }
        for name in settings:
            if not _SETTING_NAME.match(name):
                raise QueryError(f"invalid setting name {name!r}", 400)
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        conn = chdb.connect(self.path)
        try:
            if params.get("database"):
                conn.query(f"USE `{params['database']}`", "TabSeparated")
            if data is not None:
                return self._insert(conn, sql, data, settings)
            text = sql.decode()
            match = _TRAILING_FORMAT.search(text)
            fmt = match.group(1) if match else params.get("default_format", "TabSeparated")
            for name, value in settings.items():
                conn.query(f"SET {name} = {_quote(value)}", "TabSeparated")
            result = conn.query(text, fmt, params=binds)
            return result.bytes(), fmt, self._summary(result)
        except QueryError:
            raise
        except Exception as exc:  # chdb raises ChdbError/RuntimeError with ClickHouse text
            raise QueryError(str(exc)) from exc
        finally:
            conn.close()

    def _insert(
        self, conn: Any, statement: bytes, data: bytes, settings: dict[str, str]
    ) -> tuple[bytes, str, dict[str, Any]]:
        text = statement.decode().strip()
        match = _TRAILING_FORMAT.search(" " + text)
        if not match:
            raise QueryError("INSERT with data needs a FORMAT clause", 400)
        fmt = match.group(1)
        head = text[: len(text) - len(match.group(0)) + 1].rstrip()
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=f".{fmt.lower()}")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            clause = f" SETTINGS {_settings_clause(settings)}" if settings else ""
            sql = f"{head} FROM INFILE {_quote(name)}{clause} FORMAT {fmt}"
            result = conn.query(sql, "TabSeparated")
            summary = self._summary(result)
            summary["written_rows"] = str(result.rows_read())
            return b"", "TabSeparated", summary
        finally:
            os.unlink(name)

    @staticmethod
    def _summary(result: Any) -> dict[str, Any]:
        return {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(getattr(result, "rows_written", lambda: 0)()),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "byoc-warehouse"
    warehouse: Warehouse
    password: str

    def log_message(self, format: str, *args: Any) -> None:  # quiet: errors are logged below
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", "byoc-warehouse")
        self.send_header("X-ClickHouse-Timezone", "UTC")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self, params: dict[str, str]) -> bool:
        if not self.password:
            return True
        given = self.headers.get("X-ClickHouse-Key") or params.get("password")
        if given is None and self.headers.get("Authorization", "").startswith("Basic "):
            import base64

            raw = base64.b64decode(self.headers["Authorization"][6:]).decode()
            given = raw.partition(":")[2]
        return given == self.password

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/") and "query" not in url.query:
            self._reply(200, b"Ok.\n")
            return
        self._handle(b"")

    def do_POST(self) -> None:
        try:
            body = _decode_body(self._read_body(), self.headers.get("Content-Encoding"))
        except QueryError as exc:
            self._reply(exc.status, f"{exc}\n".encode())
            return
        self._handle(body)

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        if not self._authorized(params):
            self._reply(
                401,
                b"Code: 516. DB::Exception: Authentication failed. (AUTHENTICATION_FAILED)\n",
                {"X-ClickHouse-Exception-Code": "516"},
            )
            return
        sql, data = body, None
        if "query" in params:
            sql = params["query"].encode()
            if _INSERT_FORMAT.match(sql + b"\n") and body:
                data = body
            elif body:
                sql = sql + b"\n" + body
        else:
            match = _INSERT_FORMAT.match(body)
            if match:
                sql, data = body[: match.end()], body[match.end() :]
        try:
            result, fmt, summary = self.warehouse.execute(sql, data, params)
        except QueryError as exc:
            message = str(exc)
            code = _ERROR_CODE.search(message)
            log.warning("query failed: %s", message.splitlines()[0][:300])
            self._reply(
                exc.status,
                (message if message.endswith("\n") else message + "\n").encode(),
                {
                    "X-ClickHouse-Exception-Code": code.group(1) if code else "1000",
                    "X-ClickHouse-Query-Id": query_id,
                },
            )
            return
        self._reply(
            200,
            result,
            {
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Summary": json.dumps(summary),
                "Content-Type": "application/octet-stream"
                if fmt in ("Native", "RowBinary", "Arrow", "ArrowStream", "Parquet")
                else "text/plain; charset=UTF-8",
            },
        )


def serve(data_dir: Path, host: str, port: int, password: str = "") -> None:
    warehouse = Warehouse(data_dir)
    handler = type("BoundHandler", (Handler,), {"warehouse": warehouse, "password": password})
    ThreadingHTTPServer.allow_reuse_address = True
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        raise SystemExit(f"warehouse: cannot listen on {host}:{port}: {exc}") from exc
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("warehouse serving ClickHouse HTTP on %s:%d, data %s", host, port, data_dir)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log.info("warehouse stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args(argv)
    logs.configure("warehouse")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    serve(args.data_dir, args.host, args.port, os.environ.get("BYOC_CLICKHOUSE__PASSWORD", ""))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Typed HTTP client of the control plane's BYOC API (change feed, admin, usage reads).

The GraphQL side is spoken by Stigg's own client (see graphql.py for how to import it); this
client covers the ``/byoc/v1`` routes that the enforcement inbound sync, tests and operators
use. ``ControlPlaneClient`` is synchronous, ``AsyncControlPlaneClient`` is the same for asyncio.

Errors: ``ControlPlaneUnavailable`` for connection errors, timeouts and 5xx (worth retrying
later); ``ControlPlaneAuthError`` for 401; ``ControlPlaneRequestError`` for other 4xx (bad
input, with the server's code and message).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import msgspec

from byoc_platform.catalog import Change, ChangePage, decode_entity
from byoc_platform.control_plane.store import (
    DEFAULT_PAGE,
    StoredEvent,
    UsageRecord,
    UsageTotal,
    kind_of,
)
from byoc_platform.settings import Settings

_T = TypeVar("_T")
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_PREFIX = "/byoc/v1/environments"


class ControlPlaneError(Exception):
    """Base class of this client's errors."""


class ControlPlaneUnavailable(ControlPlaneError):
    """The control plane could not be reached, timed out, or answered 5xx."""


class ControlPlaneRequestError(ControlPlaneError):
    """The control plane refused the request (4xx)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ControlPlaneAuthError(ControlPlaneRequestError):
    """401: the API key is missing or wrong."""


class _ChangeBody(msgspec.Struct):
    change: Change


class _Totals(msgspec.Struct):
    totals: list[UsageTotal]


class _Records(msgspec.Struct):
    records: list[UsageRecord]


class _Events(msgspec.Struct):
    events: list[StoredEvent]


class _Entity(msgspec.Struct):
    data: dict[str, Any]


class _ErrorBody(msgspec.Struct):
    error: dict[str, Any]


def base_url_from_settings(settings: Settings) -> str:
    """``http://host:port`` of the control plane, from ``settings.control_plane.api_url``."""
    url = httpx.URL(str(settings.control_plane.api_url))
    return str(url.copy_with(path="/", query=None)).rstrip("/")


def _usage_params(
    customer_id: str | None, feature_id: str | None, resource_id: str | None
) -> dict[str, str]:
    params = {"customerId": customer_id, "featureId": feature_id, "resourceId": resource_id}
    return {k: v for k, v in params.items() if v is not None}


def _decode(response: httpx.Response, type_: type[_T]) -> _T:
    if response.status_code >= 500:
        raise ControlPlaneUnavailable(
            f"control plane answered {response.status_code} for "
            f"{response.request.method} {response.request.url.path}"
        )
    if response.status_code >= 400:
        code, message = "ERROR", response.text
        try:
            err = msgspec.json.decode(response.content, type=_ErrorBody).error
            code, message = str(err.get("code", code)), str(err.get("message", message))
        except msgspec.DecodeError:
            pass
        cls = ControlPlaneAuthError if response.status_code == 401 else ControlPlaneRequestError
        raise cls(response.status_code, code, message)
    try:
        return msgspec.json.decode(response.content, type=type_)
    except msgspec.DecodeError as exc:
        raise ControlPlaneError(f"unexpected response from the control plane: {exc}") from None


def _is_missing(response: httpx.Response) -> bool:
    # A 404 for a missing entity, not for an unknown kind or route (those raise).
    return response.status_code == 404 and b"not found in environment" in response.content


def _unavailable(exc: httpx.HTTPError, base_url: str) -> ControlPlaneUnavailable:
    return ControlPlaneUnavailable(f"control plane at {base_url} unreachable: {exc!r}")


class ControlPlaneClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"X-API-KEY": api_key},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ControlPlaneClient:
        return cls(base_url_from_settings(settings), settings.control_plane.api_key, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unavailable(exc, self.base_url) from exc

    def healthy(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def changes(self, env: str, after: int = 0, limit: int = DEFAULT_PAGE) -> ChangePage:
        """One page of the change feed: changes with seq > after."""
        response = self._request(
            "GET", f"{_PREFIX}/{env}/changes", params={"after": after, "limit": limit}
        )
        return _decode(response, ChangePage)

    def iter_changes(self, env: str, after: int = 0, limit: int = DEFAULT_PAGE) -> Iterator[Change]:
        """Every change after ``after``, following ``hasMore`` page by page."""
        while True:
            page = self.changes(env, after, limit)
            yield from page.changes
            if not page.hasMore:
                return
            after = page.cursor

    def put_entity(self, env: str, entity: msgspec.Struct) -> Change:
        path = f"{_PREFIX}/{env}/{kind_of(entity)}/{entity.id}"  # type: ignore[attr-defined]
        response = self._request("PUT", path, content=msgspec.json.encode(entity))
        return _decode(response, _ChangeBody).change

    def get_entity(self, env: str, kind: str, id: str) -> msgspec.Struct | None:
        response = self._request("GET", f"{_PREFIX}/{env}/{kind}/{id}")
        if _is_missing(response):
            return None
        return decode_entity(kind, _decode(response, _Entity).data)

    def delete_entity(self, env: str, kind: str, id: str) -> Change | None:
        """Delete one entity; None when it did not exist."""
        response = self._request("DELETE", f"{_PREFIX}/{env}/{kind}/{id}")
        if _is_missing(response):
            return None
        return _decode(response, _ChangeBody).change

    def usage_totals(
        self,
        env: str,
        *,
        customer_id: str | None = None,
        feature_id: str | None = None,
        resource_id: str | None = None,
    ) -> list[UsageTotal]:
        params = _usage_params(customer_id, feature_id, resource_id)
        response = self._request("GET", f"{_PREFIX}/{env}/usage", params=params)
        return _decode(response, _Totals).totals

    def usage_records(
        self,
        env: str,
        *,
        customer_id: str | None = None,
        feature_id: str | None = None,
        resource_id: str | None = None,
    ) -> list[UsageRecord]:
        params = _usage_params(customer_id, feature_id, resource_id)
        response = self._request("GET", f"{_PREFIX}/{env}/usage/records", params=params)
        return _decode(response, _Records).records

    def events(self, env: str, *, customer_id: str | None = None) -> list[StoredEvent]:
        params = _usage_params(customer_id, None, None)
        response = self._request("GET", f"{_PREFIX}/{env}/events", params=params)
        return _decode(response, _Events).events


class AsyncControlPlaneClient:
    """The asyncio twin of ControlPlaneClient (same methods, awaited)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"X-API-KEY": api_key},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AsyncControlPlaneClient:
        return cls(base_url_from_settings(settings), settings.control_plane.api_key, **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncControlPlaneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unavailable(exc, self.base_url) from exc

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def changes(self, env: str, after: int = 0, limit: int = DEFAULT_PAGE) -> ChangePage:
        response = await self._request(
            "GET", f"{_PREFIX}/{env}/changes", params={"after": after, "limit": limit}
        )
        return _decode(response, ChangePage)

    async def put_entity(self, env: str, entity: msgspec.Struct) -> Change:
        path = f"{_PREFIX}/{env}/{kind_of(entity)}/{entity.id}"  # type: ignore[attr-defined]
        response = await self._request("PUT", path, content=msgspec.json.encode(entity))
        return _decode(response, _ChangeBody).change

    async def get_entity(self, env: str, kind: str, id: str) -> msgspec.Struct | None:
        response = await self._request("GET", f"{_PREFIX}/{env}/{kind}/{id}")
        if _is_missing(response):
            return None
        return decode_entity(kind, _decode(response, _Entity).data)

    async def delete_entity(self, env: str, kind: str, id: str) -> Change | None:
        response = await self._request("DELETE", f"{_PREFIX}/{env}/{kind}/{id}")
        if _is_missing(response):
            return None
        return _decode(response, _ChangeBody).change

    async def usage_totals(
        self,
        env: str,
        *,
        customer_id: str | None = None,
        feature_id: str | None = None,
        resource_id: str | None = None,
    ) -> list[UsageTotal]:
        params = _usage_params(customer_id, feature_id, resource_id)
        response = await self._request("GET", f"{_PREFIX}/{env}/usage", params=params)
        return _decode(response, _Totals).totals

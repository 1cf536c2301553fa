from __future__ import annotations

import httpx
import pytest

from byoc_platform.control_plane.client import ControlPlaneAuthError
from tests.byoc_platform.control_plane.cp_harness import API_KEY, ControlPlaneProcess

UNAUTHENTICATED = {"error": {"code": "UNAUTHENTICATED", "message": "Invalid or missing API key"}}
ENV = "/byoc/v1/environments/development"
ROUTES = [
    ("GET", f"{ENV}/changes?after=0"),
    ("GET", f"{ENV}/usage"),
    ("GET", f"{ENV}/usage/records"),
    ("GET", f"{ENV}/events"),
    ("GET", f"{ENV}/feature/feature-sso"),
    ("PUT", f"{ENV}/feature/feature-new"),
    ("DELETE", f"{ENV}/feature/feature-sso"),
    ("POST", "/graphql"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": "wrong"}, {"X-API-KEY": ""}])
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_healthz_needs_the_api_key(
    shared_cp: ControlPlaneProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    r = httpx.request(
        method, shared_cp.url + path, headers=headers, json={"featureType": "BOOLEAN"}
    )
    assert r.status_code == 401
    assert r.json() == UNAUTHENTICATED
    with shared_cp.client() as c:  # and nothing was written
        assert c.get_entity("development", "feature", "feature-new") is None
        assert c.get_entity("development", "feature", "feature-sso") is not None


def test_healthz_is_open(shared_cp: ControlPlaneProcess) -> None:
    r = httpx.get(f"{shared_cp.url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_client_with_wrong_key_raises_auth_error(shared_cp: ControlPlaneProcess) -> None:
    with shared_cp.client(api_key="wrong") as c, pytest.raises(ControlPlaneAuthError) as info:
        c.changes("development")
    assert info.value.status == 401 and info.value.code == "UNAUTHENTICATED"


def test_api_key_is_never_logged(shared_cp: ControlPlaneProcess) -> None:
    with shared_cp.client() as c:
        c.changes("development")
    httpx.get(f"{shared_cp.url}/byoc/v1/environments/development/usage?x={API_KEY[:4]}")
    log = shared_cp.log()
    assert '"level": "info"' in log and "/changes" in log  # requests are logged...
    assert API_KEY not in log  # ...the key is not

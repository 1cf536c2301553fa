"""Every route of the runtime API except health, metrics and the OpenAPI document needs a valid
API key; keys are stored only as hashes, in files only their owner can read."""

from __future__ import annotations

import json
import re
import stat

import pytest
from stigg._client import Stigg
from stigg._exceptions import AuthenticationError

from byoc_platform.auth import KeyStore, hash_key
from tests.security.conftest import SecureStack

pytestmark = pytest.mark.integration

PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json"}


def documented_operations(stack: SecureStack) -> list[tuple[str, str]]:
    with stack.http() as http:
        document = http.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-id", path)


def test_public_routes_answer_without_a_key(secure_stack: SecureStack) -> None:
    with secure_stack.http() as http:
        for path in PUBLIC:
            assert http.get(path).status_code == 200, path


def test_every_other_documented_route_refuses_missing_and_wrong_keys(
    secure_stack: SecureStack,
) -> None:
    operations = [(m, p) for m, p in documented_operations(secure_stack) if p not in PUBLIC]
    # The document covers ingestion and enforcement (each part adds its routes).
    paths = {p for _, p in operations}
    assert {"/api/v1/events", "/api/v2/usage", "/graphql"} <= paths
    assert any(p.startswith("/api/v1/customers/") for p in paths)
    assert any(p.startswith("/api/v1/credits/") for p in paths)
    # A revoked key, a key of the right shape that was never issued, a hash of a real key
    # (what a leaked key file would give), and no key at all.
    store = KeyStore(secure_stack.settings.api_keys_file)  # type: ignore[arg-type]
    revoked = store.create("env-a", label="to revoke")
    assert store.revoke(hash_key(revoked)[:12])
    wrong_keys = [None, "", "byoc_" + "x" * 32, hash_key(secure_stack.key_a), revoked]
    for method, path in operations:
        for key in wrong_keys:
            with secure_stack.http(key) as http:
                response = http.request(method, concrete(path), content=b"{}")
            assert response.status_code == 401, (method, path, key, response.text)
            assert response.json()["error"]["code"] == "UNAUTHENTICATED"


def test_undocumented_paths_need_a_key_too(secure_stack: SecureStack) -> None:
    # Auth runs before routing: an unknown path does not even reveal that it is unknown.
    with secure_stack.http() as http:
        assert http.get("/api/v1/nothing-here").status_code == 401
        assert http.post("/admin").status_code == 401


def test_the_official_sdk_is_refused_with_a_wrong_key(secure_stack: SecureStack) -> None:
    client = Stigg(api_key="byoc_not-issued", base_url=secure_stack.settings.api_url, max_retries=0)
    with pytest.raises(AuthenticationError):
        client.v1.events.report(
            events=[{"customer_id": "only-a", "event_name": "api_call", "idempotency_key": "x"}]
        )
    with pytest.raises(AuthenticationError):
        client.v1.customers.check_entitlement("only-a", feature_id="f-calls")


def test_keys_are_stored_hashed_and_private(secure_stack: SecureStack) -> None:
    s = secure_stack.settings
    assert s.api_keys_file is not None
    text = s.api_keys_file.read_text()
    records = json.loads(text)
    assert {r["environment"] for r in records} >= {"env-a", "env-b"}
    for key in (secure_stack.key_a, secure_stack.key_b):
        assert key not in text
        assert hash_key(key) in {r["key_hash"] for r in records}
    # Only the owner can read the key file, and the local key kept for the user (stack.json)
    # and the settings file holding the S3 and control-plane secrets.
    for path in (s.api_keys_file, s.stack_file, s.data_dir / "settings.yaml"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {oct(mode)}"

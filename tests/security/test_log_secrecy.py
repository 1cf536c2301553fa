"""No API key (valid or not), control-plane key or S3 secret appears in any log of a run.

The run: the secure stack (every component, restarts included) serving requests with keys of
two environments, refused requests with an unknown key, bad bodies and errors, then a grep of
every log file under <data_dir>/logs and of what this test process logged and printed.
"""

from __future__ import annotations

import logging
import stat
import uuid

import pytest
from stigg._client import Stigg
from stigg._exceptions import APIStatusError

from tests.security.conftest import (
    CONTROL_PLANE_KEY,
    S3_SECRET,
    SecureStack,
    restart,
    wait_synced,
)

pytestmark = pytest.mark.integration


def exercise(stack: SecureStack, unknown_key: str) -> None:
    """Requests that make every component work and log: accepted, refused, invalid."""
    for key in (stack.key_a, stack.key_b):
        client = Stigg(api_key=key, base_url=stack.settings.api_url, max_retries=0)
        client.v1.events.report(
            events=[
                {
                    "customer_id": "shared-cust",
                    "event_name": "api_call",
                    "idempotency_key": f"log-{uuid.uuid4().hex}",
                }
            ]
        )
        client.v1.customers.check_entitlement("shared-cust", feature_id="f-calls")
        client.v1.customers.check_entitlement("shared-cust", currency_id="credits")
        with pytest.raises(APIStatusError):
            client.v1.credits.consumption.consume(
                amount=10**9, currency_id="credits", customer_id="shared-cust", idempotency_key="x"
            )
    with stack.http(unknown_key) as http:
        assert http.post("/api/v1/events", json={"events": []}).status_code == 401
        assert http.get("/api/v1/customers/shared-cust/entitlements").status_code == 401
    with stack.http(stack.key_a) as http:
        json_type = {"Content-Type": "application/json"}  # else 415 (content type checked first)
        assert (
            http.post("/api/v1/events", content=b"{not json", headers=json_type).status_code == 400
        )
        assert http.post("/api/v1/events", json={"events": [{"x": 1}]}).status_code == 422
        assert http.post("/graphql", json={"operationName": "Nope"}).status_code == 200
        # A key in the query string or a body field is not a key, but must not be echoed.
        http.get(f"/api/v1/customers/shared-cust/entitlements?apiKey={unknown_key}")
        http.post("/api/v1/events", json={"events": [], "apiKey": unknown_key})


def test_no_secret_in_any_log(
    secure_stack: SecureStack, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unknown_key = f"sk_live_{uuid.uuid4().hex}"  # not byoc_-shaped: no redaction pattern helps
    exercise(secure_stack, unknown_key)
    # A restart makes components log their start-up (settings, connections) once more.
    for name in ("api", "stream"):
        restart(secure_stack.supervisor, name)
    wait_synced(secure_stack)
    exercise(secure_stack, unknown_key)

    secrets = {
        "API key of env-a": secure_stack.key_a,
        "API key of env-b": secure_stack.key_b,
        "unknown presented key": unknown_key,
        "control-plane key": CONTROL_PLANE_KEY,
        "S3 secret key": S3_SECRET,
    }
    logs = secure_stack.logs()
    assert {p.stem for p in logs} >= {"api", "stream", "kafka", "s3", "warehouse", "kms"}
    assert all(text.strip() for text in logs.values())
    out, err = capfd.readouterr()
    sources = {str(p): text for p, text in logs.items()}
    sources["test output"] = out + err
    # What the platform's code logged in this process (the supervisor's events); not the
    # HTTP client libraries, which log the test's own request URLs.
    platform = ("byoc", "streaming", "enforcement", "assets", "dagster_project")
    sources["test log records"] = "\n".join(
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in platform
    )
    assert "api restarted" in sources["test log records"]  # the grep saw the supervisor
    leaks = [
        f"{what} in {source}"
        for source, text in sources.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert not leaks, leaks

    # Files that must hold secrets are readable by their owner only.
    s = secure_stack.settings
    for path in (s.data_dir / "settings.yaml", s.data_dir / "s3" / "s3.json"):
        assert S3_SECRET in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path

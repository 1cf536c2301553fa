"""TLS for the runtime API: with a certificate and key configured, `byoc serve` speaks HTTPS only,
and the official SDK works against it when it trusts the certificate (and only then)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from stigg._client import Stigg

from byoc_platform.settings import Settings
from byoc_platform.stack.components import BY_NAME
from tests.security.conftest import SecureStack
from tests.stack_fixtures import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1/localhost, valid for a day, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "byoc test runtime API")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_runtime_api_serves_https_with_a_configured_certificate(
    secure_stack: SecureStack, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    # The secure stack's settings, with TLS and its own ports (the ingest role: no second
    # enforcement consumer next to the stack's own).
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env.update(
        {
            "BYOC_CONFIG_FILE": str(secure_stack.settings.data_dir / "settings.yaml"),
            "BYOC_PORTS__API": str(port),
            "BYOC_PORTS__GRPC": str(free_port()),
            "BYOC_API__TLS_CERT_FILE": str(cert),
            "BYOC_API__TLS_KEY_FILE": str(key),
        }
    )
    data = secure_stack.settings.model_dump()
    data["ports"]["api"] = port
    data["api"].update(tls_cert_file=cert, tls_key_file=key)
    settings = Settings(**data)
    assert settings.api_url == f"https://127.0.0.1:{port}"
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "byoc_platform", "serve", "--role", "ingest"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{settings.api_url}/readyz", verify=trusted).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)

        # The stack supervisor's health probe (and `byoc status`) reaches it over TLS too.
        BY_NAME["api"].probe(settings)

        with httpx.Client(verify=trusted) as http:
            client = Stigg(
                api_key=secure_stack.key_a,
                base_url=settings.api_url,
                http_client=http,
                max_retries=0,
            )
            answer = client.v1.events.report(
                events=[
                    {"customer_id": "only-a", "event_name": "api_call", "idempotency_key": "t1"}
                ]
            )
            assert answer.to_dict() == {"data": {}}
            # Over TLS the key is still required.
            refused = http.post(f"{settings.api_url}/api/v1/events", json={"events": []})
            assert refused.status_code == 401

        # A client that does not trust the certificate refuses to talk ...
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{settings.api_url}/healthz")
        # ... and plain HTTP gets no HTTP answer at all.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

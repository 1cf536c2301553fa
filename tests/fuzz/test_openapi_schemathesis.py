"""Schemathesis against the whole runtime API (ingestion + enforcement + the core routes), driven
by the OpenAPI document it serves: every operation, schema-derived and coverage examples, a
fuzzing and a stateful phase, a bounded number of examples. No 5xx, every answer documented
(status, content type, headers, body schema), auth enforced everywhere it is declared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fuzz.api_process import ApiProcess

ROOT = Path(__file__).resolve().parents[2]
SEED = os.environ.get("BYOC_FUZZ_SEED", "20261121")  # another seed explores other cases

# Every check: on what the API answers, and on what it accepts (schema-valid requests are
# accepted, schema-invalid ones refused with a 4xx, unsupported methods get 405 with an Allow
# header listing the path's methods). The documents state the routes' parameter rules
# (oneOf/not) so that document and behaviour agree (findings F5-F7 of docs/reliability.md).
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
]


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(
    fuzz_api: ApiProcess, tmp_path: Path
) -> None:
    errors_before = error_lines(fuzz_api)
    document = httpx.get(f"{fuzz_api.url}/openapi.json").json()
    operations = sum(len(item) for item in document["paths"].values())
    assert operations >= 15  # ingestion, enforcement and the core routes are all in it
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{fuzz_api.url}/openapi.json",
            "-H",
            f"X-API-KEY: {fuzz_api.api_key}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "40",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--request-timeout",
            "20",
            "--seed",
            SEED,
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.fuzz.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "generated" in result.stdout  # it really ran test cases
    assert fuzz_api.alive()
    errors = error_lines(fuzz_api)[len(errors_before) :]
    assert not errors, errors[:5]  # nothing failed inside the API either (e.g. a logged 500)


def error_lines(api: ApiProcess) -> list[str]:
    return [line for line in api.log().splitlines() if '"level": "error"' in line]

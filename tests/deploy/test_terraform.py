"""The AWS Terraform module: formatted (`terraform fmt -check`), and, parsed with the HCL parser
checkov ships, it creates the bucket with default SSE-KMS under a rotating customer key,
versioning, lifecycle from the retention policy, and least-privilege IRSA roles.

`terraform validate` needs the AWS provider, which cannot be downloaded here (no registry
access); deploy/README.md documents running it where providers can be fetched."""

from __future__ import annotations

import subprocess
from typing import Any

import hcl2

from byoc_platform.settings import RetentionSettings
from tests.deploy.deploy_manifests import DEPLOY

TERRAFORM = "/usr/local/bin/terraform"
TF_ROOT = DEPLOY / "terraform"
MODULE = TF_ROOT / "modules" / "aws-byoc"


def _unwrap(value: Any) -> Any:
    """bc-python-hcl2 wraps every attribute and block in a list; unwrap single items."""
    if isinstance(value, list) and len(value) == 1:
        return _unwrap(value[0])
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items() if not k.startswith("__")}
    return value


def _module() -> dict[str, dict[str, Any]]:
    """{block type: {"<type>.<name>": body}} over every .tf file of the module."""
    blocks: dict[str, dict[str, Any]] = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for path in sorted(MODULE.glob("*.tf")):
        parsed = hcl2.loads(path.read_text())
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        blocks[kind][f"{rtype}.{name}"] = _unwrap(body)
        for kind in ("variable", "output"):
            for entry in parsed.get(kind, []):
                for name, body in entry.items():
                    blocks[kind][name] = _unwrap(body)
    return blocks


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(policy_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    statements = policy_doc["statement"]
    statements = statements if isinstance(statements, list) else [statements]
    return {s["sid"]: s for s in statements}


def test_terraform_is_formatted() -> None:
    result = subprocess.run(
        [TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(TF_ROOT)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TF_CLI_CONFIG_FILE": "/dev/null"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bucket_is_encrypted_with_a_rotating_customer_key_and_versioned() -> None:
    m = _module()["resource"]
    key = m["aws_kms_key.archive"]
    assert key["enable_key_rotation"] is True
    assert key["deletion_window_in_days"] == "${var.kms_deletion_window_days}"
    sse = m["aws_s3_bucket_server_side_encryption_configuration.archive"]["rule"]
    default = sse["apply_server_side_encryption_by_default"]
    assert default == {
        "sse_algorithm": "aws:kms",
        "kms_master_key_id": "${aws_kms_key.archive.arn}",
    }
    assert m["aws_s3_bucket_versioning.archive"]["versioning_configuration"]["status"] == "Enabled"
    pab = m["aws_s3_bucket_public_access_block.archive"]
    assert all(
        pab[k] is True
        for k in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        )
    )


def test_lifecycle_follows_the_retention_policy() -> None:
    blocks = _module()
    rules = {
        r["id"]: r
        for r in blocks["resource"]["aws_s3_bucket_lifecycle_configuration.archive"]["rule"]
    }
    archive = rules["archive-retention"]
    assert archive["filter"]["prefix"] == "archive/"
    assert archive["expiration"]["days"] == "${var.archive_days}"
    assert "noncurrent_version_expiration" in archive
    # The module's default is the platform's default retention (BYOC_RETENTION__ARCHIVE_DAYS).
    assert blocks["variable"]["archive_days"]["default"] == RetentionSettings().archive_days
    assert (
        rules["abort-incomplete-uploads"]["abort_incomplete_multipart_upload"][
            "days_after_initiation"
        ]
        > 0
    )


def test_bucket_policy_refuses_plaintext_transport_and_other_keys() -> None:
    doc = _module()["data"]["aws_iam_policy_document.bucket"]
    sids = _statements(doc)
    assert sids["DenyInsecureTransport"]["effect"] == "Deny"
    assert sids["DenyInsecureTransport"]["condition"]["variable"] == "aws:SecureTransport"
    assert _as_list(sids["DenyOtherKmsKey"]["condition"]["values"]) == [
        "${aws_kms_key.archive.arn}"
    ]


def test_roles_are_least_privilege_reader_cannot_encrypt() -> None:
    data = _module()["data"]

    def actions(doc: str) -> set[str]:
        found: set[str] = set()
        for s in _statements(data[doc]).values():
            found |= set(_as_list(s["actions"]))
        return found

    writer, reader, flink = (
        actions(f"aws_iam_policy_document.{n}")
        for n in ("archive_writer", "archive_reader", "flink")
    )
    assert "kms:GenerateDataKey" in writer and "kms:Decrypt" in writer
    assert "kms:Decrypt" in reader
    assert not {"kms:GenerateDataKey", "kms:Encrypt", "s3:PutObject"} & reader
    assert "s3:DeleteObject" not in writer  # deletion of archives is the lifecycle's job
    for acts in (writer, reader, flink):
        assert not [a for a in acts if a.endswith(":*") or a == "*"]
    kms = _statements(data["aws_iam_policy_document.kms"])
    assert set(kms["DecryptOnly"]["actions"]) == {"kms:Decrypt", "kms:DescribeKey"}
    # Each role trusts exactly its own ServiceAccount through the cluster's OIDC provider.
    trust = _statements(
        {"statement": [{**data["aws_iam_policy_document.trust"]["statement"], "sid": "t"}]}
    )["t"]
    assert trust["actions"] == "sts:AssumeRoleWithWebIdentity"
    conditions = {c["variable"]: _as_list(c["values"]) for c in trust["condition"]}
    assert conditions["${local.oidc}:sub"] == [
        "system:serviceaccount:${var.namespace}:${each.value}"
    ]
    assert conditions["${local.oidc}:aud"] == ["sts.amazonaws.com"]

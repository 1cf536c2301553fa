"""The AWS Terraform module: formatted (`terraform fmt -check`), and, parsed with the HCL parser
checkov ships, it creates the bucket with default SSE-KMS under a rotating customer key,
versioning, lifecycle from the retention policy, and least-privilege IRSA roles that still allow
every S3 and KMS call the archive, retention and restore code makes (found in the code's AST).

`terraform validate` needs the AWS provider, which cannot be downloaded here (no registry
access); deploy/README.md documents running it where providers can be fetched."""

from __future__ import annotations

import ast
import re
import subprocess
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import hcl2
import pytest

from assets.archive.hours import PREFIX
from byoc_platform.settings import KmsSettings, RetentionSettings, Settings
from tests.deploy.deploy_manifests import DEPLOY, OVERLAYS, REPO, config_settings, render

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
    """{block type: {"<type>.<name>": body}} over every .tf file of the module (locals: by name)."""
    blocks: dict[str, dict[str, Any]] = {
        "resource": {},
        "data": {},
        "variable": {},
        "output": {},
        "locals": {},
    }
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
        for entry in parsed.get("locals", []):
            blocks["locals"].update(_unwrap(entry))
    return blocks


REFERENCE = re.compile(r"\$\{([^}]+)\}")


def _resolve(value: str, blocks: dict[str, dict[str, Any]]) -> str:
    """Substitutes ${var.X} (its default), ${local.X} and ${aws_kms_alias.N.name}; references
    known only after apply (ARNs, ids) stay as written."""

    def one(match: re.Match[str]) -> str:
        ref = match.group(1)
        kind, _, rest = ref.partition(".")
        if kind == "var":
            return str(blocks["variable"][rest]["default"])
        if kind == "local":
            return _resolve(str(blocks["locals"][rest]), blocks)
        if kind == "aws_kms_alias" and rest.endswith(".name"):
            alias = blocks["resource"][f"aws_kms_alias.{rest.removesuffix('.name')}"]
            return _resolve(alias["name"], blocks)
        return match.group(0)

    return REFERENCE.sub(one, value)


def _reference(expression: str) -> str:
    """The address inside a whole-value reference: "${aws_kms_key.x.arn}" -> "aws_kms_key.x.arn"."""
    match = REFERENCE.fullmatch(expression)
    assert match, f"{expression!r} is not a reference"
    return match.group(1)


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
    assert _resolve(archive["filter"]["prefix"], blocks) == PREFIX  # what the archive writes
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bucket_policy_refuses_plaintext_transport_and_other_keys(overlay: str) -> None:
    """The header s3:x-amz-server-side-encryption-aws-kms-key-id holds what the client sent;
    the archive sends the alias of its settings (assets/archive/hours.py SSEKMSKeyId)."""
    blocks = _module()
    sids = _statements(blocks["data"]["aws_iam_policy_document.bucket"])
    assert sids["DenyInsecureTransport"]["effect"] == "Deny"
    assert sids["DenyInsecureTransport"]["condition"]["variable"] == "aws:SecureTransport"
    other_key = sids["DenyOtherKmsKey"]["condition"]
    assert other_key["test"] == "StringNotEqualsIfExists"
    accepted = {_resolve(v, blocks) for v in _as_list(other_key["values"])}
    sse_alias = config_settings(render(overlay)).kms.key_alias
    assert {
        "${aws_kms_key.archive.arn}",
        "${aws_kms_alias.archive.arn}",
        sse_alias,
    } <= accepted


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
    assert not {"kms:GenerateDataKey", "kms:Encrypt", "s3:PutObject", "s3:DeleteObject"} & reader
    for acts in (writer, reader, flink):
        assert not [a for a in acts if a.endswith(":*") or a == "*"]
    for key_policy in ("kms", "kms_pii"):
        kms = _statements(data[f"aws_iam_policy_document.{key_policy}"])
        assert set(kms["DecryptOnly"]["actions"]) == {"kms:Decrypt", "kms:DescribeKey"}
    # No statement grants an action on the whole bucket's objects.
    for doc in ("archive_writer", "archive_reader", "flink"):
        for st in _statements(data[f"aws_iam_policy_document.{doc}"]).values():
            assert "${aws_s3_bucket.archive.arn}/*" not in _as_list(st["resources"]), doc
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


# The IAM action that authorizes each boto3 call of the archive code (a call missing here fails
# the test below: map it, then grant it).
S3_ACTIONS = {
    "put_object": "s3:PutObject",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "list_objects_v2": "s3:ListBucket",
    "delete_objects": "s3:DeleteObject",
    "delete_object": "s3:DeleteObject",
}
KMS_ACTIONS = {
    "encrypt": "kms:Encrypt",
    "decrypt": "kms:Decrypt",
    "generate_data_key": "kms:GenerateDataKey",
    "describe_key": "kms:DescribeKey",
}
S3_READS = {"s3:GetObject", "s3:ListBucket"}
ARCHIVE_CODE = (REPO / "assets" / "archive", REPO / "assets" / "retention")
# Creates the PII key when it is missing: the local stack only (dagster_project/resources.py
# sets create_missing_keys=False in a cluster, where Terraform creates the keys).
LOCAL_STACK_ONLY = {"keys.py"}
WRITER = "aws_iam_policy_document.archive_writer"
READER = "aws_iam_policy_document.archive_reader"


def _archive_modules() -> list[Path]:
    return [
        p for d in ARCHIVE_CODE for p in sorted(d.glob("*.py")) if p.name not in LOCAL_STACK_ONLY
    ]


def _client_calls(client: str) -> dict[str, list[ast.Call]]:
    """{boto3 method: calls} of `<client>.m(...)`, `self._<client>.m(...)` and paginators
    (`<client>.get_paginator("m")`) in the archive and retention code."""
    calls: dict[str, list[ast.Call]] = {}
    for path in _archive_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            name = getattr(owner, "id", None) or getattr(owner, "attr", None)
            if name not in (client, f"_{client}"):
                continue
            method = node.func.attr
            if method == "get_paginator":
                method = ast.literal_eval(node.args[0])
            calls.setdefault(method, []).append(node)
    return calls


def _actions(calls: dict[str, list[ast.Call]], table: dict[str, str]) -> set[str]:
    unmapped = set(calls) - set(table)
    assert not unmapped, f"calls with no IAM action in the test's table: {unmapped}"
    return {table[m] for m in calls}


def _granted(doc: dict[str, Any], resource: str, blocks: dict[str, dict[str, Any]]) -> set[str]:
    """Actions a policy document allows on one resource (variables and locals resolved)."""
    return {
        action
        for st in _statements(doc).values()
        if st.get("effect", "Allow") == "Allow"
        and resource in {_resolve(r, blocks) for r in _as_list(st["resources"])}
        for action in _as_list(st["actions"])
    }


def _listing_patterns(doc: dict[str, Any]) -> list[str]:
    """s3:prefix patterns under which a policy allows s3:ListBucket on the bucket."""
    return [
        pattern
        for st in _statements(doc).values()
        if "s3:ListBucket" in _as_list(st["actions"])
        and "${aws_s3_bucket.archive.arn}" in _as_list(st["resources"])
        and st["condition"]["variable"] == "s3:prefix"
        for pattern in _as_list(st["condition"]["values"])
    ]


def test_archive_roles_allow_every_s3_call_of_the_archive_code_under_its_prefix() -> None:
    blocks = _module()
    data = blocks["data"]
    needed = _actions(_client_calls("s3"), S3_ACTIONS)
    # Retention's archive expiry deletes objects (DeleteObjects is authorized per key).
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:DeleteObject"} <= needed
    objects = f"${{aws_s3_bucket.archive.arn}}/{PREFIX}*"
    for doc, wanted in ((WRITER, needed), (READER, needed & S3_READS)):
        granted = _granted(data[doc], objects, blocks)
        assert wanted - {"s3:ListBucket"} <= granted, doc
        # The code lists with Prefix=events/env=... (archived_environments, archive_days).
        patterns = [_resolve(p, blocks) for p in _listing_patterns(data[doc])]
        assert any(fnmatchcase(f"{PREFIX}env=", p) for p in patterns), (doc, patterns)


def _alias_target_key(blocks: dict[str, dict[str, Any]], alias_name: str) -> str:
    """`aws_kms_key.<name>` of the module's alias called alias_name."""
    aliases = {
        _resolve(body["name"], blocks): body["target_key_id"]
        for key, body in blocks["resource"].items()
        if key.startswith("aws_kms_alias.")
    }
    assert alias_name in aliases, f"{alias_name} is not a Terraform alias: {sorted(aliases)}"
    return _reference(aliases[alias_name]).removesuffix(".key_id")


def _kms_needs(settings: Settings) -> dict[str, set[str]]:
    """KMS actions per alias: pyarrow wraps and unwraps the column keys with the footer key
    (kms.key_alias) and the PII key (kms.pii_key_alias) through kms.encrypt/kms.decrypt; S3
    asks, in the caller's name, for a data key of the SSE key on PutObject and decrypts with
    it on GetObject."""
    wrapping = _actions(_client_calls("kms"), KMS_ACTIONS)
    sse = any(
        kw.arg == "SSEKMSKeyId"
        for call in _client_calls("s3").get("put_object", [])
        for kw in call.keywords
    )
    needs = {settings.kms.key_alias: set(wrapping), settings.kms.pii_key_alias: set(wrapping)}
    if sse:  # SSEKMSKeyId is the settings' key_alias (assets/archive/defs.py sse_key)
        needs[settings.kms.key_alias] |= {"kms:GenerateDataKey", "kms:Decrypt"}
    return needs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kms_alias_the_archive_uses_is_a_terraform_key_granted_to_its_roles(
    overlay: str,
) -> None:
    blocks = _module()
    data = blocks["data"]
    settings = config_settings(render(overlay))
    aliases = {f: getattr(settings.kms, f) for f in KmsSettings.model_fields if f.endswith("alias")}
    needs = _kms_needs(settings)
    assert set(needs) == set(aliases.values())
    for field, alias in aliases.items():
        key = _alias_target_key(blocks, alias)
        body = blocks["resource"][key]
        assert body["enable_key_rotation"] is True, key
        arn = f"${{{key}.arn}}"
        assert needs[alias] <= _granted(data[WRITER], arn, blocks), (field, alias)
        reader = _granted(data[READER], arn, blocks)
        assert "kms:Decrypt" in reader and not {"kms:Encrypt", "kms:GenerateDataKey"} & reader
        # The key's own policy names the writer for the same actions.
        policy = _reference(body["policy"]).removeprefix("data.").removesuffix(".json")
        writer_in_key_policy = {
            action
            for st in _statements(data[policy]).values()
            if "${aws_iam_role.archive_writer.arn}" in _as_list(st["principals"]["identifiers"])
            for action in _as_list(st["actions"])
        }
        assert needs[alias] <= writer_in_key_policy, (field, policy)

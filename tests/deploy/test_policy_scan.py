"""Policy scan: checkov over the rendered overlays, deploy/terraform and deploy/images. Every
failed check must be fixed or listed, with a reason, in deploy/.checkov.yaml; listed entries that
no longer match a finding fail too, so the list cannot go stale."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.deploy_manifests import DEPLOY, OVERLAYS, REPO, render

CHECKOV = Path(sys.executable).parent / "checkov"
ACCEPTED = yaml.safe_load((DEPLOY / ".checkov.yaml").read_text())["accepted"]


def _scan(directory: Path, framework: str) -> list[tuple[str, str]]:
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(directory),
            "--framework",
            framework,
            "-o",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    # Exit 1 means "failed checks found"; anything else is checkov itself failing.
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r["check_type"] == framework for r in reports)
    assert sum(r["summary"]["passed"] for r in reports) > 0, (
        f"checkov checked nothing in {framework}"
    )
    return [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]


def _accepted(check_id: str, resource: str) -> dict | None:
    for entry in ACCEPTED:
        if entry["id"] == check_id and any(
            fnmatch.fnmatch(resource, g) for g in entry["resources"]
        ):
            return entry
    return None


def test_every_accepted_finding_has_a_reason() -> None:
    for entry in ACCEPTED:
        assert len(entry["reason"].split()) >= 8, entry["id"]
        assert entry["resources"], entry["id"]


def test_checkov_finds_nothing_unexplained(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for overlay in OVERLAYS:
        (rendered / f"{overlay}.yaml").write_text(yaml.safe_dump_all(render(overlay)))
    findings = (
        _scan(rendered, "kubernetes")
        + _scan(DEPLOY / "terraform", "terraform")
        + _scan(DEPLOY / "images", "dockerfile")
    )
    unexplained = sorted({f for f in findings if _accepted(*f) is None})
    assert not unexplained, f"fix these or explain them in deploy/.checkov.yaml: {unexplained}"
    used = {(e["id"], tuple(e["resources"])) for f in findings if (e := _accepted(*f))}
    stale = [e["id"] for e in ACCEPTED if (e["id"], tuple(e["resources"])) not in used]
    assert not stale, f"deploy/.checkov.yaml lists checks that no longer fail: {stale}"

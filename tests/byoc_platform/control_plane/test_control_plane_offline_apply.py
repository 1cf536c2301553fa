from __future__ import annotations

import json
from pathlib import Path

from byoc_platform.catalog import Feature
from tests.byoc_platform.control_plane.cp_harness import ControlPlaneProcess, run_cli

CHANGES = """\
environments:
  development:
    features:
      - id: feature-offline
        displayName: Added while the control plane was down
        featureType: BOOLEAN
    plans:
      - id: plan-free
        displayName: Free (changed offline)
        entitlements:
          - {featureId: feature-offline}
    delete:
      - {kind: budget, id: budget-initech-research-tokens}
"""


def test_offline_apply_while_stopped_is_in_the_feed_after_restart(
    fresh_cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    with fresh_cp.client() as c:
        cursor = c.changes("development", 0, 5000).cursor
    assert fresh_cp.stop() == 0

    file = tmp_path / "changes.yaml"
    file.write_text(CHANGES)
    done = run_cli("apply", "--data-dir", str(fresh_cp.data_dir), str(file))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["applied"] == 3
    assert summary["environments"]["development"]["firstSeq"] == cursor + 1

    fresh_cp.start()
    with fresh_cp.client() as c:
        page = c.changes("development", after=cursor)
        assert [(ch.seq, ch.kind, ch.op, ch.id) for ch in page.changes] == [
            (cursor + 1, "feature", "upsert", "feature-offline"),
            (cursor + 2, "plan", "upsert", "plan-free"),
            (cursor + 3, "budget", "delete", "budget-initech-research-tokens"),
        ]
        assert page.changes[1].data["displayName"] == "Free (changed offline)"
        assert c.get_entity("development", "budget", "budget-initech-research-tokens") is None
        # And the server keeps counting from there.
        assert c.put_entity("development", Feature(id="feature-after")).seq == cursor + 4


def test_apply_while_the_server_runs_is_visible_at_once(
    shared_cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    file = tmp_path / "live.yaml"
    file.write_text("environments:\n  live-apply:\n    features:\n      - {id: feature-live}\n")
    done = run_cli("apply", "--data-dir", str(shared_cp.data_dir), str(file))
    assert done.returncode == 0, done.stderr
    with shared_cp.client() as c:
        assert [ch.id for ch in c.changes("live-apply").changes] == ["feature-live"]


def test_invalid_apply_file_writes_nothing_and_names_the_field(
    shared_cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(
        "environments:\n  bad-apply:\n    features:\n      - {id: feature-ok}\n"
        "    customers:\n      - {id: c1, archived: maybe}\n"
    )
    done = run_cli("apply", "--data-dir", str(shared_cp.data_dir), str(file))
    assert done.returncode == 2
    assert "customers[0]" in done.stderr and "archived" in done.stderr
    with shared_cp.client() as c:
        assert c.changes("bad-apply").changes == []  # the valid feature was not applied either


def test_delete_of_a_missing_entity_in_a_file_is_skipped(
    shared_cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    file = tmp_path / "del.yaml"
    file.write_text("environments:\n  del-apply:\n    delete:\n      - {kind: feature, id: nope}\n")
    done = run_cli("apply", "--data-dir", str(shared_cp.data_dir), str(file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 0

"""The fault run as a pytest test (part of `make test`; `make faults` runs it alone): the
local stack under load from the
official `stigg` SDK while the API, the stream processor, the broker, the S3 server and the
warehouse are each SIGKILLed `BYOC_FAULT_ROUNDS` times (default 3) at seeded random moments;
then an exact reconciliation.

Replay a failing seed: `BYOC_FAULT_SEED=<seed> make faults` or
`.venv/bin/python -m tests.faults.fault_run --dir /tmp/faults --seed <seed>` (keeps the logs).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults.fault_run import DEFAULT_SEED, VICTIMS, run

SEED = int(os.environ.get("BYOC_FAULT_SEED", DEFAULT_SEED))
ROUNDS = int(os.environ.get("BYOC_FAULT_ROUNDS", "3"))


def test_every_acknowledged_event_is_stored_once_across_kills(tmp_path: Path) -> None:
    base = Path(os.environ.get("BYOC_FAULT_DIR") or tmp_path)
    result = run(base, SEED, ROUNDS, say=lambda m: print(m, flush=True))
    figures = result.figures
    # Every component really died ROUNDS times while the load ran.
    assert figures.kills >= len(VICTIMS) * ROUNDS, figures.kills_by_component
    assert all(figures.kills_by_component.get(v, 0) >= ROUNDS for v in VICTIMS)
    assert figures.acked > 0 and figures.stored > 0
    assert figures.extra["credits"]["acked"] > 0
    # Invariants 1 and 2: nothing acknowledged is lost, nothing is counted twice or invented.
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert figures.phantom == 0
    assert figures.stored == figures.acked + figures.unacked_stored
    # Minute aggregates, hourly rollups, enforcement counters and credits reconcile exactly.
    failed = {kind: found[:5] for kind, found in result.problems.items() if found}
    assert not failed, f"seed {SEED} (replay with BYOC_FAULT_SEED={SEED}): {failed}"

"""Launching and following asset backfills through the Dagster GraphQL API.

The same API the UI uses (``launchPartitionBackfill`` with an asset selection and partition
names), so a backfill started here is the same object as one started from the UI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted
            numPartitionsInProgress
            numPartitionsMaterialized
            numPartitionsFailed
          }
        }
      }
    }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}
"""

DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}


class BackfillError(Exception):
    """The backfill could not be launched or followed."""


@dataclass
class BackfillStatus:
    backfill_id: str
    status: str
    targeted: int  # asset partitions targeted (assets x partitions)
    materialized: int
    failed: int
    in_progress: int

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED


class DagsterBackfills:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DagsterBackfills:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post("/graphql", json={"query": query, "variables": variables})
        except httpx.HTTPError as exc:
            raise BackfillError(
                f"Dagster at {self._http.base_url} unreachable: {exc!r} (is the stack up? "
                "`byoc up`)"
            ) from exc
        if response.status_code != 200:
            raise BackfillError(f"Dagster answered {response.status_code}: {response.text[:300]}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not ("data" in body or "errors" in body):
            raise BackfillError(
                f"{self._http.base_url} answered no GraphQL (is it Dagster?): {response.text[:200]}"
            )
        if body.get("errors"):
            raise BackfillError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def launch(self, assets: list[str], partitions: list[str], title: str = "") -> str:
        params = {
            "assetSelection": [{"path": [a]} for a in assets],
            "partitionNames": partitions,
            "title": title or f"byoc backfill {partitions[0]}..{partitions[-1]}",
        }
        result = self._graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
        return result["backfillId"]

    def status(self, backfill_id: str) -> BackfillStatus:
        result = self._graphql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
        counts = [
            s for s in (result.get("assetBackfillData") or {}).get("assetBackfillStatuses", []) if s
        ]
        return BackfillStatus(
            backfill_id=backfill_id,
            status=result["status"],
            targeted=sum(s["numPartitionsTargeted"] for s in counts),
            materialized=sum(s["numPartitionsMaterialized"] for s in counts),
            failed=sum(s["numPartitionsFailed"] for s in counts),
            in_progress=sum(s["numPartitionsInProgress"] for s in counts),
        )

    def wait(
        self,
        backfill_id: str,
        timeout_s: float,
        on_status: Callable[[BackfillStatus], None] = lambda s: None,
        poll_s: float = 2.0,
    ) -> BackfillStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(backfill_id)
            on_status(status)
            if status.done:
                return status
            if time.monotonic() > deadline:
                raise BackfillError(
                    f"backfill {backfill_id} not done after {timeout_s:.0f}s ({status.status})"
                )
            time.sleep(poll_s)

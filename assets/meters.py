"""Which raw events feed which feature: the meters of the control plane's catalog.

A rollup row is per feature, and a feature's ``meter`` (catalog.Meter: eventName, aggregation,
field) says how its events aggregate. The meters come from the control plane's change feed
(folded into a snapshot of the environment's features), read when an hour is rolled up; the
rollup records the meters it used, so its reconciliation recomputes with the same ones even
if the catalog changes later.

Only COUNT and SUM add up across hours, so only they are published as hourly DELTAs; MAX and
UNIQUE are rolled up (and reconciled) per hour but not published (publishing an hourly maximum
as a delta would bill the sum of maxima).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from byoc_platform.catalog import Aggregation, Change, Feature, decode_entity

if TYPE_CHECKING:
    from byoc_platform.control_plane.client import ControlPlaneClient

ADDITIVE: frozenset[str] = frozenset({"COUNT", "SUM"})


class MeterSpec(msgspec.Struct, frozen=True, order=True):
    feature_id: str
    event_name: str
    aggregation: Aggregation
    field: str = ""  # numeric value for SUM/MAX, label for UNIQUE, '' for COUNT

    @property
    def additive(self) -> bool:
        return self.aggregation in ADDITIVE


def features_from_changes(changes: Iterable[Change]) -> dict[str, Feature]:
    """Fold a change feed (from the start) into the current features by id."""
    features: dict[str, Feature] = {}
    for change in changes:
        if change.kind != "feature":
            continue
        if change.op == "delete":
            features.pop(change.id, None)
        else:
            entity = decode_entity("feature", change.data)
            assert isinstance(entity, Feature)
            features[change.id] = entity
    return features


def meters_of(features: Iterable[Feature]) -> list[MeterSpec]:
    """The metered features' meters, sorted; a SUM/MAX/UNIQUE meter needs a field."""
    meters = []
    for feature in features:
        meter = feature.meter
        if meter is None:
            continue
        if meter.aggregation != "COUNT" and not meter.field:
            continue  # unusable meter: nothing to aggregate
        meters.append(
            MeterSpec(
                feature_id=feature.id,
                event_name=meter.eventName,
                aggregation=meter.aggregation,
                field="" if meter.aggregation == "COUNT" else (meter.field or ""),
            )
        )
    return sorted(meters)


def fetch_meters(client: ControlPlaneClient, environment: str) -> list[MeterSpec]:
    return meters_of(features_from_changes(client.iter_changes(environment, limit=5000)).values())


def fetch_feature_ids(client: ControlPlaneClient, environment: str) -> set[str]:
    return set(features_from_changes(client.iter_changes(environment, limit=5000)))


def encode_meters(meters_by_env: dict[str, list[MeterSpec]]) -> str:
    return msgspec.json.encode(meters_by_env).decode()


def decode_meters(text: str) -> dict[str, list[MeterSpec]]:
    if not text:
        return {}
    return msgspec.json.decode(text, type=dict[str, list[MeterSpec]])

"""How catalog entities get into the store: validation, the seed, and offline apply files.

An entities file (the seed, or a file for ``python -m byoc_platform.control_plane apply``)::

    environments:
      development:
        currencies: [{id: credits, displayName: AI credits}]
        features: [...]
        plans: [...]        # also: addons, customers, subscriptions, grants, budgets
        delete:             # optional: entities to remove
          - {kind: feature, id: feature-old}

Every entity is validated with ``catalog.decode_entity`` plus a check for unknown field names
(msgspec ignores them, and a misspelt ``usageLimt`` would silently mean "no limit"). Upserts are
applied in dependency order (currencies and features before the plans that entitle them, ...),
so a consumer replaying the change feed never sees a reference before its target.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from byoc_platform.catalog import ENTITY_TYPES, Change, decode_entity
from byoc_platform.control_plane.store import CatalogOp, Delete, Store, Upsert
from byoc_platform.environments import environment_problem

log = logging.getLogger(__name__)

DEFAULT_SEED = Path(__file__).with_name("seed.yaml")
SEED_MARKER = "seed"

# Section name in a file -> entity kind, in the order they are applied.
SECTIONS: dict[str, str] = {
    "currencies": "currency",
    "features": "feature",
    "plans": "plan",
    "addons": "addon",
    "customers": "customer",
    "subscriptions": "subscription",
    "grants": "grant",
    "budgets": "budget",
}
# Path segment aliases accepted by the HTTP API: "feature" and "features" both work.
KINDS: dict[str, str] = {**{k: k for k in ENTITY_TYPES}, **SECTIONS}


class EntityError(ValueError):
    """An entity (or an entities file) is invalid; the message names where and which field."""


def check_environment(env: object) -> str:
    problem = environment_problem(env)
    if problem is not None:
        raise EntityError(problem)
    assert isinstance(env, str)
    return env


def validate_entity(kind: str, data: object, where: str = "") -> msgspec.Struct:
    """Decode ``data`` into the entity struct of ``kind`` or raise EntityError naming the field."""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise EntityError(f"{prefix}{kind} must be an object, got {type(data).__name__}")
    try:
        entity = decode_entity(kind, data)
    except msgspec.ValidationError as exc:
        raise EntityError(f"{prefix}{exc}") from None
    unknown = _unknown_field(mi.type_info(ENTITY_TYPES[kind]), data, "$")
    if unknown:
        raise EntityError(f"{prefix}unknown field - at `{unknown}`")
    if not entity.id:  # type: ignore[attr-defined]
        raise EntityError(f"{prefix}empty id - at `$.id`")
    for name in entity.__struct_fields__:
        value = getattr(entity, name)
        if (name.endswith("At") or name.endswith("Date")) and isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise EntityError(
                    f"{prefix}not an ISO-8601 timestamp: {value!r} - at `$.{name}`"
                ) from None
    return entity


def _unknown_field(t: mi.Type, value: Any, path: str) -> str | None:
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in t.fields}
        for key, item in value.items():
            if key not in fields:
                return f"{path}.{key}"
            found = _unknown_field(fields[key].type, item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            found = _unknown_field(member, value, path)
            if found:
                return found
    elif isinstance(t, mi.ListType) and isinstance(value, list):
        for i, item in enumerate(value):
            found = _unknown_field(t.item_type, item, f"{path}[{i}]")
            if found:
                return found
    return None


def parse_entities(doc: object, source: str) -> dict[str, list[CatalogOp]]:
    """Validate a parsed entities file; return the ops per environment, in apply order."""
    if not isinstance(doc, Mapping) or set(doc) != {"environments"}:
        raise EntityError(f"{source}: expected one top-level key `environments`")
    envs = doc["environments"]
    if not isinstance(envs, Mapping) or not envs:
        raise EntityError(f"{source}: `environments` must map environment ids to entities")
    result: dict[str, list[CatalogOp]] = {}
    for env, sections in envs.items():
        check_environment(env)
        sections = sections or {}
        if not isinstance(sections, Mapping):
            raise EntityError(f"{source}: environments.{env} must be a mapping")
        unknown = set(sections) - set(SECTIONS) - {"delete"}
        if unknown:
            raise EntityError(
                f"{source}: environments.{env}: unknown section(s) {sorted(unknown)}; "
                f"expected {[*SECTIONS, 'delete']}"
            )
        ops: list[CatalogOp] = []
        for section, kind in SECTIONS.items():
            items = sections.get(section) or []
            if not isinstance(items, list):
                raise EntityError(f"{source}: environments.{env}.{section} must be a list")
            seen: set[str] = set()
            for i, item in enumerate(items):
                where = f"{source}: environments.{env}.{section}[{i}]"
                entity = validate_entity(kind, item, where)
                if entity.id in seen:  # type: ignore[attr-defined]
                    raise EntityError(f"{where}: duplicate id {entity.id!r}")  # type: ignore[attr-defined]
                seen.add(entity.id)  # type: ignore[attr-defined]
                ops.append(Upsert(kind, entity))
        for i, item in enumerate(sections.get("delete") or []):
            where = f"{source}: environments.{env}.delete[{i}]"
            if not isinstance(item, Mapping) or set(item) != {"kind", "id"}:
                raise EntityError(f"{where}: expected {{kind, id}}")
            kind = KINDS.get(str(item["kind"]))
            if kind is None or not isinstance(item["id"], str) or not item["id"]:
                raise EntityError(f"{where}: unknown kind {item['kind']!r} or empty id")
            ops.append(Delete(kind, item["id"]))
        result[env] = ops
    return result


def read_entities_file(path: Path) -> tuple[dict[str, list[CatalogOp]], str]:
    """Parse and validate a YAML entities file; also return its sha256."""
    raw = Path(path).read_bytes()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise EntityError(f"{path}: not valid YAML: {exc}") from None
    return parse_entities(doc, str(path)), hashlib.sha256(raw).hexdigest()


def load_seed(store: Store, path: Path = DEFAULT_SEED) -> list[Change] | None:
    """Load the seed into an empty store, once: None when the store was already seeded."""
    batches, digest = read_entities_file(path)
    marker = msgspec.json.encode({"file": str(path), "sha256": digest}).decode()
    changes = store.write_catalog(batches, once_key=SEED_MARKER, once_value=marker)
    if changes is None:
        log.info("store already seeded; seed file not re-applied", extra={"fields": {}})
    else:
        log.info(
            "seed loaded",
            extra={"fields": {"seed": str(path), "changes": len(changes), "sha256": digest}},
        )
    return changes


def apply_file(store: Store, path: Path) -> list[Change]:
    """Apply an entities file to the store directly (works while the server is down).

    All environments are written in one transaction: the file applies entirely or not at all.
    """
    batches, _ = read_entities_file(path)
    changes = store.write_catalog(batches)
    assert changes is not None
    return changes

"""How the parts of the data flow plug into the core without the core importing them.

The core (`byoc_platform`) imports nothing from `streaming/`, `enforcement/` or `assets/`
(DESIGN.md section 2). The runtime API process and the `byoc` CLI discover those parts
through Python entry points declared in pyproject.toml:

- ``byoc.runtime``: a callable ``(RuntimeContext) -> RuntimeComponent``; each component adds
  routes to the runtime API (port 8080) and may run servers of its own in the same event loop
  (the SidecarService gRPC server on 8081).
- ``byoc.cli``: a ``typer.Typer`` whose commands are added to ``byoc`` (e.g. ``byoc stream``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.routing import BaseRoute

    from byoc_platform.auth import KeyStore
    from byoc_platform.events import UsageReport
    from byoc_platform.settings import Settings


class StartupError(RuntimeError):
    """A component cannot start for a reason the operator must fix (its message says how);
    the CLI prints it without a traceback and exits 1."""


@dataclass(frozen=True)
class UsageOutcome:
    """What the owner of the usage counters answers for one aggregated usage report."""

    current_usage: float | None = None
    usage_period_start: int | None = None  # epoch milliseconds UTC
    usage_period_end: int | None = None
    next_reset_date: int | None = None


@runtime_checkable
class UsageApplier(Protocol):
    """Applies aggregated usage (REST /api/v2/usage, GraphQL ReportUsage) to usage counters.

    Registered in ``RuntimeContext.hooks.usage`` by the component that owns the counters
    (enforcement). Ingestion calls :meth:`validate_usage` before anything is written, logs the
    reports durably to Kafka, then calls :meth:`apply_usage` and answers with its outcomes.
    """

    def validate_usage(
        self, environment: str, reports: Sequence[UsageReport], path: str = "usages"
    ) -> None:
        """Raise ``byoc_platform.api_errors.ApiError`` (e.g. 404 unknown feature) to refuse,
        naming the item as the caller sent it: ``path`` is the list (``usages``,
        ``input.usages``) or, for a single usage, the object (``input``)."""
        ...

    async def apply_usage(
        self, environment: str, reports: Sequence[UsageReport]
    ) -> list[UsageOutcome]:
        """Apply the (already durable) reports; one outcome per report, in order."""
        ...


@dataclass
class RuntimeHooks:
    """Optional services one component offers the others in the same process."""

    usage: UsageApplier | None = None


@dataclass(frozen=True)
class RuntimeContext:
    """What the runtime process hands every component."""

    settings: Settings
    registry: CollectorRegistry  # register Prometheus metrics here (served on /metrics)
    keys: KeyStore  # API keys -> environment (auth is done by the runtime already)
    hooks: RuntimeHooks = field(default_factory=RuntimeHooks)


@runtime_checkable
class RuntimeComponent(Protocol):
    """One part of the runtime API process.

    Routes see ``request.state.environment``: the environment of the caller's API key (the
    runtime authenticates every route except health, metrics and openapi before the route runs).
    """

    name: str

    def routes(self) -> list[BaseRoute]: ...

    def openapi_paths(self) -> dict[str, Any]:
        """OpenAPI 3.1 ``paths`` entries describing :meth:`routes`."""
        ...

    async def startup(self) -> None: ...

    async def shutdown(self) -> None:
        """Stop accepting, flush what was accepted, release resources."""
        ...

    def ready(self) -> tuple[bool, str]:
        """(ready, reason): readiness of the component's dependencies (e.g. broker reachable)."""
        ...


RuntimeFactory = Callable[[RuntimeContext], RuntimeComponent]


def runtime_factories() -> dict[str, RuntimeFactory]:
    return {ep.name: ep.load() for ep in entry_points(group="byoc.runtime")}


def cli_extensions() -> dict[str, Any]:
    return {ep.name: ep.load() for ep in entry_points(group="byoc.cli")}

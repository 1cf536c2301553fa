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

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.routing import BaseRoute

    from byoc_platform.auth import KeyStore
    from byoc_platform.settings import Settings


@dataclass(frozen=True)
class RuntimeContext:
    """What the runtime process hands every component."""

    settings: Settings
    registry: CollectorRegistry  # register Prometheus metrics here (served on /metrics)
    keys: KeyStore  # API keys -> environment (auth is done by the runtime already)


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

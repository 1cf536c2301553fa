"""How the parts of the data flow plug into the core without the core importing them.

The core (`byoc_platform`) imports nothing from `streaming/`, `enforcement/` or `assets/`
(DESIGN.md section 2). The runtime API process and the `byoc` CLI discover those parts
through Python entry points declared in pyproject.toml:

- ``byoc.runtime``: a callable ``(settings) -> RuntimeComponent``; each component adds routes
  to the runtime API (port 8080) and may run servers of its own in the same event loop
  (the SidecarService gRPC server on 8081).
- ``byoc.cli``: a ``typer.Typer`` whose commands are added to ``byoc`` (e.g. ``byoc stream``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from byoc_platform.settings import Settings


@runtime_checkable
class RuntimeComponent(Protocol):
    """One part of the runtime API process."""

    name: str

    def routes(self) -> list[BaseRoute]:
        """Starlette routes; auth is applied by the runtime (``request.state.environment``)."""
        ...

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


RuntimeFactory = Callable[["Settings"], RuntimeComponent]


def runtime_factories() -> dict[str, RuntimeFactory]:
    return {ep.name: ep.load() for ep in entry_points(group="byoc.runtime")}


def cli_extensions() -> dict[str, Any]:
    return {ep.name: ep.load() for ep in entry_points(group="byoc.cli")}

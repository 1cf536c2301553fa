"""`byoc stream`: the embedded stream processor (dedup + 1-minute aggregation).

Until the processor lands this is a placeholder that serves its health and metrics port so the
stack supervisor can start and probe it.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer()


@app.command()
def stream(
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Data directory.")] = None,
) -> None:
    """Run the stream processor (consumer group on usage.events)."""
    import asyncio
    from pathlib import Path

    import uvicorn
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from byoc_platform import logs
    from byoc_platform.settings import Settings

    settings = Settings(data_dir=Path(data_dir)) if data_dir else Settings()
    logs.configure("stream", settings.log_level)

    async def healthz(request: object) -> JSONResponse:
        return JSONResponse({"status": "ok", "processor": "placeholder"})

    async def metrics(request: object) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    web = Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])
    config = uvicorn.Config(web, host=settings.host, port=settings.ports.stream, log_config=None)
    asyncio.run(uvicorn.Server(config).serve())

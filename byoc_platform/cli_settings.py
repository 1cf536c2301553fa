"""What every `byoc` command shares: the --data-dir option and loading the settings with an
error naming the bad setting (core commands and those added through ``byoc.cli`` entry points).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from byoc_platform.settings import Settings

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $BYOC_DATA_DIR or ./.byoc)."),
]


def load_settings(data_dir: Path | None = None, console: Console | None = None) -> Settings:
    try:
        return Settings(data_dir=data_dir) if data_dir else Settings()
    except Exception as exc:  # pydantic ValidationError: say which setting is wrong
        (console or Console(stderr=True)).print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc

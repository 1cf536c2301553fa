"""What every `byoc` command shares: the --data-dir option and loading the settings with an
error naming the bad setting (core commands and those added through ``byoc.cli`` entry points).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console

from byoc_platform.settings import Settings

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $BYOC_DATA_DIR or ./.byoc)."),
]


# BYOC_* variables that are not settings: the config file's path and the test suites' seeds.
NOT_SETTINGS = frozenset({"BYOC_CONFIG_FILE", "BYOC_FUZZ_SEED", "BYOC_FAULT_SEED"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """BYOC_* variables that name no setting (pydantic-settings ignores them silently, so a
    typo such as BYOC_PORT__API would change nothing)."""
    known = set(NOT_SETTINGS)
    for name, field in Settings.model_fields.items():
        known.add(f"BYOC_{name.upper()}")
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            known.update(f"BYOC_{name.upper()}__{sub.upper()}" for sub in model.model_fields)
    return sorted(k for k in environ if k.upper().startswith("BYOC_") and k.upper() not in known)


def load_settings(data_dir: Path | None = None, console: Console | None = None) -> Settings:
    console = console or Console(stderr=True)
    unknown = unknown_variables(os.environ)
    if unknown:
        console.print(f"[yellow]ignoring unknown settings:[/yellow] {', '.join(unknown)}")
    config_file = os.environ.get("BYOC_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        console.print(f"[red]invalid configuration:[/red] BYOC_CONFIG_FILE: no file {config_file}")
        raise typer.Exit(2)
    try:
        return Settings(data_dir=data_dir) if data_dir else Settings()
    except Exception as exc:  # pydantic ValidationError: say which setting is wrong
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def running_stack_settings(settings: Settings) -> Settings:
    """The settings the stack of ``settings.data_dir`` was started with (the file its
    supervisor wrote for its children), so that probes reach the ports it really uses; the
    given settings when no stack has run there."""
    path = settings.stack_settings_file
    try:
        data = yaml.safe_load(path.read_text())
        return Settings(**data) if isinstance(data, dict) else settings
    except FileNotFoundError:
        return settings
    except Exception as exc:  # unreadable or from another version: say so, use ours
        Console(stderr=True).print(f"[yellow]ignoring {path}: {exc}[/yellow]")
        return settings

"""The project's Prefect settings (``prefect.toml`` at the repository root) wherever a flow starts.

In:  the repository's ``prefect.toml`` (e.g. ``[server.ephemeral] startup_timeout_seconds``).
Out: :func:`use_project_settings` makes the running process see those values, also when it was
     started from another folder (Prefect reads ``prefect.toml`` from the working directory only).

Each value becomes the default of its environment variable (``server.ephemeral.startup_timeout_seconds``
-> ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``), so a variable already set wins, as it does
over ``prefect.toml`` when Prefect runs from the repository root. Call it first in a ``main()``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

PROJECT_SETTINGS_FILE = Path(__file__).resolve().parents[2] / "prefect.toml"


def project_settings(path: Path = PROJECT_SETTINGS_FILE) -> dict[str, str]:
    """``{PREFECT_ENVIRONMENT_VARIABLE: value}`` from a ``prefect.toml`` (none if it is missing)."""
    if not path.is_file():
        return {}
    with open(path, "rb") as handle:
        return dict(_flatten(tomllib.load(handle), "PREFECT"))


def use_project_settings() -> dict[str, str]:
    """Apply the project's settings as environment defaults and refresh Prefect's settings; return them."""
    settings = project_settings()
    for name, value in settings.items():
        os.environ.setdefault(name, value)
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # Prefect read its settings when it was imported
    return settings


def _flatten(table: dict[str, Any], prefix: str):
    for key, value in table.items():
        name = f"{prefix}_{key.upper()}"
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, str(value).lower() if isinstance(value, bool) else str(value)

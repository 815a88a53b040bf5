"""Read-only access to an appliance home for the tools (status, inspect, verify).

The log is always readable (readers never block the writer). DuckDB lets only one process
open the store file, so when the owning process holds it the tools fall back to the
``status.json`` snapshot that the owner publishes after every commit.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dssync import config as cfgmod
from dssync.consumers.store import Store
from dssync.errors import LockedError, NotFoundError
from dssync.layout import store_dir


def open_config(home: str) -> cfgmod.Config:
    return cfgmod.load(home)


def open_store_reader(home: str) -> Store | None:
    """The store opened read-only, or None when another process owns it.

    A replay swaps the rebuilt store in with two renames; between them the previous store
    sits in ``store.old`` and is read from there.
    """
    directory = store_dir(home)
    if not os.path.exists(os.path.join(directory, "store.duckdb")):
        directory += ".old"
        if not os.path.exists(os.path.join(directory, "store.duckdb")):
            raise NotFoundError(f"no store in {home}", hint="create the home with 'dssync init'")
    try:
        return Store(directory, read_only=True)
    except LockedError:
        return None


def snapshot(home: str) -> dict[str, Any]:
    """The last status the store's owner published."""
    try:
        with open(os.path.join(store_dir(home), "status.json"), encoding="utf-8") as f:
            doc: dict[str, Any] = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        raise LockedError(
            f"the store at {home} is in use and has published no status yet",
            hint="retry in a moment",
        ) from None
    doc["source"] = "snapshot"
    return doc

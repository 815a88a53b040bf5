"""Shared output helpers: JSON or human text, byte sizes, and progress bars on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import click


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def table(rows: list[tuple[str, Any]]) -> None:
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        click.echo(f"{k.ljust(width)}  {v}")


@contextmanager
def progress(label: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only on a terminal); yields the function that advances it."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    bar: Any
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


class LazyProgress:
    """A progress bar whose total is known only once the work has begun (``start``)."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled and sys.stderr.isatty()
        self._cm: AbstractContextManager[Callable[[int], None]] | None = None
        self._bar: Callable[[int], None] | None = None

    def start(self, total: int) -> None:
        if self.enabled and self._cm is None:
            self._cm = progress(self.label, total)
            self._bar = self._cm.__enter__()

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar(n)

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._bar = None

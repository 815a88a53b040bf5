"""A pair of real appliances for the tests (see dssync.bench.localpair)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dssync.bench import workload
from dssync.bench.localpair import SECRET, Node, dss, wait_converged
from dssync.bench.localpair import make_pair as _make_pair

__all__ = ["SECRET", "Node", "dss", "make_pair", "release", "wait_alarm", "wait_converged"]


def make_pair(tmp_path: Path, **kwargs: object) -> tuple[Node, Node]:
    return _make_pair(str(tmp_path), **kwargs)  # type: ignore[arg-type]


def release(tmp_path: Path, seed: int, size: int, count: int) -> list[str]:
    """``count`` successive versions of a synthetic release, written to files."""
    out = []
    for i, data in enumerate(workload.versions(seed, size, count)):
        p = tmp_path / f"r{seed}-{i}.tar"
        p.write_bytes(data)
        out.append(str(p))
    return out


def wait_alarm(home: str, alarm: str, timeout: float = 30) -> dict[str, Any]:
    """The raised ``alarm`` of a running appliance, as 'dssync lag --json' shows it, once the
    monitor has raised it (it evaluates every interval_s); fails after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        raised = {x["alarm"]: x for x in json.loads(dss("lag", home, "--json", check=False).stdout)["alarms"]}
        if alarm in raised or time.time() > deadline:
            assert alarm in raised, f"{alarm} not raised in {timeout} s: {raised}"
            found: dict[str, Any] = raised[alarm]
            return found
        time.sleep(0.5)

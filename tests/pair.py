"""A pair of real appliances for the tests (see dssync.tools.localpair)."""

from __future__ import annotations

from pathlib import Path

from dssync.tools import workload
from dssync.tools.localpair import SECRET, Node, dss, wait_converged
from dssync.tools.localpair import make_pair as _make_pair

__all__ = ["SECRET", "Node", "dss", "make_pair", "release", "wait_converged"]


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

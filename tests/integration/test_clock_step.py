"""One appliance's clock stepped an hour, forward or back, while the pair runs: the link carries
on (the caller adopts the peer's clock from its signed answer), both keep optimizing, and the
pair converges. The clock is stepped by libfaketime (Debian's faketime, installed by ./run test)
in the backup's real processes; the master's clock is the machine's."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path

import pytest

from tests.pair import Node, dss, make_pair, release, wait_converged


def _faketime(tmp_path: Path) -> tuple[dict[str, str], Path]:
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime is missing: ./run test installs it (apt-get install faketime)"
    offset = tmp_path / "clock-offset"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": libs[0], "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_CACHE_DURATION": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return env, offset


@pytest.mark.parametrize("step", ["+3600", "-3600"])
def test_a_pair_converges_when_one_clock_steps_an_hour(tmp_path: Path, running: list[Node], step: str) -> None:
    env, offset = _faketime(tmp_path)
    a, b = make_pair(tmp_path)
    running.extend((a, b))
    a.start_all()
    for what in ("serve", "mirror"):
        b.start(what, env=env)
    r = release(tmp_path, 81, 300_000, 4)
    a.ingest(r[0])
    wait_converged(a, b)

    offset.write_text(f"{step}\n")  # the backup's clock steps (read again within a second)
    time.sleep(2)
    a.ingest(r[1])
    b.ingest(r[2])
    a.ingest(r[3])
    wait_converged(a, b, timeout=90)  # identical stores, each holding all the other wrote

    for n in (a, b):
        assert json.loads(dss("verify", n.home, "--json").stdout)["ok"]
        for what in ("serve", "mirror"):
            assert "Traceback" not in n.log(what)
    # the side whose requests were refused for their clock adopted the peer's, and said so
    said = a.log("mirror") + b.log("mirror") + a.log("serve") + b.log("serve")
    assert "signing our requests with its clock" in said
    # the side that saw the other's events an hour ahead followed them only MAX_DRIFT
    ahead = a if step.startswith("+") else b
    status = json.loads(dss("status", ahead.home, "--json").stdout)
    assert status["sync"]["clock_observations_bounded"] > 0

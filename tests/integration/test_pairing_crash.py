"""Pairing activation killed at each of its steps (named crash points), then run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from dssync.crashpoint import ENV
from dssync.log.filelog import FileLog
from dssync.process import command
from dssync.schemas import codec
from tests.pair import Node, dss, make_pair, release, wait_converged

POINTS = ["pairing.planned", "pairing.store-removed", "pairing.old-log-renamed", "pairing.new-log-created",
          "pairing.reset-appended", "pairing.reset-applied", "pairing.saved"]


@pytest.mark.parametrize("point", POINTS)
def test_a_backup_killed_during_activation_pairs_when_started_again(tmp_path: Path, running: list[Node],
                                                                     point: str) -> None:
    a, b = make_pair(tmp_path)
    r = release(tmp_path, 61, 400_000, 2)
    a.ingest(r[0])
    b.ingest(r[1])  # the backup's own data: discarded at pairing
    old_end = FileLog(os.path.join(b.home, "log")).end_offset()
    running.extend((a, b))
    a.start_all()
    with open(Path(b.logs) / "shb.serve.log", "ab") as log:
        p = subprocess.run([*command(), "serve", b.home], stdout=log, stderr=log, timeout=300,
                           env={**os.environ, ENV: point})
    assert p.returncode == -signal.SIGKILL, b.log("serve")[-2000:]  # killed at the point, nowhere else
    b.start_all()  # activation runs again from its record, to the end
    wait_converged(a, b)
    assert not os.path.exists(os.path.join(b.home, "run", "pairing.json"))
    doc = json.loads(dss("status", b.home, "--json").stdout)
    assert doc["sync"]["state"] == "active"
    assert doc["store"]["store_id"] == json.loads(dss("status", a.home, "--json").stdout)["store"]["store_id"]
    own = FileLog(os.path.join(b.home, "log"))
    assert own.start_offset() == old_end  # the new log continues the old one's offsets, none reused
    events = [codec.decode(rec.value)["type"] for rec in own.read(old_end, 100_000)]
    assert events.count("StoreReset") == 1  # appended once, whatever run of the activation did it
    for n in (a, b):
        assert json.loads(dss("verify", n.home, "--json").stdout)["ok"]
    assert "Traceback" not in b.log("serve") and "Traceback" not in b.log("mirror")

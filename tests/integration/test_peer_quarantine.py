"""A CRC-valid record from the peer that cannot be applied: set aside with an alarm, the rest applied."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dssync.log import batch as batchfmt
from dssync.log.filelog import FileLog
from dssync.tools.control import ControlClient
from tests.pair import Node, dss, release, started_pair, wait_alarm, wait_converged


def test_a_malformed_peer_record_is_quarantined_with_an_alarm_and_the_sync_goes_on(
        tmp_path: Path, running: list[Node]) -> None:
    a, b = started_pair(tmp_path, running)
    r = release(tmp_path, 71, 300_000, 3)
    a.ingest(r[0])
    wait_converged(a, b)
    b.kill("mirror")
    a.ingest(r[1])
    mirror_dir = os.path.join(b.home, "mirror", "sha")
    at = FileLog(mirror_dir).end_offset()
    genuine = next(iter(FileLog(os.path.join(a.home, "log")).batches(at)))
    assert genuine.base_offset == at
    values = list(genuine.values())
    values[0] = values[0][:-5]  # the master's batch, its first record cut short, under a CRC that checks
    with FileLog(mirror_dir, writer=True) as mirror:
        mirror.append_raw(batchfmt.encode(at, genuine.timestamp_ms, values))
    b.start("mirror")
    raised = wait_alarm(b.home, "peer_data_quarantined", timeout=60)
    assert f"offset {at}" in raised["evidence"]
    (entry,) = [json.loads(p.read_text()) for p in (Path(b.home) / "quarantine").glob("*.json")]
    assert (entry["source"], entry["offset"]) == ("log:sha", at)
    # the sync goes on past it: what the master writes next reaches the backup's store
    a.ingest(r[2])
    end = FileLog(os.path.join(a.home, "log")).end_offset()
    ctl = ControlClient.for_home(b.home)
    assert ctl is not None
    deadline = time.time() + 60
    while ctl.offsets().get("log:sha", 0) < end:
        assert time.time() < deadline, "the backup stopped applying the master's log"
        time.sleep(0.2)
    assert b.ingest(r[2])["savings"] > 0.999  # the master's later data is in the backup's store
    report = json.loads(dss("verify", b.home, "--json").stdout)
    assert report["ok"] and report["events"]["quarantined"] == 1  # the projection skips what was set aside
    assert "set aside" in b.log("serve") and "Traceback" not in b.log("serve")
    assert f"log:sha offset {at}" in dss("status", b.home).stdout  # the operator sees it in status too

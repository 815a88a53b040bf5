"""The pair story with both appliances' logs on one real Kafka cluster (no mirror process)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dssync.bench.localpair import SECRET, Node, dss, free_port, wait_converged
from tests.pair import release

pytestmark = pytest.mark.kafka


def _kafka_pair(tmp_path: Path, broker: Any) -> tuple[Node, Node]:
    logs = str(tmp_path / "logs")
    os.makedirs(logs)
    prefix = f"pair{os.getpid()}-{tmp_path.name[:24]}."
    a = Node("sha", str(tmp_path / "sha"), free_port(), logs)
    b = Node("shb", str(tmp_path / "shb"), free_port(), logs)
    for n in (a, b):
        dss("init", n.home, "--name", n.name, "--model", "SH", "--version", "1", "--kafka", broker.bootstrap,
            "--kafka-topic-prefix", prefix)
    for n, peer, role in ((a, b, "master"), (b, a, "backup")):
        dss("sync", "configure", n.home, "--role", role, "--transport", "kafka-shared",
            "--peer", f"127.0.0.1:{peer.port}", "--listen", f"127.0.0.1:{n.port}", "--secret", SECRET)
    return a, b


def _verified(home: str) -> None:
    """``dssync verify HOME`` passes: the store is the projection of its own log and its peer's."""
    p = dss("verify", home, "--json", check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr


def test_a_pair_on_one_shared_cluster_converges_both_ways_and_fails_over(
        tmp_path: Path, running: list[Node], kafka_broker: Any) -> None:
    a, b = _kafka_pair(tmp_path, kafka_broker)
    r = release(tmp_path, 41, 2_000_000, 4)
    a.ingest(r[0])
    b.ingest(r[3])  # the backup's pre-pairing traffic is discarded at pairing
    running.extend((a, b))
    a.start("serve")
    b.start("serve")  # completes pairing: loads the master's snapshot, reads its topic after it
    wait_converged(a, b, timeout=120)
    assert b.status()["store"]["live_segment_bytes"] == a.status()["store"]["live_segment_bytes"]
    a.ingest(r[1])
    b.ingest(r[2])
    wait_converged(a, b, timeout=120)
    for n in (a, b):  # each store is the projection of its own topic and its peer's (service's view)
        _verified(n.home)
    a.stop_all()  # the master fails; the backup's warm store saves what the master would have
    _verified(a.home)  # the same, read offline
    assert b.ingest(r[1])["savings"] > 0.999

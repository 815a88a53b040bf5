"""The pair story with both appliances' logs on one real Kafka cluster (no mirror process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dssync.bench.localpair import Node, wait_converged
from tests.pair import kafka_pair, release, verified

pytestmark = pytest.mark.kafka


def test_a_pair_on_one_shared_cluster_converges_both_ways_and_fails_over(
        tmp_path: Path, running: list[Node], kafka_broker: Any) -> None:
    a, b = kafka_pair(tmp_path, "kafka-shared", kafka_broker)
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
        verified(n.home)
    a.stop_all()  # the master fails; the backup's warm store saves what the master would have
    verified(a.home)  # the same, read offline
    assert b.ingest(r[1])["savings"] > 0.999

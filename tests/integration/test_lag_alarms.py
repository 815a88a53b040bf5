"""Lag alarms end to end: real services and mirrors, a mirror really killed, a real webhook."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from dssync import config as cfgmod
from dssync.config import MonitorConfig
from tests.pair import dss, make_pair, wait_converged

RISING, RAISE_AFTER, INTERVAL = 3.0, 2.0, 1.0


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _lag(home: str) -> tuple[int, dict[str, Any]]:
    p = dss("lag", home, "--json", check=False)
    return p.returncode, json.loads(p.stdout)


def test_a_mirror_stopped_under_load_raises_alarms_that_clear_after_catch_up(
        tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = webhook
    a, b = make_pair(tmp_path)
    cfg = cfgmod.load(b.home)
    cfg.monitor = MonitorConfig(interval_s=INTERVAL, window_s=6, heartbeat_s=1, lag_seconds_rising=RISING,
                                lag_seconds_reset=1, lag_records_rising=1e12, lag_records_reset=1e12,
                                lag_bytes_rising=1e15, lag_bytes_reset=1e15, raise_after_s=RAISE_AFTER,
                                clear_after_s=2, notify_webhook=url)
    cfgmod.save(b.home, cfg)
    data = tmp_path / "traffic"
    stop_load = threading.Event()

    def load() -> None:
        i = 0
        while not stop_load.is_set():
            data.write_bytes(os.urandom(200_000) + str(i).encode())
            a.ingest(str(data))
            i += 1

    loader = threading.Thread(target=load)
    try:
        a.start_all()
        b.start_all()
        wait_converged(a, b)
        loader.start()
        _wait(lambda: _lag(b.home)[1]["paths"].get("mirror:sha", {}).get("status") == "ok", 60, "a healthy mirror")
        assert got == []  # nothing raised while everything works

        stopped_at = time.time()
        b.kill("mirror")
        raised = _wait(lambda: [e for e in got if e["kind"] == "raise" and e["alarm"] == "lag_seconds"
                                and e["path"] == "mirror:sha"], 60, "the lag alarm")[0]
        # raised no later than: the threshold, its minimum duration, one evaluation interval (+ scheduling)
        assert raised["at_ms"] / 1000 - stopped_at <= RISING + RAISE_AFTER + INTERVAL + 2.0
        _wait(lambda: any(e["alarm"] == "mirror_stopped" for e in got), 60, "the mirror-stopped alarm")
        # stalled (its position stuck) until its state is stale, then known to be stopped
        code, report = _wait(lambda: (lambda r: r if r[1]["paths"]["mirror:sha"]["status"] == "stopped" else None)(
            _lag(b.home)), 30, "the mirror to be seen stopped")
        assert code == 2
        assert {x["alarm"] for x in report["alarms"]} >= {"lag_seconds", "mirror_stopped"}
        metrics = json.loads((Path(b.home) / "run" / "serve.json").read_text())["metrics"]
        scraped = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
        assert 'dssync_alarm_active{alarm="mirror_stopped",appliance="shb",path="mirror:sha",severity="critical"} 1.0' \
            in scraped
        assert 'dssync_lag_seconds{appliance="shb",path="mirror",peer="sha"}' in scraped
        # the master's batches applied here so far, by latency (append there -> committed here)
        assert 'dssync_replication_latency_seconds_bucket{appliance="shb",le="0.05",peer="sha"}' in scraped
        assert 'dssync_replication_latency_seconds_count{appliance="shb",peer="sha"} 0.0' not in scraped

        stop_load.set()
        loader.join()
        b.start("mirror")
        _wait(lambda: {e["alarm"] for e in got if e["kind"] == "clear"} >= {"lag_seconds", "mirror_stopped"}, 90,
              "the alarms to clear")
        wait_converged(a, b)
        code, report = _lag(b.home)
        assert code == 0 and report["alarms"] == []
    finally:
        stop_load.set()
        if loader.is_alive():
            loader.join()
        a.stop_all()
        b.stop_all()
    incidents: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for e in got:
        incidents.setdefault((e["alarm"], e["path"]), []).append((e["kind"], e["incident"]))
    for key, events in incidents.items():  # exactly one raise and one clear each, same incident
        assert [k for k, _ in events] == ["raise", "clear"], key
        assert events[0][1] == events[1][1], key

"""Lag evaluation and alarms over recorded scenarios, with an injected clock (no processes)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dssync.config import MonitorConfig
from dssync.monitor.alarms import AlarmBook, AlarmSpec
from dssync.monitor.evaluate import PathWindow, Sample
from dssync.monitor.monitor import Monitor
from dssync.monitor.notify import Notifier
from dssync.process import command

CFG = MonitorConfig(interval_s=5, window_s=60, lag_seconds_rising=60, lag_seconds_reset=10,
                    lag_records_rising=10_000, lag_records_reset=100, raise_after_s=15, clear_after_s=15)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder(Notifier):
    """A notifier that keeps what it would deliver (delivery itself is tested below)."""

    def __init__(self, clock: Clock, max_per_hour: int = 30) -> None:
        super().__init__(max_per_hour=max_per_hour, clock=clock)
        self.delivered: list[Any] = []

    def deliver(self, event: Any, raise_was_delivered: bool = True) -> bool:
        ok = super().deliver(event, raise_was_delivered)
        if ok:
            self.delivered.append(event)
        return ok


def run(scenario: Callable[[float], Sample], seconds: float, cfg: MonitorConfig = CFG,
        book: str | None = None, max_per_hour: int = 30) -> tuple[Monitor, list[dict[str, Any]], Recorder]:
    """Evaluate ``scenario`` (time -> sample of path mirror:peer) every interval for ``seconds``."""
    clock = Clock()
    start = clock.t
    rec = Recorder(clock, max_per_hour)
    m = Monitor(cfg, "sha", lambda now: {"mirror:shb": scenario(now - start)}, book_path=book, notifier=rec,
                clock=clock)
    reports = []
    while clock.t - start <= seconds:
        reports.append(m.evaluate())
        clock.t += cfg.interval_s
    return m, reports, rec


def sample(t: float, end: int, pos: int, oldest_age: float | None = None, alive: bool | None = True,
           error: str = "") -> Sample:
    now = 1_800_000_000.0 + t
    lag = max(0, end - pos)
    oldest = None if oldest_age is None or not lag else int((now - oldest_age) * 1000)
    return Sample(now, end, pos, lag, lag * 8000, oldest, alive, error)


def statuses(reports: list[dict[str, Any]]) -> list[str]:
    return [r["paths"]["mirror:shb"]["status"] for r in reports]


def test_a_quiet_link_with_heartbeats_is_idle_or_ok_and_raises_nothing() -> None:
    def quiet(t: float) -> Sample:
        beats = int(t // 5)  # one heartbeat every 5 s, copied within a second
        behind = 1 if t % 5 < 0.5 else 0
        return sample(t, 100 + beats, 100 + beats - behind, oldest_age=0.3)

    m, reports, rec = run(quiet, 600)
    assert set(statuses(reports)) <= {"idle", "ok"}
    assert rec.delivered == [] and m.book.active() == []
    assert all(r["paths"]["mirror:shb"]["lag_seconds"] >= 0 for r in reports)


def test_a_link_without_any_record_is_idle_not_lagging() -> None:
    _m, reports, rec = run(lambda t: sample(t, 500, 500), 300)
    assert statuses(reports)[-1] == "idle" and rec.delivered == []
    assert reports[-1]["paths"]["mirror:shb"]["eta_seconds"] == 0.0


def test_steady_lag_that_keeps_pace_is_ok_and_below_thresholds_raises_nothing() -> None:
    _m, reports, rec = run(lambda t: sample(t, 1000 + int(t * 100), 500 + int(t * 100), oldest_age=5), 600)
    assert set(statuses(reports[3:])) == {"ok"} and rec.delivered == []


def test_a_stalled_consumer_is_stalled_and_raises_store_or_mirror_alarms_after_the_minimum_duration() -> None:
    # the source keeps appending; the consumer runs but its position is stuck at 500 from t=60
    def stall(t: float) -> Sample:
        pos = 500 + int(min(t, 60) * 100)
        return sample(t, 500 + int(t * 100), pos, oldest_age=max(0.0, t - 60))

    _m, reports, rec = run(stall, 300)
    st = statuses(reports)
    assert "stalled" in st
    kinds = {(e.kind, e.alarm) for e in rec.delivered}
    assert ("raise", "mirror_stopped") in kinds and ("raise", "lag_seconds") in kinds
    lag_raise = next(e for e in rec.delivered if e.alarm == "lag_seconds")
    # rising 60 s, held 15 s: raised no earlier than 60+60+15 s in, and within one interval of it
    assert 135 <= lag_raise.at - 1_800_000_000.0 <= 135 + CFG.interval_s
    assert "stuck" in reports[-1]["paths"]["mirror:shb"]["evidence"]


def test_a_consumer_loading_a_snapshot_is_ok_while_the_load_moves_and_stalled_once_it_stops() -> None:
    # a pairing: 1 M records behind from the start; the position moves only when the snapshot
    # of them is loaded, which starts at t=25, goes on at 10 k events/s until t=200, then hangs
    def loading(t: float) -> Sample:
        s = sample(t, 1_000_000 + int(t * 100), 0, oldest_age=600 + t)
        return s if t < 25 else dataclasses.replace(s, snapshot_events=int((min(t, 200) - 25) * 10_000))

    _m, reports, rec = run(loading, 400)
    st = statuses(reports)
    assert set(st[:20]) == {"ok"}
    assert "loading a snapshot" in reports[19]["paths"]["mirror:shb"]["evidence"]
    assert st[-1] == "stalled"
    first_stall = next(e.at for e in rec.delivered if e.alarm == "mirror_stopped") - 1_800_000_000.0
    assert first_stall > 200


def test_a_stopped_consumer_is_stopped_then_clears_once_caught_up_with_paired_incidents() -> None:
    def stop_then_resume(t: float) -> Sample:
        end = 500 + int(t * 100)
        if 60 <= t < 200:
            return sample(t, end, 6500, oldest_age=t - 60, alive=False)
        if t >= 200:  # restarted: catches up at 500 records/s
            pos = min(end, 6500 + int((t - 200) * 500))
            return sample(t, end, pos, oldest_age=0.5 if pos < end else None)
        return sample(t, end, end)

    m, reports, rec = run(stop_then_resume, 400)
    assert "stopped" in statuses(reports)
    assert statuses(reports)[-1] in ("ok", "idle")
    by_alarm: dict[str, list[Any]] = {}
    for e in rec.delivered:
        by_alarm.setdefault(e.alarm, []).append(e)
    assert [e.kind for e in by_alarm["mirror_stopped"]] == ["raise", "clear"]
    raise_, clear = by_alarm["mirror_stopped"]
    assert raise_.incident == clear.incident and raise_.severity == "critical"
    assert clear.at - 1_800_000_000.0 >= 200  # not before the mirror came back and caught up
    assert m.book.active() == []


def test_a_position_going_back_is_rewound_with_its_evidence() -> None:
    _m, reports, _rec = run(lambda t: sample(t, 1000, 900 if t < 30 else 100, oldest_age=1), 60)
    st = statuses(reports)
    assert "rewound" in st
    assert "from 900 to 100" in reports[st.index("rewound")]["paths"]["mirror:shb"]["evidence"]


def test_a_burst_shorter_than_the_minimum_duration_raises_nothing() -> None:
    def burst(t: float) -> Sample:
        if 100 <= t < 110:  # 10 s burst: 90 s old records waiting, above the 60 s threshold
            return sample(t, 100_000, 50, oldest_age=90)
        return sample(t, 100_000, 100_000)

    _m, _reports, rec = run(burst, 300)
    assert rec.delivered == []


def test_growing_lag_is_reported_as_growing() -> None:
    _m, reports, _rec = run(lambda t: sample(t, 1000 + int(t * 200), 1000 + int(t * 100), oldest_age=t / 2), 120)
    assert statuses(reports)[-1] == "growing"
    assert "never fell" in reports[-1]["paths"]["mirror:shb"]["evidence"]


def test_an_unmeasurable_path_is_unknown_and_changes_no_alarm() -> None:
    _m, reports, rec = run(lambda t: sample(t, 0, 0, error="peer unreachable"), 120)
    assert set(statuses(reports)) == {"unknown"} and rec.delivered == []
    assert reports[-1]["paths"]["mirror:shb"]["evidence"] == "peer unreachable"


def test_lag_in_seconds_is_never_negative_even_with_a_clock_ahead() -> None:
    s = Sample(1000.0, 10, 5, 5, 100, int(1005.0 * 1000))  # append time 5 s in our future
    assert s.lag_seconds == 0.0
    v = PathWindow().add(s)
    assert v.eta_seconds is None and v.rate is None  # unknown, never NaN


def test_hysteresis_a_value_between_reset_and_rising_neither_raises_nor_clears() -> None:
    book = AlarmBook([AlarmSpec("lag_seconds", "major", 60, 10, 0, 0)])
    assert book.update("lag_seconds", "p", 30, "", now=0) is None
    raised = book.update("lag_seconds", "p", 61, "", now=1)
    assert raised is not None and raised.kind == "raise"
    assert book.update("lag_seconds", "p", 30, "", now=2) is None  # still raised
    cleared = book.update("lag_seconds", "p", 10, "", now=3)
    assert cleared is not None and cleared.kind == "clear" and cleared.incident == raised.incident


def test_alarm_state_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "alarms.json")
    book = AlarmBook([AlarmSpec("mirror_stopped", "critical", 1, 0, 0, 0)], path)
    raised = book.update("mirror_stopped", "mirror:shb", 1, "stopped", now=0)
    assert raised is not None
    again = AlarmBook([AlarmSpec("mirror_stopped", "critical", 1, 0, 0, 0)], path)
    assert again.active()[0]["incident"] == raised.incident
    assert again.update("mirror_stopped", "mirror:shb", 1, "still", now=5) is None  # no second raise
    cleared = again.update("mirror_stopped", "mirror:shb", 0, "back", now=9)
    assert cleared is not None and cleared.incident == raised.incident


def test_notifications_over_the_rate_limit_are_suppressed_with_their_clears() -> None:
    cfg = MonitorConfig(interval_s=5, window_s=20, raise_after_s=0, clear_after_s=0, lag_seconds_rising=60,
                        lag_seconds_reset=10)

    def flapping(t: float) -> Sample:  # stopped for 5 s out of every 20
        if t % 20 < 5:
            return sample(t, 1000, 500, oldest_age=120, alive=False)
        return sample(t, 1000, 1000)

    m, _reports, rec = run(flapping, 400, cfg, max_per_hour=3)
    raises = [e for e in rec.delivered if e.kind == "raise"]
    clears = [e for e in rec.delivered if e.kind == "clear"]
    assert len({e.incident for e in raises}) <= 3
    assert {e.incident for e in clears} <= {e.incident for e in raises}  # never a clear without its raise
    assert m.notifier.suppressed > 0


def test_a_raise_and_its_clear_reach_a_webhook_and_a_command(tmp_path: Path,
                                                             webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = webhook
    out = tmp_path / "events.jsonl"
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\ncat >> {out}\necho >> {out}\necho "$DSSYNC_ALARM_KIND" >> {tmp_path}/kinds\n')
    script.chmod(0o755)
    n = Notifier(command=str(script), webhook=url)
    book = AlarmBook([AlarmSpec("retention_gap", "major", 1, 0, 0, 0)], appliance="sha")
    raised = book.update("retention_gap", "mirror:shb", 1, "120 events not copied", now=1)
    cleared = book.update("retention_gap", "mirror:shb", 0, "repaired", now=2)
    assert raised is not None and cleared is not None
    assert n.deliver(raised) and n.deliver(cleared, raise_was_delivered=True)
    n.close(timeout=30)
    assert [(e["kind"], e["alarm"], e["incident"]) for e in got] == \
           [("raise", "retention_gap", raised.incident), ("clear", "retention_gap", raised.incident)]
    assert got[0]["appliance"] == "sha" and got[0]["evidence"] == "120 events not copied"
    lines = [json.loads(x) for x in out.read_text().split("\n") if x.strip()]
    assert [x["kind"] for x in lines] == ["raise", "clear"]
    assert (tmp_path / "kinds").read_text().split() == ["raise", "clear"]


def test_thresholds_come_from_the_appliance_configuration(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dssync import config as cfgmod
    from dssync.tools.cli import cli

    home = str(tmp_path / "sh1")
    assert CliRunner().invoke(cli, ["init", home, "--name", "sh1", "--model", "M", "--version", "1"]).exit_code == 0
    cfg = cfgmod.load(home)
    cfg.monitor.lag_seconds_rising, cfg.monitor.lag_seconds_reset = 120.0, 30.0
    cfgmod.save(home, cfg)
    assert "lag_seconds_rising = 120.0" in (tmp_path / "sh1" / "dssync.toml").read_text()
    assert cfgmod.load(home).monitor.lag_seconds_rising == 120.0
    cfg.monitor.lag_seconds_reset = 500.0
    with pytest.raises(Exception, match="reset is above"):
        cfgmod.save(home, cfg)


class _FakePeer:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        assert path == "/v1/digest"
        return 200, {}, json.dumps(self.doc).encode()

    def close(self) -> None:
        pass


def _probes_over(tmp_path: Path, rows: int) -> Any:
    """ServiceProbes over a real store holding ``rows`` events of log:sha (no service process)."""
    import os
    import types

    from dssync.consumers.store import Store
    from dssync.log.base import LogRecord
    from dssync.monitor.probes import ServiceProbes
    from dssync.producers.hierarchy import segment_ref
    from dssync.schemas import encode_segment_stored, origin_field

    store = Store(str(tmp_path / "store"), create=True, fsync=False)
    of = origin_field("sha")
    data = [os.urandom(64) for _ in range(rows)]
    store.apply("log:sha", [LogRecord(i, 0, encode_segment_stored(of, (1 << 40) + i, segment_ref(d), d))
                            for i, d in enumerate(data)])
    svc = types.SimpleNamespace(digest_snapshot=lambda: (store.digest(), store.offsets()))  # all _digests asks
    return ServiceProbes(svc), store  # type: ignore[arg-type]


def test_the_pair_digests_are_compared_once_caught_up_and_a_difference_raises_an_alarm(tmp_path: Path) -> None:
    probes, store = _probes_over(tmp_path, 50)
    mine, offsets = store.digest(), store.offsets()
    caught_up = {"store:sha": {"lag_records": 0, "status": "idle"}, "mirror:shb": {"lag_records": 0, "status": "ok"}}
    behind = {**caught_up, "mirror:shb": {"lag_records": 7, "status": "ok"}}
    probes._client = _FakePeer({"digest": mine.value, "rows": mine.rows, "offsets": offsets})
    t = 1_800_000_000.0
    assert probes._digests(t, behind)[0] is None  # not compared while a path is behind
    assert probes._digests(t + 1, caught_up)[0] == 0.0
    probes._client = _FakePeer({"digest": "0" * 32, "rows": mine.rows, "offsets": offsets})
    assert probes._digests(t + 2, caught_up)[0] == 0.0  # compared at most once a minute
    value, evidence = probes._digests(t + 100, caught_up)
    assert value == 1.0 and "differ" in evidence
    probes._client = _FakePeer({"digest": "0" * 32, "rows": 1, "offsets": {"log:sha": 3}})
    assert probes._digests(t + 200, caught_up)[0] is None  # other offsets: not comparable
    book = AlarmBook([AlarmSpec("digest_mismatch", "critical", 1, 0, 0, 0)])
    event = book.update("digest_mismatch", "pair", value, evidence, now=t + 100)
    assert event is not None and event.kind == "raise" and event.severity == "critical"
    store.close()


def test_lag_watch_reprints_every_interval_and_stops_on_interrupt_with_the_worst_status(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from dssync import config as cfgmod
    from tests.conftest import run_dssync

    home = str(tmp_path / "sh1")
    run_dssync("init", home, "--name", "sh1", "--model", "M", "--version", "1")
    cfg = cfgmod.load(home)
    cfg.monitor.interval_s = 0.5
    cfgmod.save(home, cfg)
    # as from a terminal: a test run started in the background inherits SIGINT ignored
    proc = subprocess.Popen([*command(), "lag", home, "--watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # idle, no service: nothing waiting, nothing raised
    assert out.count("sh1: worst status idle") >= 2 and "Traceback" not in err

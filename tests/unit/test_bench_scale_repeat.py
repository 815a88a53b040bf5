"""bench scale --repeat: a size's figures are the medians of its runs, its memory the highest."""

from __future__ import annotations

from typing import Any

from dssync.bench.scale import combine_runs


def _run(replay: int, p99: float, pair_p99: float | None, rss: int) -> dict[str, Any]:
    return {"segments": 1000, "events": 1100, "replay_events_per_s": replay, "ingest_MB_per_s": replay / 1000,
            "latency": {"p50_ms": p99 / 2, "p99_ms": p99, "checkpoint_ms": 5, "samples": 10},
            "open": {"seconds": 0.1, "cold_seconds": 0.3, "rows": 1000, "index_loaded": True},
            "pair": None if pair_p99 is None else {"pairing_s": 2, "p50_ms": 1, "p99_ms": pair_p99},
            "peak_rss_bytes": rss, "peak_rss_bytes_per_segment": rss / 1000}


def test_each_headline_figure_is_the_median_of_the_runs_and_memory_the_highest() -> None:
    runs = [_run(300, 20.0, 30.0, 500), _run(100, 90.0, 10.0, 900), _run(200, 10.0, 20.0, 700)]
    out = combine_runs(runs)
    assert out["replay_events_per_s"] == 200 and out["ingest_MB_per_s"] == 0.2
    assert out["latency"]["p99_ms"] == 20.0 and out["latency"]["p50_ms"] == 10.0
    assert out["pair"]["p99_ms"] == 20.0
    assert out["peak_rss_bytes"] == 900 and out["peak_rss_bytes_per_segment"] == 0.9
    assert [r["replay_events_per_s"] for r in out["runs"]] == [300, 100, 200]
    assert [r["latency/p99_ms"] for r in out["runs"]] == [20.0, 90.0, 10.0]
    assert runs[0]["replay_events_per_s"] == 300  # the runs themselves are left as measured


def test_a_figure_some_runs_lack_is_the_median_of_those_that_have_it() -> None:
    out = combine_runs([_run(300, 20.0, None, 500), _run(100, 90.0, 40.0, 900)])
    assert out["pair"] is None  # the first run's shape: no pair step
    out = combine_runs([_run(300, 20.0, 40.0, 500), _run(100, 90.0, None, 900), _run(200, 10.0, 10.0, 1)])
    assert out["pair"]["p99_ms"] == 25.0 and "pair/p99_ms" not in out["runs"][1]

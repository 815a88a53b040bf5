"""Every command of the CLI, and its error paths: one line, a hint, an exit code, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dssync.consumers.store import Store
from dssync.layout import log_dir, store_dir
from dssync.log import segment as seg
from dssync.log.filelog import FileLog
from dssync.process import command
from dssync.tools.cli import cli
from tests.conftest import run_dssync
from tests.pair import held_home

MakeHome = Callable[..., str]


def _invoke(runner: CliRunner, *args: str, input: bytes | None = None) -> tuple[int, str]:
    result = runner.invoke(cli, list(args), input=input)
    out = result.output  # click 8.2+: stdout and stderr interleaved
    assert "Traceback" not in out
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, out


def _error(out: str) -> tuple[str, str]:
    lines = [ln for ln in out.splitlines() if ln.startswith(("error:", "hint:"))]
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), out
    return lines[0], lines[1]


def _sample(tmp_path: Path, size: int = 400_000, seed: int = 1) -> str:
    import random

    p = tmp_path / f"sample{seed}.bin"
    p.write_bytes(random.Random(seed).randbytes(size))
    return str(p)


def test_init_creates_a_home_that_status_describes(runner: CliRunner, make_home: MakeHome) -> None:
    home = make_home("sh1")
    code, out = _invoke(runner, "status", home, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["name"] == "sh1" and doc["model"] == "SH-7080"
    assert doc["store"]["source"] == "live" and doc["apply_lag_records"] == 0
    code, out = _invoke(runner, "status", home)
    assert code == 0 and "sh1 (SH-7080, version 9.14)" in out


def test_init_refuses_an_existing_home(runner: CliRunner, make_home: MakeHome) -> None:
    home = make_home("sh1")
    code, out = _invoke(runner, "init", home, "--name", "sh1")
    assert code == 2 and "already an appliance home" in _error(out)[0]


def test_init_refuses_a_bad_name(runner: CliRunner, tmp_path: Path) -> None:
    code, out = _invoke(runner, "init", str(tmp_path / "x"), "--name", "bad name!")
    assert code == 2 and "invalid appliance name" in _error(out)[0]


def test_init_refuses_a_bad_chunker_spec(runner: CliRunner, tmp_path: Path) -> None:
    code, out = _invoke(runner, "init", str(tmp_path / "x"), "--name", "a", "--chunker", "rabin/8k")
    assert code == 2 and "chunker" in _error(out)[0]


def test_init_refuses_a_size_dssync_toml_would_refuse_and_creates_nothing(runner: CliRunner, tmp_path: Path) -> None:
    code, out = _invoke(runner, "init", str(tmp_path / "x"), "--name", "a", "--segment-bytes", "100")
    assert code == 2 and "4096<=x<=4294967295" in out and not (tmp_path / "x").exists()


def test_ingest_reports_savings_and_a_repeat_saves_almost_everything(
        runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    sample = _sample(tmp_path)
    code, out = _invoke(runner, "ingest", home, sample, "--json")
    first = json.loads(out)
    assert code == 0 and first["bytes_in"] == 400_000 and first["new_segment_bytes"] == 400_000
    code, out = _invoke(runner, "ingest", home, sample, "--json")
    second = json.loads(out)
    assert second["savings"] > 0.99 and second["events"] == 0
    code, out = _invoke(runner, "ingest", home, sample)
    assert code == 0 and "savings" in out and "wire bytes" in out


def test_ingest_reads_directories_and_stdin(runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(os.urandom(50_000))
    (d / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    code, out = _invoke(runner, "ingest", home, str(d), "--json")
    assert code == 0 and json.loads(out)["bytes_in"] == 120_000
    code, out = _invoke(runner, "ingest", home, "-", "--json", input=b"z" * 30_000)
    assert code == 0 and json.loads(out)["bytes_in"] == 30_000


def test_ingest_into_a_missing_home_says_how_to_create_one(runner: CliRunner, tmp_path: Path) -> None:
    code, out = _invoke(runner, "ingest", str(tmp_path / "nope"), "-", input=b"x")
    err, hint = _error(out)
    assert code == 3 and "no appliance home" in err and "dssync init" in hint


def test_ingest_of_a_missing_path_touches_nothing(runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    before = FileLog(log_dir(home)).end_offset()
    code, out = _invoke(runner, "ingest", home, _sample(tmp_path), str(tmp_path / "missing.bin"))
    assert code == 3 and "missing.bin" in _error(out)[0]
    assert FileLog(log_dir(home)).end_offset() == before


def test_a_directory_that_is_not_a_home_is_named_as_such(runner: CliRunner, tmp_path: Path) -> None:
    code, out = _invoke(runner, "status", str(tmp_path))
    assert code == 3 and "not an appliance home" in _error(out)[0]


def test_a_full_disk_is_one_line_and_loses_nothing(
        runner: CliRunner, make_home: MakeHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home("sh1")
    sample = _sample(tmp_path)
    assert _invoke(runner, "ingest", home, sample)[0] == 0
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    code, out = _invoke(runner, "ingest", home, _sample(tmp_path, seed=2))
    monkeypatch.setattr(os, "write", real_write)
    err, hint = _error(out)
    assert code == 7 and "disk full" in err and "free disk space" in hint
    code, out = _invoke(runner, "verify", home)
    assert code == 0, out


def test_inspect_log_lists_segments_and_decodes_events(runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    _invoke(runner, "ingest", home, _sample(tmp_path))
    code, out = _invoke(runner, "inspect", "log", home, "--records", "5", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["start_offset"] == 0 and doc["end_offset"] > 5
    assert doc["events"][0]["type"] == "StoreReset" and doc["events"][1]["type"] == "SegmentStored"
    code, out = _invoke(runner, "inspect", "log", home, "--records", "3", "--from-offset", "2")
    assert code == 0 and "SegmentStored" in out


def test_inspect_store_shows_counts_digest_and_rows(runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    _invoke(runner, "ingest", home, _sample(tmp_path))
    code, out = _invoke(runner, "inspect", "store", home, "--refs", "3", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["live_segment_bytes"] == 400_000 and len(doc["refs"]) == 3 and doc["digest"]
    assert _invoke(runner, "inspect", "store", home)[0] == 0


def test_replay_rebuilds_an_identical_store(runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    _invoke(runner, "ingest", home, _sample(tmp_path))
    before = json.loads(_invoke(runner, "inspect", "store", home, "--json")[1])["digest"]
    code, out = _invoke(runner, "replay", home, "--json")
    assert code == 0 and json.loads(out)["digest"] == before
    assert _invoke(runner, "verify", home)[0] == 0


def test_replay_from_an_offset_outside_the_log_is_refused(runner: CliRunner, make_home: MakeHome) -> None:
    home = make_home("sh1")
    code, out = _invoke(runner, "replay", home, "--from-offset", "999")
    assert code == 2 and "outside the log" in _error(out)[0]


@pytest.mark.parametrize("fsync", ["always", "never"])  # segments read in place from the log / in packs
def test_verify_catches_a_segment_whose_bytes_changed(
        runner: CliRunner, make_home: MakeHome, tmp_path: Path, fsync: str) -> None:
    home = make_home("sh1", "--fsync", fsync)
    _invoke(runner, "ingest", home, _sample(tmp_path))
    store = Store(store_dir(home))
    _, pack, pos, _ = next(store.iter_live_segments())
    path = store.packs.file_of(pack)
    store.close()
    assert (os.sep + "log" + os.sep in path) == (fsync == "always")
    with open(path, "r+b") as f:
        f.seek(pos + 100)
        f.write(b"\xff\xfe")
    code, out = _invoke(runner, "verify", home)
    assert code == 9 and "do not match the reference" in out and "verify: FAILED" in out


def test_verify_catches_a_store_that_differs_from_its_log(
        runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    _invoke(runner, "ingest", home, _sample(tmp_path))
    import duckdb

    con = duckdb.connect(os.path.join(store_dir(home), "store.duckdb"))
    con.execute("UPDATE ref_rows SET hlc = hlc + 1 WHERE ref = (SELECT min(ref) FROM refs)")
    con.close()
    code, out = _invoke(runner, "verify", home, "--json")
    doc = json.loads(out.split("\nerror:")[0])
    assert code == 9 and not doc["ok"] and len(doc["differing_refs"]) == 1


def test_a_corrupt_log_is_reported_with_a_hint(runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1", "--fsync", "never")
    _invoke(runner, "ingest", home, _sample(tmp_path, 3_000_000))
    path = seg.segment_path(log_dir(home), 0)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    code, out = _invoke(runner, "inspect", "log", home, "--records", "10000")
    err, hint = _error(out)
    assert code == 4 and "CRC32C" in err and "dssync recover" in hint
    code, out = _invoke(runner, "verify", home)
    assert code == 9 and "log:" in out


def test_a_log_that_lost_what_its_store_applied_is_refused_until_replayed(
        runner: CliRunner, make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    _invoke(runner, "ingest", home, _sample(tmp_path, 3_000_000))
    with open(seg.segment_path(log_dir(home), 0), "r+b") as f:
        f.truncate(1_500_000)  # the log lost its second half (restored from an older copy, a disk
        # that lost synced writes): recovery cuts the torn batch, and the store applied more
    code, out = _invoke(runner, "ingest", home, _sample(tmp_path, 100_000, seed=2))
    err, hint = _error(out)
    assert code == 4 and "store applied it up to" in err and "dssync replay" in hint
    code, out = _invoke(runner, "replay", home)
    assert code == 0, out
    code, out = _invoke(runner, "ingest", home, _sample(tmp_path, 100_000, seed=2))
    assert code == 0, out
    code, out = _invoke(runner, "verify", home)
    assert code == 0 and "verify: OK" in out, out


def test_an_unknown_schema_in_the_log_stops_replay_with_an_upgrade_hint(
        runner: CliRunner, make_home: MakeHome) -> None:
    home = make_home("sh1")
    with FileLog(log_dir(home), writer=True) as log:
        log.append([b"\xc3\x01" + b"\x77" * 8 + b"\x00"])  # an event from a newer dssync
    code, out = _invoke(runner, "replay", home)
    err, hint = _error(out)
    assert code == 5 and "unknown event schema" in err and "upgrade" in hint


def test_a_home_in_use_is_refused_for_writing_and_status_reads_the_snapshot(
        make_home: MakeHome, tmp_path: Path) -> None:
    home = make_home("sh1")
    run_dssync("ingest", home, _sample(tmp_path))
    with held_home(home):
        proc = run_dssync("ingest", home, "-", check=False, input_bytes=b"x" * 100)
        assert proc.returncode == 6 and b"another process" in proc.stderr and b"Traceback" not in proc.stderr
        proc = run_dssync("status", home, "--json")
        doc = json.loads(proc.stdout)
        assert doc["store"]["source"] == "snapshot" and doc["store"]["live_segment_bytes"] == 400_000
        proc = run_dssync("verify", home, check=False)
        assert proc.returncode == 6 and b"hint:" in proc.stderr
    time.sleep(0.1)
    assert run_dssync("verify", home).returncode == 0


def test_bench_core_prints_system_baseline_and_ratio(runner: CliRunner) -> None:
    code, out = _invoke(runner, "bench", "core", "--size", "4000000", "--events", "20000", "--repeat", "2", "--json")
    doc = json.loads(out)
    assert code == 0
    for case in ("ingest-new", "ingest-repeat", "replay"):
        c = doc["cases"][case]
        assert c["system"] > 0 and c["baseline"] > 0
        assert len(c["system_runs"]) == len(c["baseline_runs"]) == 2
        assert min(c["system_runs"]) <= c["system"] <= max(c["system_runs"])
        assert c["ratio"] == pytest.approx(c["system"] / c["baseline"], rel=0.01)
        assert c["system_peak_rss_MB"] > 0
    assert doc["cases"]["ingest-repeat"]["savings"] > 0.3


def test_help_of_every_command_has_an_example() -> None:
    runner = CliRunner()
    for path in (["init"], ["ingest"], ["replay"], ["status"], ["verify"], ["inspect", "log"],
                 ["inspect", "store"], ["bench", "core"]):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, path


def test_bench_scale_measures_every_size_against_the_smallest_and_each_store_verifies() -> None:
    p = subprocess.run(command("bench", "scale", "--sizes", "4000,8000", "--ingest-mb", "2", "--samples", "10",
                               "--pair-seconds", "3", "--ingest-runs", "3", "--json"),
                       capture_output=True, text=True, check=True)
    doc = json.loads(p.stdout)
    small, big = doc["sizes"]
    assert (small["segments"], big["segments"]) == (4000, 8000)
    for r in (small, big):
        # every segment's event, its group references and evictions were replayed, then verified
        assert r["replay"]["events"] == r["events"] > r["segments"]
        assert r["verify"]["ok"] and r["open"]["rows"] > r["segments"] * 0.9
        assert r["latency"]["samples"] == 10 and 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"]
        assert r["index_bytes"] > 0 and r["peak_rss_bytes"] > 0 and r["ingest_MB_per_s"] > 0
        rates = r["ingest"]["MB_per_s_runs"]  # --ingest-runs 3: three ingests, their median
        assert len(rates) == 3 and r["ingest_MB_per_s"] == sorted(rates)[1]
        assert r["open"]["index_loaded"] and r["replay"]["refindex_bytes"] > 0  # saved by the replay, mapped at open
        assert r["open"]["cold_seconds"] > 0 and r["open"]["seconds"] > 0
        assert [run["replay_events_per_s"] for run in r["runs"]] == [r["replay_events_per_s"]]  # --repeat 1
        # the filled home paired with a new backup: the backup holds the same store, and the
        # master's batches at half load reached the backup's store
        pair = r["pair"]
        assert pair["identical"] and pair["batches"] > 0 and 0 < pair["p50_ms"] <= pair["p99_ms"]
        assert set(pair["peak_rss_bytes"]) == {"sha_serve", "sha_mirror", "shb_serve", "shb_mirror"}
        assert r["peak_rss_bytes"] >= max(pair["peak_rss_bytes"].values())
    assert small["vs_smallest"] == {"replay": 1.0, "ingest": 1.0, "apply_p99": 1.0, "open": 1.0,
                                    "replication_p99": 1.0}
    assert big["vs_smallest"]["replay"] == round(big["replay_events_per_s"] / small["replay_events_per_s"], 3)

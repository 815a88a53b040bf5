"""Two appliances paired in real processes: pairing, refusals, bidirectional sync, failover."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from dssync.errors import ChildRunError
from dssync.log.filelog import FileLog
from dssync.process import command
from tests.pair import SECRET, Node, dss, make_pair, release, secret_file, started_pair, wait_alarm, wait_converged


def test_pairing_overwrites_the_backup_and_both_directions_converge(tmp_path: Path, running: list[Node]) -> None:
    a, b = make_pair(tmp_path)
    r = release(tmp_path, 3, 4_000_000, 3)
    a.ingest(r[0])
    b.ingest(r[2])  # the backup's own pre-pairing data: discarded at pairing
    running.extend((a, b))
    for n in (a, b):
        n.start("serve")
    assert b.status()["store"]["store_id"] == a.status()["store"]["store_id"]
    for n in (a, b):
        n.start("mirror")
    wait_converged(a, b)
    # the backup's old data is gone: it holds exactly the master's store
    assert b.status()["store"]["live_segment_bytes"] == a.status()["store"]["live_segment_bytes"]
    # both keep optimizing, with overlapping content, at the same time
    a.ingest(r[1])
    b.ingest(r[1], r[2])
    wait_converged(a, b)
    # what one appliance learned saves bandwidth on the other
    assert b.ingest(r[1])["savings"] > 0.999
    # the tools answer while the services own the stores
    for n in (a, b):
        doc = json.loads(dss("verify", n.home, "--json").stdout)
        assert doc["ok"] and doc["segments_checked"] > 0
        assert n.status()["store"]["source"] == "service"
        inspected = json.loads(dss("inspect", "store", n.home, "--json").stdout)
        assert inspected["source"] == "service" and inspected["digest"] and inspected["live_segments"] > 0
    mirrors = b.status()["mirrors"]["sha"]
    assert mirrors["not_copied_events"] == 0 and mirrors["copied_records"] > 0
    # the master's batches the backup applied, timed from the append there to the commit here
    latency = b.status()["sync"]["replication_latency"]["sha"]
    assert latency["batches"] > 0 and latency["histogram"]["count"] == latency["batches"]
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"]
    assert "latency sha" in dss("status", b.home).stdout


def test_the_backup_waits_for_its_restart_before_syncing(tmp_path: Path) -> None:
    _a, b = make_pair(tmp_path)
    doc = json.loads(dss("status", b.home, "--json").stdout)
    assert doc["sync"]["state"] == "restart-required"
    assert "restart required" in dss("status", b.home).stdout


def test_a_backup_started_before_its_master_waits_for_it_then_pairs(tmp_path: Path, running: list[Node]) -> None:
    a, b = make_pair(tmp_path)
    r = release(tmp_path, 53, 500_000, 1)
    a.ingest(r[0])

    def started_backup() -> subprocess.Popen[bytes]:
        with open(Path(b.logs) / "shb.serve.log", "ab") as log:
            b.procs["serve"] = subprocess.Popen([*command(), "serve", b.home],
                                                stdout=log, stderr=log)
        deadline = time.time() + 60
        while "pairing waits for the master" not in b.log("serve"):
            assert b.procs["serve"].poll() is None, b.log("serve")[-2000:]
            assert time.time() < deadline, b.log("serve")[-2000:]
            time.sleep(0.1)
        return b.procs["serve"]

    waiting = started_backup()  # the master is down: no error, it waits (and says so once)
    time.sleep(1.5)
    assert waiting.poll() is None
    assert b.log("serve").count("pairing waits for the master") == 1
    waiting.send_signal(signal.SIGTERM)  # and a stop during the wait is clean, the home untouched
    assert waiting.wait(timeout=30) == 0
    assert json.loads(dss("status", b.home, "--json").stdout)["sync"]["state"] == "restart-required"
    running.extend((a, b))
    started_backup()
    a.start_all()  # the master comes up: the waiting backup pairs on its own
    b.wait_for_service(timeout=60)
    b.start("mirror")
    wait_converged(a, b, timeout=120)


def test_a_mirrored_log_is_a_byte_identical_copy_of_the_source(tmp_path: Path, running: list[Node]) -> None:
    a, b = make_pair(tmp_path)
    running.extend((a, b))
    for n in (a, b):
        n.start_all()
    for path in release(tmp_path, 9, 3_000_000, 3):
        a.ingest(path)
    wait_converged(a, b)
    src = FileLog(str(Path(a.home) / "log"))
    mirror = FileLog(str(Path(b.home) / "mirror" / "sha"))
    start = mirror.start_offset()
    assert mirror.end_offset() == src.end_offset()
    assert [x.raw for x in mirror.batches(start)] == [x.raw for x in src.batches(start)]


@pytest.mark.parametrize("what", ["model", "version", "secret"])
def test_a_mismatched_peer_is_refused_with_its_reason(tmp_path: Path, running: list[Node], what: str) -> None:
    kwargs = {"model": {"model_b": "SH-5080"}, "version": {"version_b": "9.15"},
              "secret": {"secret_b": "another-secret-0000000"}}[what]
    a, b = make_pair(tmp_path, **kwargs)  # type: ignore[arg-type]
    running.extend((a, b))
    a.start("serve")
    a.start("mirror")
    with pytest.raises(ChildRunError, match="exited"):
        b.start("serve")  # the backup cannot complete pairing with a refusing master
    expected = {"model": "model differs", "version": "software version differs",
                "secret": "wrong shared secret"}[what]
    assert expected in b.log("serve")
    deadline = time.time() + 20
    while time.time() < deadline and expected not in a.log("mirror") + a.log("serve"):
        time.sleep(0.2)
    assert expected in a.log("mirror") + a.log("serve")  # refused on the master's side too
    assert b.status()["sync"]["state"] == "restart-required"
    refused = wait_alarm(a.home, "pairing_refused")
    assert expected in refused["evidence"] and refused["severity"] == "critical"
    assert "mirrors" not in a.status() or not a.status()["mirrors"].get("shb", {}).get("copied_records")


def test_failover_the_backup_saves_what_the_master_would_have(tmp_path: Path, running: list[Node]) -> None:
    a, b = started_pair(tmp_path, running)
    r = release(tmp_path, 17, 5_000_000, 3)
    a.ingest(r[0])
    a.ingest(r[1])
    wait_converged(a, b)
    expected = json.loads(dss("status", a.home, "--json").stdout)
    a.stop_all()  # the master fails
    got = b.ingest(r[2])
    assert expected
    cold = make_pair(tmp_path / "cold")[1]
    cold_savings = json.loads(dss("ingest", cold.home, r[2], "--json").stdout)["savings"]
    # the master would have seen the same store, so the same savings; a cold store far fewer
    master_would = json.loads(dss("ingest", a.home, r[2], "--json").stdout)["savings"]
    assert got["savings"] == pytest.approx(master_would, abs=1e-3)
    assert got["savings"] > cold_savings + 0.3


def test_bench_sync_prints_every_figure_with_its_baseline_and_the_protections_cost() -> None:
    p = dss("bench", "sync", "--log-mb", "4", "--seconds", "4", "--interruption", "1", "--size", "2000000",
            "--fsync", "never", "--repeat", "2", "--json")
    doc = json.loads(p.stdout)
    m = doc["mirror"]
    assert m["system"] > 0 and m["baseline"] > 0 and m["ratio"] == pytest.approx(m["system"] / m["baseline"], rel=0.02)
    assert len(m["system_runs"]) == len(m["unprotected_runs"]) == len(m["baseline_runs"]) == 2
    assert len(m["baseline_tls_runs"]) == 2
    assert m["ratio_to_tls_copy"] == pytest.approx(m["system"] / m["baseline_tls"], rel=0.02)
    assert m["unprotected"] > 0  # the same mirror over a link without TLS and MACs
    assert m["protection_cost"] == pytest.approx(1 - m["system"] / m["unprotected"], abs=0.002)
    for key in ("latency_ms", "unprotected_latency_ms"):  # from the backup's histogram, paced traffic only
        lat = doc["replication"][key]
        assert lat["samples"] > 0 and 0 <= lat["p50_ms"] <= lat["p99_ms"] and 0 <= lat["within_50ms"] <= 1
        assert len(lat["p99_ms_runs"]) == 2  # the median is printed to 0.1 ms
        assert lat["p99_ms"] == pytest.approx(statistics.median(lat["p99_ms_runs"]), abs=0.051)
        hop = lat["mirror_hop"]  # append -> the backup's mirror log
        assert hop["p50"] is not None and hop["p99"] >= hop["p50"]
        assert lat["polled"]["p99"] >= lat["polled"]["p50"]
    catch_up = doc["replication"]["catch_up"]  # what arrived while the mirror was down was caught up
    assert catch_up["backlog_MB"] > 0 and catch_up["seconds"] > 0 and catch_up["rate_MB_per_s"] > 0
    assert doc["failover_savings"]["ratio"] > 0.99


def _cert(directory: Path, name: str) -> tuple[str, str]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return str(crt), str(key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_the_sync_interface_runs_over_tls_with_client_certificates(tmp_path: Path, running: list[Node]) -> None:
    a, b = make_pair(tmp_path)
    ca_dir = tmp_path / "pki"
    ca_dir.mkdir()
    crt_a, key_a = _cert(ca_dir, "sha")
    crt_b, key_b = _cert(ca_dir, "shb")
    for node, crt, key, peer_crt, peer in ((a, crt_a, key_a, crt_b, b), (b, crt_b, key_b, crt_a, a)):
        role = "master" if node is a else "backup"
        dss("sync", "configure", node.home, "--role", role, "--peer", f"127.0.0.1:{peer.port}",
            "--listen", f"127.0.0.1:{node.port}", "--secret-file", secret_file(str(tmp_path), SECRET),
            "--tls-cert", crt, "--tls-key", key,
            "--tls-ca", peer_crt)
    running.extend((a, b))
    for n in (a, b):
        n.start_all()
    a.ingest(release(tmp_path, 31, 1_000_000, 1)[0])
    wait_converged(a, b)
    # the sync port speaks TLS only, and only to a client whose certificate its CA signed
    with pytest.raises((http.client.HTTPException, OSError)):
        plain = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
        plain.request("GET", "/v1/identity")
        plain.getresponse().read()
    assert _tls_reply(a.port, crt_a, None) is None  # no client certificate: refused
    other_dir = tmp_path / "other-pki"
    other_dir.mkdir()
    assert _tls_reply(a.port, crt_a, _cert(other_dir, "mallory")) is None  # one from another CA: refused
    assert (_tls_reply(a.port, crt_a, (crt_b, key_b)) or b"").startswith(b"HTTP/1.1 4")  # through TLS; unsigned


def _tls_reply(port: int, server_crt: str, client: tuple[str, str] | None) -> bytes | None:
    """The first bytes the sync port answers a TLS client with, or None when it refuses it."""
    ctx = ssl.create_default_context(cafile=server_crt)
    if client is not None:
        ctx.load_cert_chain(*client)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /v1/identity HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            reply = tls.recv(64)  # TLS 1.3: a refused client certificate shows on the first read
            return reply or None
    except (ssl.SSLError, ConnectionError):
        return None


def test_service_restart_and_stop_answer_then_act(tmp_path: Path, running: list[Node]) -> None:
    a, _b = make_pair(tmp_path)
    running.extend((a,))
    a.start("serve")
    out = dss("service", "restart", a.home).stdout
    assert "service restarted" in out and a.status()["store"]["source"] == "service"
    assert "service stopped" in dss("service", "stop", a.home).stdout
    refused = dss("service", "stop", a.home, check=False)
    assert refused.returncode == 2 and "no dssync service runs" in refused.stderr


def test_under_fsync_interval_a_backup_bootstrapping_during_traffic_counts_no_gap(
        tmp_path: Path, running: list[Node]) -> None:
    """The master serves only what its fsync made durable, and its store may hold a little
    more (written, applied, not yet synced): a snapshot then covers offsets the log will serve
    within the interval, which the backup's mirror waits for instead of taking for a gap."""
    import threading

    a, b = make_pair(tmp_path, fsync="interval")
    r = release(tmp_path, 81, 600_000, 8)
    running.extend((a, b))
    a.start_all()
    loader = threading.Thread(target=lambda: [a.ingest(p) for p in r])
    loader.start()
    try:
        b.start_all()  # pairs (a snapshot of the master's store) while the master takes traffic
    finally:
        loader.join()
    wait_converged(a, b)
    state = b.status()["mirrors"]["sha"]
    assert state["gaps"] == [] and state["not_copied_events"] == 0, state
    assert "Traceback" not in b.log("mirror") and "Traceback" not in a.log("serve")

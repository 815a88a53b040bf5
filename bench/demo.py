"""``dssync demo``: the main job, end to end on this machine with nothing to install.

The pair story (default): two appliances, each a home with its service and its mirror in real
processes, paired on loopback; both optimize traffic (successive versions of a synthetic
software release, the classic WAN workload); the sync link is cut and restored; the master
is killed; follow-up traffic goes through the backup. The report compares the backup's
savings with the master's and with a cold store, and gives the events mirrored, anything not
copied, the time to converge and the verify result.

``--single`` runs the one-appliance story: ingest, savings, replay, verify.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from typing import Any

import click

from dssync.appliance import Appliance, replay
from dssync.bench import workload
from dssync.errors import MismatchError
from dssync.tools.output import emit_json, human_bytes
from dssync.tools.verify import verify_home


def run_single(directory: str, size: int, versions: int, say: Any) -> dict[str, Any]:
    home = os.path.join(directory, "sh1")
    report: dict[str, Any] = {"home": home, "versions": []}
    with Appliance.create(home, "sh1", "dssync-virtual", "demo", fsync="always") as app:
        say(f"created appliance sh1 at {home}")
        for i, data in enumerate(workload.versions(2026, size, versions)):
            t0 = time.perf_counter()
            st = app.ingest(io.BytesIO(data))
            secs = time.perf_counter() - t0
            report["versions"].append({**st.as_dict(), "seconds": round(secs, 3)})
            say(f"release v{i}: {human_bytes(st.bytes_in)} in, {human_bytes(st.wire_bytes)} over the WAN, "
                f"savings {st.savings * 100:.1f}% ({st.bytes_in / secs / 1e6:.0f} MB/s)")
        before = app.store.digest()
    t0 = time.perf_counter()
    n = replay(home)
    secs = time.perf_counter() - t0
    with Appliance(home) as app:
        after = app.store.digest()
        report["replay"] = {"records": n, "seconds": round(secs, 3),
                            "digest_before": before.value, "digest_after": after.value}
        say(f"replayed {n} log records into a fresh store: digest {after.value} "
            f"({'identical' if after == before else 'DIFFERENT'})")
    rep = verify_home(home)
    report["verify"] = rep.as_dict()
    say(f"verify: {'OK' if rep.ok else 'FAILED'} ({rep.log_records} events, {rep.segments_checked} segments checked)")
    if not rep.ok or before != after:
        raise MismatchError("the demo's store did not verify", hint="run 'dssync verify' on the home shown above")
    return report


def run_pair(directory: str, size: int, versions: int, say: Any) -> dict[str, Any]:
    from dssync.bench.localpair import dss, make_pair, wait_converged

    os.makedirs(directory, exist_ok=True)
    n = max(versions, 4)
    releases = []
    for i, data in enumerate(workload.versions(2026, size, n)):
        path = os.path.join(directory, f"release-v{i}.tar")
        with open(path, "wb") as f:
            f.write(data)
        releases.append(path)
    a, b = make_pair(directory)
    report: dict[str, Any] = {"homes": [a.home, b.home]}
    say(f"paired {a.name} (master) and {b.name} (backup) on 127.0.0.1:{a.port} / 127.0.0.1:{b.port}")
    try:
        for node in (a, b):
            node.start("serve")
        for node in (a, b):
            node.start("mirror")
        traffic = []
        st = a.ingest(releases[0])
        traffic.append(("sha", 0, st))
        st = b.ingest(releases[1])
        traffic.append(("shb", 1, st))
        for who, v, s in traffic:
            say(f"{who} optimized release v{v}: {human_bytes(s['bytes_in'])} in, savings {s['savings'] * 100:.1f}%")
        t0 = time.perf_counter()
        wait_converged(a, b, timeout=300)
        report["first_convergence_s"] = round(time.perf_counter() - t0, 3)
        say(f"stores identical after {report['first_convergence_s']} s")

        a.kill("mirror")
        b.kill("mirror")
        say("sync link cut: both mirrors stopped")
        s2 = a.ingest(releases[2])
        say(f"sha optimized release v2 while the link was down: savings {s2['savings'] * 100:.1f}%")
        for node in (a, b):
            node.start("mirror")
        t0 = time.perf_counter()
        wait_converged(a, b, timeout=300)
        report["reconnect_convergence_s"] = round(time.perf_counter() - t0, 3)
        say(f"link restored: stores identical again after {report['reconnect_convergence_s']} s")
        mirrors = {**a.status()["mirrors"], **b.status()["mirrors"]}

        a.kill("mirror")
        a.kill("serve")
        say("master sha killed (SIGKILL)")
        follow = releases[3]
        backup = b.ingest(follow)
        say(f"shb (backup, warm) optimized follow-up release v3: savings {backup['savings'] * 100:.2f}%")
    finally:
        a.stop_all()
        b.stop_all()
    master = json.loads(dss("ingest", a.home, follow, "--json").stdout)  # the master's store, as it was
    cold_home = os.path.join(directory, "cold")
    dss("init", cold_home, "--name", "cold", "--model", "SH-7080", "--version", "9.14", "--fsync", "never")
    cold = json.loads(dss("ingest", cold_home, follow, "--json").stdout)
    say(f"the master would have saved {master['savings'] * 100:.2f}%, a cold store {cold['savings'] * 100:.2f}%")
    retained = backup["savings"] / master["savings"] if master["savings"] > 0 else 1.0
    report.update(
        savings={"backup": backup["savings"], "master": master["savings"], "cold": cold["savings"],
                 "backup_over_master": round(retained, 6)},
        mirrored_events={k: v.get("copied_records", 0) for k, v in mirrors.items()},
        not_copied_events={k: v.get("not_copied_events", 0) for k, v in mirrors.items()},
        not_copied_bytes={k: v.get("not_copied_bytes", 0) for k, v in mirrors.items()},
    )
    checks = {n.name: dss("verify", n.home, check=False).returncode == 0 for n in (a, b)}
    report["verify"] = checks
    say(f"events mirrored: {report['mirrored_events']}; not copied: {report['not_copied_events']}")
    say(f"savings retained by the backup: {retained:.4f} of the master's; verify: "
        + ", ".join(f"{k} {'OK' if v else 'FAILED'}" for k, v in checks.items()))
    if not all(checks.values()):
        raise MismatchError("a store of the demo pair did not verify", hint="run 'dssync verify' on the homes above")
    return report


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Where to put the appliance homes (default: a temporary directory, removed afterwards).")
@click.option("--size", type=int, default=32_000_000, show_default=True, help="Bytes per release version.")
@click.option("--versions", type=int, default=4, show_default=True, help="How many successive versions.")
@click.option("--single", is_flag=True, help="Run the one-appliance story instead of the pair story.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def demo(directory: str | None, size: int, versions: int, single: bool, as_json: bool) -> None:
    """Run the whole pair story on this machine: pair, optimize on both, cut the link,
    kill the master, fail over to the backup, report savings and verify.

    \b
    Example:
      dssync demo
      dssync demo --dir ./demo-homes --json
      dssync demo --single
    """
    keep = directory is not None
    base = directory or tempfile.mkdtemp(prefix="dssync-demo-")
    os.makedirs(base, exist_ok=True)

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg)

    try:
        report = (run_single if single else run_pair)(base, size, versions, say)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    if as_json:
        emit_json(report)

"""``dssync demo``: the main job, end to end on this machine with nothing to install.

Creates an appliance home, pushes successive versions of a synthetic software release
through the optimization path (the classic WAN workload), shows the savings of each, then
rebuilds the store from the log and verifies it.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from typing import Any

import click

from dssync.appliance import Appliance
from dssync.errors import MismatchError
from dssync.tools import workload
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
        n = app.replay()
        after = app.store.digest()
        report["replay"] = {"records": n, "seconds": round(time.perf_counter() - t0, 3),
                            "digest_before": before.md5, "digest_after": after.md5}
        say(f"replayed {n} log records into a fresh store: digest {after.md5} "
            f"({'identical' if after == before else 'DIFFERENT'})")
    rep = verify_home(home)
    report["verify"] = rep.as_dict()
    say(f"verify: {'OK' if rep.ok else 'FAILED'} ({rep.log_records} events, {rep.segments_checked} segments checked)")
    if not rep.ok or before != after:
        raise MismatchError("the demo's store did not verify", hint="run 'dssync verify' on the home shown above")
    return report


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Where to put the appliance homes (default: a temporary directory, removed afterwards).")
@click.option("--size", type=int, default=64_000_000, show_default=True, help="Bytes per release version.")
@click.option("--versions", type=int, default=4, show_default=True, help="How many successive versions.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def demo(directory: str | None, size: int, versions: int, as_json: bool) -> None:
    """Run the whole story on this machine: ingest releases, show savings, replay, verify.

    \b
    Example:
      dssync demo
      dssync demo --dir ./demo-homes --json
    """
    keep = directory is not None
    base = directory or tempfile.mkdtemp(prefix="dssync-demo-")
    os.makedirs(base, exist_ok=True)

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg)

    try:
        report = run_single(base, size, versions, say)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    if as_json:
        emit_json(report)

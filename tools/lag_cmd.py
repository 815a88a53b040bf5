"""``dssync lag``: how far behind every path is, with its status, evidence and raised alarms.

Asks the running service (whose monitor keeps a window of samples); with no service running,
measures the store paths once from the files (their consumer, the service, is then not
running: anything waiting is "stopped"). The exit code is the worst status, monitoring-plugin
style, so cron or an agent can run it: 0 ok or idle, 1 warning (growing, unknown, a minor
alarm), 2 critical (stalled, stopped, rewound, a major or critical alarm).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from dssync import config as cfgmod
from dssync.consumers.store import Store
from dssync.layout import mirror_dir, mirrored_peers, source_name, store_dir
from dssync.log.factory import open_log_reader
from dssync.log.filelog import FileLog
from dssync.monitor.evaluate import SEVERITY
from dssync.monitor.lag import measure_log
from dssync.monitor.monitor import Monitor
from dssync.tools.control import ControlClient
from dssync.tools.output import emit_json


def offline_report(home: str) -> dict[str, Any]:

    cfg = cfgmod.load(home)
    store = Store(store_dir(home), read_only=True)  # measured as it is: nothing is applied here
    try:
        offsets = store.offsets()
    finally:
        store.close()
    now = time.time()
    with open_log_reader(home, cfg) as own:
        samples = {f"store:{cfg.name}": measure_log(own, offsets.get(source_name(cfg.name), 0), now, False)}
    if cfg.sync.transport == "http":
        for peer in mirrored_peers(home):
            with FileLog(mirror_dir(home, peer)) as mlog:
                samples[f"store:{peer}"] = measure_log(mlog, offsets.get(source_name(peer), 0), now, False)
    report = Monitor(cfg.monitor, cfg.name, lambda _now: samples).evaluate()
    report["service_running"] = False
    report["note"] = "no service runs: store paths measured once from the files; mirror paths need the service"
    return report


def exit_code(report: dict[str, Any]) -> int:
    code = max((SEVERITY[p["status"]] for p in report["paths"].values()), default=0)
    for a in report.get("alarms", []):
        code = max(code, 1 if a["severity"] == "minor" else 2)
    return code


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['appliance']}: worst status {report['worst']}"
             + ("" if report.get("service_running", True) else " (service not running)")]
    lines.append(f"{'PATH':<22} {'STATUS':<8} {'RECORDS':>9} {'BYTES':>12} {'SECONDS':>8} {'RATE/s':>9} "
                 f"{'ETA s':>7}  EVIDENCE")
    for name, p in report["paths"].items():
        lines.append(f"{name:<22} {p['status']:<8} {p['lag_records']:>9} {p['lag_bytes']:>12} "
                     f"{p['lag_seconds']:>8.1f} {_fmt_s(p['rate_records_per_s']):>9} {_fmt_s(p['eta_seconds']):>7}  "
                     f"{p['evidence']}")
    alarms = report.get("alarms", [])
    lines.append("alarms: none" if not alarms else "alarms:")
    for a in alarms:
        lines.append(f"  {a['severity']:<8} {a['alarm']} on {a['path']} (incident {a['incident']}): {a['evidence']}")
    return "\n".join(lines)


@click.command("lag")
@click.argument("home", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--watch", is_flag=True, help="Print the report again every evaluation interval (Ctrl-C stops).")
def lag_cmd(home: str, as_json: bool, watch: bool) -> None:
    """Lag of every path (records, bytes, seconds), its status and evidence, raised alarms.

    Exit code: 0 ok/idle, 1 warning, 2 critical (for cron and monitoring agents).

    \b
    Example:
      dssync lag /srv/sh1
      dssync lag /srv/sh1 --json | jq '.paths'
      dssync lag /srv/sh1 --watch
    """

    cfgmod.load(home)  # a missing or broken home is a clear error, not a traceback
    code = 0
    try:
        while True:
            client = ControlClient.for_home(home)
            report = client.lag() if client is not None else offline_report(home)
            report.setdefault("service_running", client is not None)
            code = exit_code(report)
            if as_json:
                emit_json(report)
            else:
                click.echo(render(report))
            if not watch:
                break
            sys.stdout.flush()
            time.sleep(float(report.get("interval_s", 5)))
            if not as_json:
                click.echo("")
    except KeyboardInterrupt:
        pass
    sys.exit(code)

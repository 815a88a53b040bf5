"""``dssync status``: one screen (or one JSON document) about an appliance."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import click

from dssync.appliance.home import log_size
from dssync.consumers.quarantine import Quarantine
from dssync.errors import DssyncError
from dssync.layout import mirror_states, source_name
from dssync.log.factory import open_log_reader
from dssync.tools.control import ControlClient
from dssync.tools.output import emit_json, human_bytes, table
from dssync.tools.readers import open_config, open_store_reader, snapshot


def collect(home: str) -> dict[str, Any]:
    cfg = open_config(home)
    service = ControlClient.for_home(home)
    if service is not None:
        live = service.status()
        live["store"] = {k: live.get(k) for k in (
            "store_id", "rows", "live_refs", "live_segments", "live_segment_bytes", "live_higher_refs",
            "pack_bytes", "packs", "offsets", "max_hlc")}
        live["store"]["source"] = "service"
        live.update(configured_store_id=cfg.store_id, chunker=cfg.chunker, fsync=cfg.log.fsync,
                    capacity_bytes=cfg.store.capacity_bytes)
        return live
    log = open_log_reader(home, cfg)
    doc: dict[str, Any] = {
        "name": cfg.name, "model": cfg.model, "software_version": cfg.software_version,
        "configured_store_id": cfg.store_id, "chunker": cfg.chunker,
        "log_start_offset": log.start_offset(), "log_end_offset": log.end_offset(),
        **log_size(log),
        "fsync": cfg.log.fsync, "capacity_bytes": cfg.store.capacity_bytes,
    }
    store = open_store_reader(home)
    if store is None:
        snap = snapshot(home)
        store_doc: dict[str, Any] = {k: snap[k] for k in (
            "store_id", "rows", "live_refs", "live_segments", "live_segment_bytes", "live_higher_refs",
            "pack_bytes", "packs", "offsets", "max_hlc", "written_at_ms") if k in snap}
        store_doc["source"] = "snapshot"
        store_doc["snapshot_age_seconds"] = round(time.time() - snap.get("written_at_ms", 0) / 1000, 3)
    else:
        try:
            store_doc = {**store.stats(), "source": "live"}
        finally:
            store.close()
    doc["store"] = store_doc
    applied = store_doc.get("offsets", {}).get(source_name(cfg.name), 0)
    doc["applied_offset"] = applied
    doc["apply_lag_records"] = max(0, doc["log_end_offset"] - applied)
    doc["sync"] = {"role": cfg.sync.role, "state": cfg.sync.state, "peer": cfg.sync.peer,
                   "listen": cfg.sync.listen, "interface": cfg.sync.interface}
    doc["mirrors"] = mirror_states(home)
    doc["quarantine"] = Quarantine(home).entries()
    client = ControlClient.for_home(home)
    if client is not None:  # the running service's monitor: worst path status and raised alarms
        with contextlib.suppress(DssyncError):
            lag = client.lag()
            doc["lag"] = {"worst": lag["worst"], "alarms": lag["alarms"],
                          "paths": {k: v["status"] for k, v in lag["paths"].items()}}
    return doc


@click.command("status")
@click.argument("home", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def status_cmd(home: str, as_json: bool) -> None:
    """Show an appliance's identity, log, store and apply lag.

    Works while another dssync process owns the home: the store part then comes from the
    snapshot that process publishes after each commit (marked 'snapshot').

    \b
    Example:
      dssync status /var/lib/dssync/sh1 --json
    """
    doc = collect(home)
    if as_json:
        emit_json(doc)
        return
    s = doc["store"]
    table([
        ("appliance", f"{doc['name']} ({doc['model']}, version {doc['software_version']})"),
        ("store id", s.get("store_id", "")),
        ("chunker", doc["chunker"]),
        ("log", f"offsets {doc['log_start_offset']}..{doc['log_end_offset']}, "
                + (f"{human_bytes(doc['log_bytes'])} in {doc['log_segments']} segment(s)"
                   if doc.get("log_bytes") is not None else "kept by the broker")
                + f", fsync {doc['fsync']}"),
        ("store", f"{s.get('live_segments', 0)} segments ({human_bytes(s.get('live_segment_bytes', 0))}), "
                  f"{s.get('live_higher_refs', 0)} higher refs, {s.get('packs', 0)} pack(s) "
                  f"of {human_bytes(s.get('pack_bytes', 0))} / capacity {human_bytes(doc['capacity_bytes'])}"),
        ("applied", f"offset {doc['applied_offset']} (lag {doc['apply_lag_records']} records)"),
        ("source", s["source"] + (f", {s['snapshot_age_seconds']} s old" if s["source"] == "snapshot" else "")),
    ])
    sync = doc.get("sync", {})
    if sync.get("role"):
        state = "restart required" if sync["state"] == "restart-required" else sync["state"]
        table([("sync", f"{sync['role']} of {sync['peer']} over {sync['interface']} {sync['listen']}: {state}")])
        for reason in (sync.get("refusals") or {}).values():
            table([("refused", reason)])
        for peer, lat in (sync.get("replication_latency") or {}).items():
            if lat.get("batches"):
                table([(f"latency {peer}", f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
                                           f"{lat['within_50ms']:.1%} within 50 ms ({lat['batches']} batches applied; "
                                           "append on the peer -> committed here)")])
    lag = doc.get("lag")
    if lag:
        paths = ", ".join(f"{k} {v}" for k, v in lag["paths"].items())
        table([("lag", f"worst {lag['worst']} ({paths}); see 'dssync lag'")])
        for a in lag["alarms"]:
            table([("alarm", f"{a['severity']} {a['alarm']} on {a['path']}: {a['evidence']}")])
    for e in doc.get("quarantine", []):
        table([("set aside", f"{e['source']} offset {e['offset']}: {e['reason']} ({e['bytes']} bytes in "
                             f"quarantine/{e['file']})")])
    for peer, m in doc.get("mirrors", {}).items():
        table([(f"mirror {peer}", f"{m.get('state')}: {m.get('copied_records', 0)} events copied, "
                                  f"{m.get('not_copied_events', 0)} not copied ({m.get('not_copied_bytes', 0)} bytes), "
                                  f"{len(m.get('gaps', []))} gap(s) repaired")])

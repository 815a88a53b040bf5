"""``dssync inspect log|store``: look inside an appliance's log and store."""

from __future__ import annotations

import os
from typing import Any

import click

from dssync.log import segment as seg
from dssync.log.factory import open_log_reader
from dssync.log.filelog import FileLog
from dssync.schemas import decode
from dssync.tools.control import ControlClient
from dssync.tools.output import emit_json, human_bytes, table
from dssync.tools.readers import open_config, open_store_reader, snapshot

HOME = click.argument("home", type=click.Path(file_okay=False, path_type=str))


@click.group("inspect")
def inspect() -> None:
    """Look inside an appliance's log or store (human or --json)."""


def describe_event(offset: int, ts: int, value: bytes) -> dict[str, Any]:
    ev = decode(value)
    out: dict[str, Any] = {"offset": offset, "timestamp_ms": ts, "type": ev["type"],
                           "origin": ev["origin"], "hlc": ev["hlc"]}
    if "ref" in ev:
        out["ref"] = ev["ref"].hex()
    if "data" in ev:
        out["size"] = len(ev["data"])
    if ev["type"] == "ReferenceStored":
        out.update(level=ev["level"], size=ev["size"], children=len(ev["children"]) // 16)
    if ev["type"] == "StoreReset":
        out.update(store_id=ev["store_id"], chunker=ev.get("chunker", ""))
    return out


@inspect.command("log")
@HOME
@click.option("--records", type=int, default=0, help="Also decode this many events.")
@click.option("--from-offset", type=int, default=None, help="First offset to decode (default: log start).")
@click.option("--json", "as_json", is_flag=True)
def inspect_log(home: str, records: int, from_offset: int | None, as_json: bool) -> None:
    """Segments, offsets and (with --records) decoded events of the appliance's own log.

    \b
    Example:
      dssync inspect log /var/lib/dssync/sh1 --records 20 --from-offset 100
    """
    log = open_log_reader(home, open_config(home))
    segments: list[dict[str, Any]] = []
    bases = log.segments() if isinstance(log, FileLog) else []  # a broker keeps its segments to itself
    for base in bases:
        assert isinstance(log, FileLog)
        entries = seg.read_index(log.directory, base)
        path = seg.segment_path(log.directory, base)
        segments.append({
            "base_offset": base, "bytes": os.path.getsize(path) if os.path.exists(path) else 0,
            "batches": len(entries),
            "first_timestamp_ms": entries[0][2] if entries else None,
            "last_timestamp_ms": entries[-1][2] if entries else None,
        })
    doc: dict[str, Any] = {
        "directory": getattr(log, "directory", None) or f"kafka topic {getattr(log, 'topic', '')}",
        "start_offset": log.start_offset(), "end_offset": log.end_offset(),
        "bytes": log.size_bytes() if isinstance(log, FileLog) else None, "segments": segments,
    }
    if records:
        start = log.start_offset() if from_offset is None else from_offset
        doc["events"] = [describe_event(r.offset, r.timestamp_ms, r.value) for r in log.read(start, records)]
    if as_json:
        emit_json(doc)
        return
    table([("log", doc["directory"]), ("offsets", f"{doc['start_offset']}..{doc['end_offset']}"),
           ("size", human_bytes(doc["bytes"]) if doc["bytes"] is not None else "kept by the broker"),
           ("segments", len(segments))])
    for s in segments:
        click.echo(f"  segment {s['base_offset']:>12}  {human_bytes(s['bytes']):>10}  {s['batches']} batches")
    for ev in doc.get("events", []):
        extra = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("offset", "timestamp_ms", "type"))
        click.echo(f"{ev['offset']:>10}  {ev['type']:<16} {extra}")


@inspect.command("store")
@HOME
@click.option("--refs", type=int, default=0, help="Also list this many index rows (ordered by reference).")
@click.option("--json", "as_json", is_flag=True)
def inspect_store(home: str, refs: int, as_json: bool) -> None:
    """Counts, sizes, committed offsets and digest of the appliance's data store.

    \b
    Example:
      dssync inspect store /var/lib/dssync/sh1 --refs 10 --json
    """
    open_config(home)
    service = ControlClient.for_home(home)
    store = None if service is not None else open_store_reader(home)
    if service is not None:  # the running service owns the store: ask it
        live = service.status()
        doc: dict[str, Any] = {k: live[k] for k in ("store_id", "chunker", "rows", "live_refs", "live_segments",
                                    "live_segment_bytes", "live_higher_refs", "pack_bytes", "packs",
                                    "offsets", "max_hlc") if k in live}
        doc.update(digest=service.digest()["digest"], source="service")
    elif store is None:
        doc = snapshot(home)
    else:
        try:
            d = store.digest()
            doc = {**store.stats(), "digest": d.value, "source": "live"}
            if refs:
                doc["refs"] = [
                    {"ref": r[0].hex(), "level": r[1], "size": r[2], "live": r[3], "hlc": r[4], "origin": r[5],
                     "pack": r[6], "pos": r[7]}
                    for r in store.rows(refs)
                ]
        finally:
            store.close()
    if as_json:
        emit_json(doc)
        return
    table([(k, v) for k, v in doc.items() if k != "refs"])
    for r in doc.get("refs", []):
        click.echo(f"  {r['ref']}  L{r['level']}  {r['size']:>8}  {'live' if r['live'] else 'evicted'}  {r['origin']}")

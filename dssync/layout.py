"""Where everything lives in an appliance home, and how its names are made.

The one owner of the home's on-disk layout; every other module asks here::

    HOME/
      dssync.toml                      configuration (dssync.config)
      log/                             the appliance's own log
      store/                           store.duckdb, packs/, status.json (dssync.consumers.store)
      mirror/<peer>/                   the peer's log, copied by the mirror; state.json, start.json
      mirror/<peer>.snapshot/          a snapshot of the peer's store, still being fetched or loaded
      mirror/<peer>.snapshot.applied-<epoch>/   a loaded snapshot, kept for verify (newest per peer)
      run/serve.json                   the running service: pid, control address, token (0600)
      run/alarms.json                  the alarm book (dssync.monitor.alarms)

A store records how far it applied each log under a *source name*: ``log:<appliance>`` for an
appliance's own log (its own or a peer's), ``snapshot:<peer>:<epoch>`` for a loaded snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

SNAPSHOT_SUFFIX = ".snapshot"
APPLIED_INFIX = ".snapshot.applied-"
START_FILE = "start.json"  # in a mirror log: the first offset of the peer's log it holds
STATE_FILE = "state.json"  # in a mirror log: what the mirror did, for status and lag


def log_dir(home: str) -> str:
    return os.path.join(home, "log")


def store_dir(home: str) -> str:
    return os.path.join(home, "store")


def run_dir(home: str) -> str:
    return os.path.join(home, "run")


def service_file(home: str) -> str:
    return os.path.join(run_dir(home), "serve.json")


def mirror_root(home: str) -> str:
    return os.path.join(home, "mirror")


def mirror_dir(home: str, peer: str) -> str:
    """The copy of ``peer``'s own log (file transport), and the mirror's state beside it."""
    return os.path.join(mirror_root(home), peer)


def snapshot_dir(home: str, peer: str) -> str:
    """Where a snapshot of ``peer``'s store is fetched and loaded."""
    return mirror_dir(home, peer) + SNAPSHOT_SUFFIX


def applied_snapshot_dir(home: str, peer: str, epoch: int | str) -> str:
    return mirror_dir(home, peer) + f"{APPLIED_INFIX}{epoch}"


def replace_applied_snapshot(home: str, peer: str, epoch: int | str) -> str:
    """The directory for a newly loaded snapshot of ``peer``'s store, with every older one of
    that peer removed (one is kept: verify rebuilds the projection from the newest). The caller
    moves the snapshot there."""
    for _, _, old in applied_snapshots(home, peer):
        shutil.rmtree(old, ignore_errors=True)
    os.makedirs(mirror_root(home), exist_ok=True)
    return applied_snapshot_dir(home, peer, epoch)


def _entries(home: str) -> list[str]:
    root = mirror_root(home)
    try:
        return sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    except FileNotFoundError:
        return []


def mirrored_peers(home: str) -> list[str]:
    """Peers whose log is mirrored here (directories under mirror/ that are not snapshots)."""
    return [n for n in _entries(home) if SNAPSHOT_SUFFIX not in n]


def pending_snapshots(home: str) -> list[str]:
    """Peers with a snapshot fetched or being loaded (``mirror/<peer>.snapshot``)."""
    return [n.removesuffix(SNAPSHOT_SUFFIX) for n in _entries(home) if n.endswith(SNAPSHOT_SUFFIX)]


def applied_snapshots(home: str, peer: str | None = None) -> list[tuple[str, str, str]]:
    """(peer, epoch, directory) of each loaded snapshot kept here, oldest epoch first per peer."""
    out = []
    for name in _entries(home):
        if APPLIED_INFIX in name:
            who, _, epoch = name.partition(APPLIED_INFIX)
            if peer is None or who == peer:
                out.append((who, epoch, os.path.join(mirror_root(home), name)))
    return sorted(out, key=lambda t: (t[0], int(t[1]) if t[1].isdigit() else -1))


def source_name(appliance: str) -> str:
    """The name under which a store records its offset in ``appliance``'s own log."""
    return f"log:{appliance}"


def source_appliance(source: str) -> str | None:
    """The appliance whose own log ``source`` names, or None for another kind of source."""
    return source.removeprefix("log:") if source.startswith("log:") else None


def snapshot_source(peer: str, epoch: int | str) -> str:
    """The source name of a loaded snapshot of ``peer``'s store."""
    return f"snapshot:{peer}:{epoch}"


def read_json(path: str) -> dict[str, Any]:
    """A JSON object from ``path``; {} if the file is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_json(path: str, doc: Any, mode: int | None = None, durable: bool = False) -> None:
    """Write ``doc`` to ``path`` atomically: a reader sees the old file or the new, never half.

    ``mode`` (e.g. 0o600) is set on the file before any byte is written. ``durable`` fsyncs the
    file before it replaces the old one, for files recovery relies on; state that is rewritten
    every few seconds (status, mirror state) does without.
    """
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    if mode is not None:
        os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        sync_dir(os.path.dirname(path) or ".")


def sync_dir(directory: str) -> None:
    """fsync a directory: the names created, renamed or removed in it survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: str, data: bytes) -> None:
    """Write a secret (a key, a config holding the pair's secret) atomically and durably, 0600
    from its first byte."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(os.path.dirname(path) or ".")


def mirror_state(home: str, peer: str) -> dict[str, Any]:
    """The mirror's last published state for ``peer`` ({} if it never ran)."""
    return read_json(os.path.join(mirror_dir(home, peer), STATE_FILE))


def write_mirror_state(home: str, peer: str, doc: dict[str, Any]) -> None:
    d = mirror_dir(home, peer)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, STATE_FILE), doc)


def mirror_states(home: str) -> dict[str, Any]:
    """The published state of every mirror of this home, by peer."""
    out = {}
    for peer in mirrored_peers(home):
        state = mirror_state(home, peer)
        if state:
            out[peer] = state
    return out

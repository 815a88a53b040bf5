"""Pairing activation: what ``dssync serve`` does once after ``dssync sync configure``.

A master just starts syncing. A backup is overwritten by its master: it proves the pair
(model, software version, secret) with the master's identity, discards its own store and
its old log (the log continues its offsets, never reusing one), takes the master's store id,
writes a ``StoreReset`` and, on a Kafka transport, loads the master's snapshot itself (over
``http`` the mirror downloads it and the service loads it: ``dssync.appliance.snapshots``).

A kill at any instant of it is safe: once the master has answered, what the backup will do is
written first (``run/pairing.json``: the master's store id and where the new log begins), and
every step after it can run again from that record: the store and mirrors are removed if
present, the old log is renamed away before the new one is created at the recorded offset,
the ``StoreReset`` is appended only if the new log does not hold it yet, and the config says
``active`` last, once the store holds the reset (and, on Kafka, the master's snapshot). A
restart finds ``restart-required`` and runs it again.

Error contract: ``TransientError`` while the master does not answer (the caller waits and
retries), ``PairingRefusedError`` for a peer that fails the checks; nothing is discarded
before the master has answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from dssync import config as cfgmod
from dssync import crashpoint, layout
from dssync.appliance import snapshots
from dssync.appliance.home import Appliance
from dssync.layout import log_dir, mirror_root, run_dir, store_dir
from dssync.log.factory import open_log_reader
from dssync.log.filelog import FileLog
from dssync.schemas import encode
from dssync.sync import protocol

log = logging.getLogger("dssync.service")
PAIRING_FILE = "pairing.json"
"""The backup's activation in progress: the master's store id and where the new log begins."""


def identity(cfg: cfgmod.Config, log_start: int) -> protocol.Identity:
    """What this appliance says of itself on the sync interface."""
    return protocol.Identity(cfg.name, cfg.model, cfg.software_version, cfg.store_id, cfg.sync.role,
                             cfg.sync.state, log_start, cfg.chunker)


def activate(home: str, cfg: cfgmod.Config) -> None:
    """Finish a configuration whose state is ``restart-required`` (module docstring)."""
    if cfg.sync.role == "master":
        cfg.sync.state = "active"
        cfgmod.save(home, cfg)
        log.info("pairing active as master of %s", cfg.sync.peer)
        return
    journal = os.path.join(run_dir(home), PAIRING_FILE)
    plan = layout.read_json(journal)
    me = identity(cfg, plan.get("log_base", 0))
    if not plan:
        with Appliance(home) as app:
            me = identity(app.config, app.log.end_offset())
    client = protocol.PeerClient(cfg.sync, me)
    try:
        master = client.identity()
    finally:
        client.close()
    if plan.get("store_id") != master.store_id:  # first run, or the master's store changed since
        plan = {"store_id": master.store_id, "log_base": _own_log_end(home, cfg)}
        os.makedirs(run_dir(home), exist_ok=True)
        layout.write_json(journal, plan, durable=True)  # from here on, every step can run again
    crashpoint.reached("pairing.planned")
    shutil.rmtree(store_dir(home), ignore_errors=True)
    crashpoint.reached("pairing.store-removed")
    shutil.rmtree(mirror_root(home), ignore_errors=True)
    base = int(plan["log_base"])
    if cfg.log.backend == "kafka":
        cfg.sync.own_log_from = base  # a topic keeps its records: the peer skips those before the reset
    else:
        _new_log(home, base)
    cfg.store_id = master.store_id
    cfg.sync.paired_store_id = master.store_id
    cfgmod.save(home, cfg)  # still restart-required; the new store reads where the new log begins
    with Appliance(home) as app:
        if app.log.end_offset() <= base:  # not appended by an earlier, interrupted run
            app.log.append([encode("StoreReset", {
                "origin": cfg.name, "hlc": app.hlc.now(), "store_id": master.store_id, "chunker": cfg.chunker,
                "model": cfg.model, "software_version": cfg.software_version,
            })])
            crashpoint.reached("pairing.reset-appended")
        app.applied()
        crashpoint.reached("pairing.reset-applied")
        if cfg.sync.transport != "http":
            events, covers_to = snapshots.fetch_and_load(home, app.store, None, cfg.sync, me, master.name, "pairing")
            log.info("loaded snapshot of %s (%d events); reading its topic from offset %d",
                     master.name, events, covers_to)
    cfg.sync.state = "active"
    cfgmod.save(home, cfg)  # durable: the last step
    crashpoint.reached("pairing.saved")
    finished(home)
    log.info("paired as backup of %s: store discarded, taking store %s", master.name, master.store_id)


def finished(home: str) -> None:
    """Remove the record of an activation that ended (the config says ``active``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir(home), PAIRING_FILE))


def _own_log_end(home: str, cfg: cfgmod.Config) -> int:
    """Where the backup's new log begins: after every offset its old log used (never reused)."""
    if cfg.log.backend == "kafka":
        with open_log_reader(home, cfg) as klog:
            return klog.end_offset()
    return FileLog(log_dir(home)).end_offset()


def _new_log(home: str, base: int) -> None:
    """The backup's own log, empty from ``base`` (or holding only what a run of this
    activation appended): the old one is renamed away first, so a kill leaves either log whole."""
    path, old = log_dir(home), log_dir(home) + ".old"
    if os.path.isdir(path) and FileLog(path).start_offset() == base:
        shutil.rmtree(old, ignore_errors=True)
        return  # created by an earlier run
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        layout.sync_dir(home)
        crashpoint.reached("pairing.old-log-renamed")
    shutil.rmtree(path + ".new", ignore_errors=True)
    FileLog(path + ".new", writer=True, create=True, base_offset=base).close()
    crashpoint.reached("pairing.new-log-created")
    os.rename(path + ".new", path)
    layout.sync_dir(home)
    shutil.rmtree(old, ignore_errors=True)

"""Pairing activation: what ``dssync serve`` does once after ``dssync sync configure``.

A master just starts syncing. A backup is overwritten by its master: it proves the pair
(model, software version, secret) with the master's identity, discards its own store and
its old log (the log continues its offsets, never reusing one), takes the master's store id,
writes a ``StoreReset`` and, on a Kafka transport, loads the master's snapshot itself (over
``http`` the mirror downloads it and the service loads it: ``dssync.appliance.snapshots``).

Error contract: ``TransientError`` while the master does not answer (the caller waits and
retries), ``PairingRefusedError`` for a peer that fails the checks; nothing is discarded
before the master has answered.
"""

from __future__ import annotations

import logging
import shutil

from dssync import config as cfgmod
from dssync.appliance import snapshots
from dssync.appliance.home import Appliance
from dssync.layout import log_dir, mirror_root, store_dir
from dssync.log.factory import open_log_reader
from dssync.log.filelog import FileLog
from dssync.schemas import encode
from dssync.sync import protocol

log = logging.getLogger("dssync.service")


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
    with Appliance(home) as app:
        me = identity(app.config, app.log.end_offset())
    client = protocol.PeerClient(cfg.sync, me)
    try:
        master = client.identity()
    finally:
        client.close()
    shutil.rmtree(store_dir(home))
    shutil.rmtree(mirror_root(home), ignore_errors=True)
    if cfg.log.backend == "kafka":
        with open_log_reader(home, cfg) as klog:
            cfg.sync.own_log_from = klog.end_offset()  # a topic keeps its records: skip them
    else:
        old_end = FileLog(log_dir(home)).end_offset()
        shutil.rmtree(log_dir(home))
        FileLog(log_dir(home), writer=True, create=True, base_offset=old_end).close()
    cfg.store_id = master.store_id
    cfg.sync.paired_store_id = master.store_id
    cfg.sync.state = "active"
    cfgmod.save(home, cfg)
    with Appliance(home) as app:
        app.log.append([encode("StoreReset", {
            "origin": cfg.name, "hlc": app.hlc.now(), "store_id": master.store_id, "chunker": cfg.chunker,
            "model": cfg.model, "software_version": cfg.software_version,
        })])
        app.applied()
        if cfg.sync.transport != "http":
            events, covers_to = snapshots.fetch_and_load(home, app.store, None, cfg.sync, me, master.name, "pairing")
            log.info("loaded snapshot of %s (%d events); reading its topic from offset %d",
                     master.name, events, covers_to)
    log.info("paired as backup of %s: store discarded, taking store %s", master.name, master.store_id)

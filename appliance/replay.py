"""``dssync replay``: rebuild an appliance's store from its own log."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from dssync import config as cfgmod
from dssync.appliance.home import finish_interrupted_replay, open_store
from dssync.consumers.consumer import replay as replay_log
from dssync.errors import UsageError
from dssync.layout import source_name, store_dir
from dssync.log.factory import open_log


def replay(home: str, from_offset: int | None = None,
           progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None) -> int:
    """Rebuild the store of ``home`` from its log into a new directory, then swap it in.

    The old store is never opened: whatever state it is in (a pack cut short, a DuckDB file
    that does not open, rows the log no longer holds), replay is the remedy the errors name.
    The log's writer lock keeps every other process out of the home meanwhile. ``total`` is
    told the number of records to replay before the first one; returns the records applied.
    Raises ``UsageError`` for a ``from_offset`` outside the log.
    """
    cfg = cfgmod.load(home)
    finish_interrupted_replay(home)
    log = open_log(home, cfg)
    try:
        first, end = log.start_offset(), log.end_offset()
        # a backup's Kafka topic keeps the records it wrote before pairing: not its store's
        start = max(first, cfg.sync.own_log_from) if from_offset is None else from_offset
        if not first <= start <= end:
            raise UsageError(f"--from-offset {start} is outside the log ({first}..{end})",
                             hint=f"see the range with 'dssync inspect log {home}'")
        if total is not None:
            total(end - start)
        target = store_dir(home) + ".replay"
        shutil.rmtree(target, ignore_errors=True)
        fresh = open_store(target, cfg, create=True)
        try:
            applied = replay_log(log, fresh, source_name(cfg.name), start, progress)
            fresh.rewrite_file()  # full row groups: no seconds-long checkpoints later (Store.rewrite)
        except BaseException:
            fresh.close()
            shutil.rmtree(target, ignore_errors=True)
            raise
        fresh.close()
        old = store_dir(home) + ".old"
        if os.path.exists(store_dir(home)):
            os.rename(store_dir(home), old)
        os.rename(target, store_dir(home))
        shutil.rmtree(old, ignore_errors=True)
    finally:
        log.close()
    return applied

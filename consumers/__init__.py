"""Consumers read logs and replay them into the DuckDB-indexed data store."""

from dssync.consumers.consumer import Consumer
from dssync.consumers.digest import Digest
from dssync.consumers.store import Store

__all__ = ["Consumer", "Digest", "Store"]

"""Consumers read logs and replay them into the DuckDB-indexed data store."""

from dssync.consumers.consumer import Consumer
from dssync.consumers.store import Digest, Store

__all__ = ["Consumer", "Digest", "Store"]

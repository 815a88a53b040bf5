"""Pair synchronization: the sync-interface protocol, the log-mirroring service, snapshots.

``protocol`` authenticates peers and checks they may pair; ``server`` answers the peer (log
batches, identity, snapshots) and the local tools (ingest, status); ``mirror`` copies the
peer's own log into a local mirror log, exactly once; ``snapshot`` builds and loads the
store snapshots that bootstrap a backup and repair retention gaps.
"""

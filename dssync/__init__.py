"""dssync: keep the data stores of two paired WAN-optimization appliances synchronized.

Each appliance cuts traffic into segments (``dssync.producers``), writes every change as an
Avro event (``dssync.schemas``) to its own append-only log (``dssync.log``), and replays logs
into a DuckDB-indexed store (``dssync.consumers``). ``dssync.tools`` holds the command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""The ``dssync`` command line.

Every foreseeable failure is a ``DssyncError``; ``main`` prints it as ``error:`` and ``hint:``
lines on stderr and exits with its code. Nothing foreseeable prints a traceback.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import click
import duckdb

from dssync import __version__
from dssync.appliance import Appliance
from dssync.appliance import replay as replay_home
from dssync.appliance.recover import recover as recover_home
from dssync.bench.chaos import chaos
from dssync.bench.demo import demo
from dssync.config import RANGES, KafkaConfig
from dssync.errors import CorruptStoreError, DssyncError, NotFoundError, UsageError, from_os_error
from dssync.producers.chunker import ChunkerSpec
from dssync.producers.optimizer import IngestStats
from dssync.tools import inspect_cmd, verify
from dssync.tools.bench_cmd import bench
from dssync.tools.control import ControlClient
from dssync.tools.lag_cmd import lag_cmd
from dssync.tools.output import LazyProgress, emit_json, human_bytes, progress, table
from dssync.tools.status import status_cmd
from dssync.tools.sync_cmd import configure, mirror_cmd, mirror_topic_cmd, serve_cmd, service_group, sync_group

HOME = click.argument("home", type=click.Path(file_okay=False, path_type=str))


class DssyncGroup(click.Group):
    """A click group that turns DssyncError and OSError into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DssyncError as exc:
            _fail(exc)
        except OSError as exc:
            _fail(from_os_error(exc, "running the command"))
        except duckdb.Error as exc:  # damage DuckDB finds only when a query reads the block
            _fail(CorruptStoreError(f"the store could not be read: {str(exc).splitlines()[0]}",
                                    hint="rebuild the store from the log with 'dssync replay HOME'"))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _fail(exc: DssyncError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def _bounded(table: str, key: str) -> click.IntRange:
    """The range dssync.toml accepts for ``[table] key`` (``RANGES``), as an option type."""
    low, high = next((lo, hi) for t, k, lo, hi in RANGES if (t, k) == (table, key))
    return click.IntRange(low, high)


@click.group(cls=DssyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dssync")
def cli() -> None:
    """Keep the data stores of two paired WAN-optimization appliances synchronized.

    An appliance home holds the appliance's configuration, its append-only log and its
    DuckDB-indexed data store. Start with 'dssync init', push traffic with 'dssync ingest',
    and check everything with 'dssync verify'.
    """


@cli.command()
@HOME
@click.option("--name", required=True, help="Appliance name (letters, digits, '.', '_', '-').")
@click.option("--model", default="dssync-virtual", show_default=True, help="Hardware or virtual model.")
@click.option("--version", "software_version", default=__version__, show_default=True, help="Software version.")
@click.option("--chunker", default=str(ChunkerSpec()), show_default=True, help="Chunker spec; both peers must match.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always", show_default=True,
              help="When the log and packs are flushed to disk.")
@click.option("--capacity", "capacity_bytes", type=_bounded("store", "capacity_bytes"), default=8 << 30,
              show_default=True, help="Store capacity in bytes; beyond it the store wraps (evicts oldest).")
@click.option("--retention-bytes", type=_bounded("log", "retention_bytes"), default=0,
              help="Log retention by size (0 = keep all).")
@click.option("--retention-ms", type=_bounded("log", "retention_ms"), default=0,
              help="Log retention by age (0 = keep all).")
@click.option("--segment-bytes", type=_bounded("log", "segment_bytes"), default=64 << 20, show_default=True,
              help="Log segment file size.")
@click.option("--kafka", "kafka_bootstrap", default=None, metavar="HOST:PORT[,...]",
              help="Keep the appliance's log in Kafka (topic <prefix><name>) instead of local files.")
@click.option("--kafka-topic-prefix", default="dssync.", show_default=True)
@click.option("--kafka-security-protocol", default="PLAINTEXT", show_default=True,
              type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]))
@click.option("--kafka-sasl-mechanism", default="", help="e.g. SCRAM-SHA-256 or SCRAM-SHA-512.")
@click.option("--kafka-sasl-user", default="")
@click.option("--kafka-ssl-cafile", default="")
def init(home: str, name: str, model: str, software_version: str, chunker: str, fsync: str,
         capacity_bytes: int, retention_bytes: int, retention_ms: int, segment_bytes: int,
         kafka_bootstrap: str | None, kafka_topic_prefix: str, kafka_security_protocol: str,
         kafka_sasl_mechanism: str, kafka_sasl_user: str, kafka_ssl_cafile: str) -> None:
    """Create an appliance home: configuration, empty log, empty store.

    \b
    Example:
      dssync init /var/lib/dssync/sh1 --name sh1 --model SH-7080 --version 9.14.2
    """
    spec = ChunkerSpec.parse(chunker)
    kafka = None
    if kafka_bootstrap:  # the SASL password comes from DSSYNC_KAFKA_PASSWORD, never a flag
        kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, topic_prefix=kafka_topic_prefix,
                            security_protocol=kafka_security_protocol, sasl_mechanism=kafka_sasl_mechanism,
                            sasl_username=kafka_sasl_user, ssl_cafile=kafka_ssl_cafile)
    with Appliance.create(home, name, model, software_version, spec, kafka=kafka, fsync=fsync,
                          capacity_bytes=capacity_bytes, retention_bytes=retention_bytes, retention_ms=retention_ms,
                          segment_bytes=segment_bytes) as app:
        click.echo(f"created appliance {name} at {home} (store {app.config.store_id})")


def _inputs(paths: tuple[str, ...]) -> Iterator[tuple[str, int | None]]:
    for p in paths:
        if p == "-":
            yield "-", None
        elif os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    full = os.path.join(root, f)
                    if os.path.isfile(full):
                        yield full, os.path.getsize(full)
        elif os.path.isfile(p):
            yield p, os.path.getsize(p)
        else:
            raise NotFoundError(f"no such file or directory: {p}", hint="pass files, directories, or - for stdin")


@cli.command()
@HOME
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the accounting as JSON.")
def ingest(home: str, paths: tuple[str, ...], as_json: bool) -> None:
    """Push files, directories or stdin (-) through the optimization path.

    Prints bytes in, bytes that would cross the WAN, and the savings.

    \b
    Example:
      dssync ingest /var/lib/dssync/sh1 ./release-1.2.tar ./docs/
      tar c src | dssync ingest /var/lib/dssync/sh1 -
    """
    inputs = list(_inputs(paths))  # validate every path before touching the appliance
    total = IngestStats()
    known_size = sum(s for _, s in inputs if s is not None)
    service = ControlClient.for_home(home)
    if service is not None:  # the running service owns the store: send it the traffic
        for path, size in inputs:
            if path == "-":
                with tempfile.TemporaryFile() as spool:
                    shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
                    n = spool.tell()
                    spool.seek(0)
                    total.add(IngestStats(**_stats_fields(service.ingest(spool, n))))
            else:
                with open(path, "rb") as body:
                    total.add(IngestStats(**_stats_fields(service.ingest(body, size or 0))))
    else:
        with Appliance(home) as app, progress("ingest", known_size or None) as step:
            for path, _size in inputs:
                stream: BinaryIO
                if path == "-":
                    total.add(app.ingest(sys.stdin.buffer, step))
                else:
                    with open(path, "rb") as stream:
                        total.add(app.ingest(stream, step))
    doc = total.as_dict()
    if as_json:
        emit_json(doc)
        return
    table([
        ("bytes in", f"{total.bytes_in} ({human_bytes(total.bytes_in)})"),
        ("wire bytes", f"{total.wire_bytes} ({human_bytes(total.wire_bytes)})"),
        ("savings", f"{total.savings * 100:.2f}%"),
        ("segments", f"{total.segments} ({total.new_segments} new)"),
        ("new higher references", total.new_higher_refs),
        ("events written", total.events),
    ])


def _stats_fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "savings"}


@cli.command()
@HOME
@click.option("--from-offset", type=int, default=None, help="First log offset to replay (default: log start).")
@click.option("--json", "as_json", is_flag=True)
def replay(home: str, from_offset: int | None, as_json: bool) -> None:
    """Rebuild the store from its logs: its own, and the peer's as loaded and mirrored here
    (into a new store, swapped in when complete).

    \b
    Example:
      dssync replay /var/lib/dssync/sh1
    """
    bar = LazyProgress("replay")
    try:
        n = replay_home(home, from_offset, bar.update, total=bar.start)
    finally:
        bar.close()
    with Appliance(home) as app:  # opens and checks the new store, and publishes its status
        digest = app.store.digest()
    if as_json:
        emit_json({"records": n, "digest": digest.value, "rows": digest.rows})
    else:
        click.echo(f"replayed {n} records; store digest {digest.value} ({digest.rows} rows)")


@cli.command()
@HOME
@click.option("--json", "as_json", is_flag=True)
def recover(home: str, as_json: bool) -> None:
    """Check every batch of the home's logs (its own and its mirror of the peer's), cut each
    at the first torn or damaged batch, take back from the peer what it holds beyond the cut,
    catch the store up, and report what was done.

    Every command that writes cuts what a crash tore on its own (without reading the whole
    log); run this to check all of it, and when verify or an error names damage in a log.

    \b
    Example:
      dssync recover /var/lib/dssync/sh1
    """
    doc = recover_home(home)
    if as_json:
        emit_json(doc)
        return
    own = doc["log"]
    click.echo(f"log: cut {own['bytes_cut']} bytes ({own['problem']})" if own["bytes_cut"] else "log: intact")
    if doc["records_from_peer"]:
        click.echo(f"log: took back {doc['records_from_peer']} records from the peer's copy")
    if doc["snapshot_events"]:
        click.echo(f"store: rebuilt from the logs, and {doc['snapshot_events']} events of the peer's store loaded "
                   "(the peer's copy of the log held less than the store had applied)")
    if doc["log_pending"]:
        click.echo(f"log: the peer did not give back what was cut: {doc['log_pending']}")
    for peer, m in doc["mirrors"].items():
        cut = f"cut {m['bytes_cut']} bytes ({m['problem']})" if m["bytes_cut"] else "intact"
        click.echo(f"mirror of {peer}: {cut}; holds up to offset {m['end_offset']}"
                   + (f"; {m['pending']}" if m["pending"] else ""))
    click.echo(f"store: applied {doc['records_applied']} records it had not yet applied")


cli.add_command(inspect_cmd.inspect)
cli.add_command(verify.verify_cmd)
cli.add_command(status_cmd)
cli.add_command(lag_cmd)
cli.add_command(bench)
cli.add_command(demo)
cli.add_command(chaos)
cli.add_command(serve_cmd)
cli.add_command(mirror_cmd)
cli.add_command(mirror_topic_cmd)
cli.add_command(sync_group)
cli.add_command(service_group)


def main() -> None:
    # 'kill -USR1 PID' prints every thread's stack to stderr (the service's log): how a stop
    # that hangs is diagnosed. Done in C by faulthandler, so it works even in a deadlock.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cli(prog_name="dssync")


if __name__ == "__main__":
    main()


__all__ = ["UsageError", "cli", "configure", "main"]

"""``dssync serve``, ``dssync mirror``, ``dssync sync configure`` and ``dssync service``."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

import click

from dssync import config as cfgmod
from dssync.appliance.service import serve
from dssync.errors import UsageError
from dssync.log.filelog import FileLog
from dssync.log.kafka import FOLLOW_WAIT_MS, KafkaLog, settings_from_spec
from dssync.process import StopFlag
from dssync.sync.kafka_mirror import TopicCopier
from dssync.sync.mirror import Mirror
from dssync.sync.mirror_base import keep_running
from dssync.sync.site_mirror import SiteMirror
from dssync.tools.control import ControlClient

HOME = click.argument("home", type=click.Path(file_okay=False, path_type=str))


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # kafka-python logs every internal retry; our services log one line per state change
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose else logging.CRITICAL)


@click.command("serve")
@HOME
@click.option("-v", "--verbose", is_flag=True)
def serve_cmd(home: str, verbose: bool) -> None:
    """Run the appliance service: own the store, take traffic, apply the peer's mirrored log.

    Stops cleanly on SIGTERM. A backup configured with 'dssync sync configure' completes its
    pairing when this starts (its store is overwritten by the master's).

    \b
    Example:
      dssync serve /var/lib/dssync/sh1 &
    """

    _logging(verbose)
    if ControlClient.for_home(home) is not None:
        raise UsageError(f"a dssync service already runs for {home}", hint="stop it with 'dssync service stop HOME'")
    serve(home)


@click.command("mirror")
@HOME
@click.option("--wait-ms", type=int, default=500, show_default=True, help="Long-poll wait per request.")
@click.option("-v", "--verbose", is_flag=True)
def mirror_cmd(home: str, wait_ms: int, verbose: bool) -> None:
    """Run the log-mirroring service: copy the peer's own log to this appliance.

    With the file log, over the sync interface into HOME/mirror/; with transport kafka-sites,
    from the peer site's cluster into a mirror topic of this site's cluster. A separate process
    from 'dssync serve'; killing either at any moment loses and doubles nothing (the resume
    point is derived from the destination).

    \b
    Example:
      dssync mirror /var/lib/dssync/sh1 &
    """

    _logging(verbose)
    transport = cfgmod.load(home).sync.transport
    if transport == "kafka-shared":
        raise UsageError("appliances on one shared Kafka cluster need no mirror",
                         hint="each service reads its peer's topic directly; run only 'dssync serve'")
    m: Mirror | SiteMirror = SiteMirror(home) if transport == "kafka-sites" else Mirror(home, wait_ms=wait_ms)

    m.stop.install()  # the handler only raises a flag: see dssync.process
    m.run()


@click.command("mirror-topic")
@click.option("--from-kafka", default=None, metavar="HOST:PORT[,...]", help="Source cluster (with --from-topic).")
@click.option("--from-topic", default=None, help="Source topic: an appliance's own log.")
@click.option("--from-log", default=None, type=click.Path(file_okay=False), help="Or: an embedded log directory.")
@click.option("--to-kafka", required=True, metavar="HOST:PORT[,...]", help="Destination cluster.")
@click.option("--to-topic", required=True, help="Destination topic (created if missing).")
@click.option("--from-security", default="", metavar="PROTOCOL[:MECHANISM:USER]",
              help="Source cluster security, e.g. SASL_SSL:SCRAM-SHA-512:dssync; password from "
                   "DSSYNC_FROM_KAFKA_PASSWORD.")
@click.option("--to-security", default="", metavar="PROTOCOL[:MECHANISM:USER]",
              help="Destination cluster security; password from DSSYNC_TO_KAFKA_PASSWORD.")
@click.option("--ssl-cafile", default="", help="CA for SSL listeners (either side).")
@click.option("--origin", default=None, help="Origin header of the copies (default: the source's name).")
@click.option("--stop-when-idle", is_flag=True, help="Exit once everything the source holds is copied.")
@click.option("-v", "--verbose", is_flag=True)
def mirror_topic_cmd(from_kafka: str | None, from_topic: str | None, from_log: str | None, to_kafka: str,
                     to_topic: str, from_security: str, to_security: str, ssl_cafile: str, origin: str | None,
                     stop_when_idle: bool, verbose: bool) -> None:
    """Copy one log into a Kafka topic exactly once: Kafka to Kafka, or embedded to Kafka.

    The building block of 'dssync mirror' between sites, usable on its own. Kill it at any
    moment and start it again: it resumes after the last copy the destination holds.

    \b
    Example:
      dssync mirror-topic --from-kafka siteA:9092 --from-topic dssync.sh1 \\
          --to-kafka siteB:9092 --to-topic dssync.mirror.sh1
      dssync mirror-topic --from-log /srv/sh1/log --to-kafka siteB:9092 --to-topic dssync.mirror.sh1
    """

    _logging(verbose)
    if (from_log is None) == (from_kafka is None or from_topic is None):
        raise UsageError("give either --from-kafka with --from-topic, or --from-log",
                         hint="see 'dssync mirror-topic --help'")
    # settings first: a malformed security option or a missing password is an error now, not a retry
    src = _settings(from_kafka, from_security, ssl_cafile, "DSSYNC_FROM_KAFKA_PASSWORD") if from_kafka else None
    dest = _settings(to_kafka, to_security, ssl_cafile, "DSSYNC_TO_KAFKA_PASSWORD")
    stop = StopFlag().install()  # the handler only raises a flag: see dssync.process
    log = logging.getLogger("dssync.mirror")
    status = {"now": ""}

    def on_state(state: str, detail: str) -> None:
        if state != status["now"]:
            log.log(logging.WARNING if state == "disconnected" else logging.INFO, "mirror %s: %s", state, detail)
            status["now"] = state

    def cycle() -> None:
        if from_log is not None:
            source: Any = FileLog(from_log)
            name = os.path.abspath(from_log)
        else:
            assert src is not None and from_topic is not None
            source = KafkaLog(src, from_topic, fetch_wait_ms=FOLLOW_WAIT_MS)
            name = from_topic
        copier = TopicCopier(source, name, dest, to_topic, origin or os.path.basename(name))
        try:
            at = copier.open()
            on_state("connected", f"copying {name} into {to_topic} from offset {at}")
            while not stop.is_set():
                if not copier.step():
                    if stop_when_idle and copier.next is not None and copier.next >= source.end_offset():
                        stop.set()
                    elif not copier.follows:  # a Kafka source already waited for records
                        stop.wait(0.01)
        finally:
            copier.close()
            source.close()

    keep_running(cycle, stop.is_set, on_state, stop.wait)


def _settings(bootstrap: str, security: str, cafile: str, password_env: str) -> Any:
    """KafkaSettings from 'PROTOCOL[:MECHANISM:USER]' (the password only ever from the environment)."""

    return settings_from_spec(bootstrap, security, cafile, os.environ.get(password_env, ""), password_env)


@click.group("sync")
def sync_group() -> None:
    """Pair this appliance with a peer (datastore sync master / peer-ip / enable)."""


@sync_group.command("configure")
@HOME
@click.option("--role", type=click.Choice(["master", "backup"]), required=True)
@click.option("--peer", required=True, help="The peer's sync-interface address, HOST:PORT.")
@click.option("--listen", required=True, help="This appliance's sync-interface address, HOST:PORT.")
@click.option("--interface", type=click.Choice(["primary", "aux"]), default="primary", show_default=True)
@click.option("--transport", type=click.Choice(list(cfgmod.TRANSPORTS)), default="http", show_default=True,
              help="http: 'dssync mirror' copies the peer's file log; kafka-shared: both logs live on one "
                   "Kafka cluster and each appliance reads its peer's topic (no mirror process); kafka-sites: "
                   "one cluster per site, 'dssync mirror' copies the peer's topic into this site's cluster.")
@click.option("--peer-kafka", default="", metavar="HOST:PORT[,...]", help="kafka-sites: the peer site's cluster.")
@click.option("--peer-kafka-security", default="", metavar="PROTOCOL[:MECHANISM:USER]",
              help="kafka-sites: the peer cluster's security, e.g. SASL_SSL:SCRAM-SHA-512:dssync (password from "
                   "DSSYNC_PEER_KAFKA_PASSWORD when the mirror runs); default: this site's settings.")
@click.option("--peer-kafka-cafile", default="", help="kafka-sites: CA file for the peer cluster's TLS.")
@click.option("--secret-file", type=click.File("r"), default=None,
              help="A file whose first line is the pair's shared secret (- for standard input). Without it: "
                   "DSSYNC_SYNC_SECRET for this process only (never written), or a prompt.")
@click.option("--secret", default=None, hidden=True,
              help="The secret on the command line: visible in ps and shell history; use --secret-file.")
@click.option("--traffic-address", default=None, help="The in-path address (never used for sync).")
@click.option("--tls-cert", default="", help="PEM certificate for TLS on the sync interface.")
@click.option("--tls-key", default="", help="PEM key of --tls-cert.")
@click.option("--tls-ca", default="", help="CA that signed the peer's certificate (enables client certs).")
def configure(home: str, role: str, peer: str, listen: str, interface: str, transport: str, peer_kafka: str,
              peer_kafka_security: str, peer_kafka_cafile: str, secret_file: TextIO | None, secret: str | None,
              traffic_address: str | None, tls_cert: str, tls_key: str, tls_ca: str) -> None:
    """Configure pairing. The master restarts its service by itself; the backup must be
    restarted by its operator, and its store is then overwritten by the master's.

    \b
    Example:
      dssync sync configure /srv/sh1 --role master --peer 10.0.0.2:7070 --listen 10.0.0.1:7070 \\
          --secret-file /root/pair.secret
      dssync sync configure /srv/sh2 --role backup --peer 10.0.0.1:7070 --listen 10.0.0.2:7070 \\
          --secret-file /root/pair.secret
      dssync service restart /srv/sh2
    """
    cfg = cfgmod.load(home)
    secret, from_env = _pair_secret(secret_file, secret)
    cfg.sync = cfgmod.SyncConfig(role=role, peer=peer, listen=listen, interface=interface, secret=secret,
                                 transport=transport, peer_kafka=peer_kafka,
                                 peer_kafka_security=peer_kafka_security, peer_kafka_cafile=peer_kafka_cafile,
                                 state="restart-required", tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
    if from_env:
        cfg.from_env["sync.secret"] = ""  # the environment's secret serves this process; the file keeps none
    else:
        cfg.from_env.pop("sync.secret", None)
    if traffic_address is not None:
        cfg.traffic.address = traffic_address
    cfg.sync.check_secret()
    cfgmod.save(home, cfg)
    running = ControlClient.for_home(home)
    if role == "master":
        if running is not None:
            running.restart()
            click.echo(f"{cfg.name}: configured as master of {peer}; service restarting")
        else:
            click.echo(f"{cfg.name}: configured as master of {peer}; starts syncing when 'dssync serve' runs")
    else:
        click.echo(f"{cfg.name}: configured as backup of {peer}: restart required "
                   f"(run 'dssync service restart {home}', or start 'dssync serve {home}')")


def _pair_secret(secret_file: TextIO | None, secret: str | None) -> tuple[str, bool]:
    """The pair's secret and whether it came from the environment (then it is never written)."""
    if secret_file is not None:
        value = secret_file.readline().strip()
        if not value:
            raise UsageError(f"{secret_file.name} holds no secret on its first line",
                             hint="write the secret (16 characters or more) on the file's first line")
        return value, False
    if secret is not None:
        click.echo("warning: a secret on the command line is visible to every user in ps and stays in shell "
                   "history; use --secret-file (or DSSYNC_SYNC_SECRET, or the prompt)", err=True)
        return secret, False
    if os.environ.get("DSSYNC_SYNC_SECRET"):
        return os.environ["DSSYNC_SYNC_SECRET"], True
    if not sys.stdin.isatty():
        raise UsageError("no shared secret given", hint="pass --secret-file FILE (or - to read it from standard input)")
    return str(click.prompt("Shared secret of the pair", hide_input=True, confirmation_prompt=True)), False


@click.group("service")
def service_group() -> None:
    """Control a running 'dssync serve'."""


@service_group.command("restart")
@HOME
@click.option("--timeout", type=float, default=30, show_default=True)
def restart(home: str, timeout: float) -> None:
    """Restart the service in place (completes a pending pairing).

    \b
    Example:
      dssync service restart /var/lib/dssync/sh2
    """
    client = _running(home)
    client.restart()
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        again = ControlClient.for_home(home)
        if again is not None and again.token != client.token:
            click.echo(f"service restarted (pid {again.pid})")
            return
    raise UsageError("the service did not come back in time", hint="look at the service's log")


@service_group.command("stop")
@HOME
def stop(home: str) -> None:
    """Stop the service cleanly.

    \b
    Example:
      dssync service stop /var/lib/dssync/sh1
    """
    client = _running(home)
    client.stop()
    for _ in range(150):
        if ControlClient.for_home(home) is None:
            click.echo("service stopped")
            return
        time.sleep(0.1)
    raise UsageError("the service did not stop in time")


def _running(home: str) -> ControlClient:
    cfgmod.load(home)
    client = ControlClient.for_home(home)
    if client is None:
        raise UsageError(f"no dssync service runs for {home}",
                         hint=f"start one with 'dssync serve {os.path.abspath(home)}'")
    return client

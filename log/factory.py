"""Opening an appliance's logs from its configuration, whichever backend holds them.

The one place that knows which class backs which log: the rest of the code sees the
``Log`` / ``LogReader`` interfaces (``dssync.log.base``) and asks for optional abilities by
protocol. Error contract: ``NotFoundError`` / ``UsageError`` for a missing log or topic,
``BackendUnavailableError`` for a cluster that does not answer, ``LockedError`` when another
process holds a file log's writer lock.
"""

from __future__ import annotations

from dssync import config as cfgmod
from dssync.errors import UsageError
from dssync.layout import log_dir
from dssync.log.base import Log, LogReader
from dssync.log.filelog import FileLog
from dssync.log.kafka import KafkaLog, KafkaSettings, create_topic, settings_from_spec, topic_exists
from dssync.log.mirrored import MirroredTopic, mirror_topic


def kafka_settings(cfg: cfgmod.Config) -> KafkaSettings:
    """How to reach this site's cluster (``[kafka]``; the SASL password from the environment)."""
    k = cfg.kafka
    return KafkaSettings(
        k.bootstrap_servers, security_protocol=k.security_protocol, sasl_mechanism=k.sasl_mechanism or None,
        sasl_plain_username=k.sasl_username or None, sasl_plain_password=k.sasl_password or None,
        ssl_cafile=k.ssl_cafile or None, timeout_ms=k.timeout_ms,
    )


def peer_kafka_settings(cfg: cfgmod.Config) -> KafkaSettings:
    """kafka-sites: how to reach the peer site's cluster: its own security settings when
    ``[sync] peer_kafka_security`` is set, else this site's. Raises ``UsageError`` for a SASL
    spec without a password (DSSYNC_PEER_KAFKA_PASSWORD)."""
    own = kafka_settings(cfg)
    s = cfg.sync
    if not s.peer_kafka_security:
        return own.__class__(**{**own.__dict__, "bootstrap_servers": s.peer_kafka})
    return settings_from_spec(s.peer_kafka, s.peer_kafka_security, s.peer_kafka_cafile, s.peer_kafka_password,
                              "DSSYNC_PEER_KAFKA_PASSWORD", timeout_ms=own.timeout_ms)


def _kafka_log(cfg: cfgmod.Config, writer: bool, create: bool) -> KafkaLog:
    lc = cfg.log
    return KafkaLog(
        kafka_settings(cfg), cfg.kafka.topic_prefix + cfg.name, writer=writer, create=create,
        retention_bytes=lc.retention_bytes or -1, retention_ms=lc.retention_ms or -1, origin=cfg.name,
        segment_bytes=lc.segment_bytes, group_id=f"dssync-store-{cfg.name}",
    )


def open_log(home: str, cfg: cfgmod.Config, create: bool = False, scan_all: bool = False) -> Log:
    """The appliance's own log, opened by its single writer: segment files in the home (their
    recovery runs; ``scan_all`` checks every batch), or a Kafka topic (transactional).
    ``create`` makes an empty one."""
    if cfg.log.backend == "kafka":
        return _kafka_log(cfg, writer=True, create=create)
    lc = cfg.log
    return FileLog(
        log_dir(home), writer=True, create=create, fsync=lc.fsync, fsync_interval_ms=lc.fsync_interval_ms,
        segment_bytes=lc.segment_bytes, retention_bytes=lc.retention_bytes, retention_ms=lc.retention_ms,
        scan_all=scan_all,
    )


def open_log_reader(home: str, cfg: cfgmod.Config) -> LogReader:
    """A reader of the appliance's own log; it never blocks the writer."""
    if cfg.log.backend == "kafka":
        return _kafka_log(cfg, writer=False, create=False)
    return FileLog(log_dir(home))


def open_peer_log(home: str, cfg: cfgmod.Config, peer: str, create: bool = False) -> LogReader:
    """The peer's log as an appliance with a Kafka transport reads it: with ``kafka-shared``,
    the peer's own topic on the shared cluster; with ``kafka-sites``, the mirror topic on this
    site's cluster, in the peer's offsets. ``create`` creates the mirror topic when missing (the
    service does; ``verify`` only reads). Raises ``UsageError`` for a transport without a Kafka
    peer log or a missing topic."""
    transport = cfg.sync.transport
    if transport == "kafka-shared":
        peer_cfg = cfgmod.load(home)
        peer_cfg.name = peer  # the peer's topic follows the shared naming
        return open_log_reader(home, peer_cfg)
    if transport != "kafka-sites":
        raise UsageError(f"transport {transport!r} has no Kafka peer log", hint="the peer's log is in HOME/mirror/")
    settings = kafka_settings(cfg)
    topic = mirror_topic(cfg.kafka.topic_prefix, peer)
    if create:
        create_topic(settings, topic, cfg.log.retention_bytes or -1, cfg.log.retention_ms or -1)
    elif not topic_exists(settings, topic):
        raise UsageError(f"no Kafka topic {topic!r} at {settings.bootstrap_servers} (the mirror of {peer}'s log)",
                         hint="start the mirror ('dssync mirror HOME'); it creates the topic")
    return MirroredTopic(settings, topic)


def open_peer_source(cfg: cfgmod.Config, peer: str) -> KafkaLog:
    """kafka-sites: the peer's own topic on the peer site's cluster (read-only)."""
    return KafkaLog(peer_kafka_settings(cfg), cfg.kafka.topic_prefix + peer)

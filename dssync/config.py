"""An appliance's configuration: ``dssync.toml`` in its home.

Values come from the file; a few can be overridden per run with ``DSSYNC_*`` environment
variables (``DSSYNC_FSYNC``). The file is written by ``dssync init`` and is meant to be read
and edited by operators, so it is plain TOML with one key per line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dssync.errors import NotFoundError, UsageError
from dssync.layout import write_private

FILENAME = "dssync.toml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass
class LogConfig:
    backend: str = "file"
    fsync: str = "always"
    fsync_interval_ms: int = 1000
    segment_bytes: int = 64 << 20
    retention_bytes: int = 0
    retention_ms: int = 0


@dataclass
class KafkaConfig:
    """Where the appliance's log lives when ``[log] backend = "kafka"``; security settings pass
    through to kafka-python (the password may come from DSSYNC_KAFKA_PASSWORD instead)."""

    bootstrap_servers: str = ""
    topic_prefix: str = "dssync."
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    timeout_ms: int = 10_000


@dataclass
class StoreConfig:
    capacity_bytes: int = 8 << 30
    pack_bytes: int = 64 << 20
    memory_limit: int = 1 << 30
    """Bytes of memory a process that opens the store (serve, ingest, replay, verify) plans
    for it; DuckDB takes its share and its thread count from it (``consumers.store``)."""


SYNC_ROLES = ("", "master", "backup")
SYNC_STATES = ("unconfigured", "restart-required", "active")
INTERFACES = ("primary", "aux")
TRANSPORTS = ("http", "kafka-shared", "kafka-sites")
"""http: 'dssync mirror' copies the peer's file log over the sync interface; kafka-shared: both
logs on one cluster, each appliance reads its peer's topic; kafka-sites: one cluster per site,
'dssync mirror' copies the peer's topic into this site's cluster."""


@dataclass
class SyncConfig:
    """Pairing: who the peer is and how to reach it over the sync interface (never in-path)."""

    role: str = ""
    transport: str = "http"
    peer: str = ""
    listen: str = ""
    interface: str = "primary"
    secret: str = ""
    state: str = "unconfigured"
    paired_store_id: str = ""
    own_log_from: int = 0
    peer_kafka: str = ""
    peer_kafka_security: str = ""
    """kafka-sites: the peer cluster's security as PROTOCOL[:MECHANISM:USER] (e.g. SASL_SSL:SCRAM-SHA-512:dssync);
    empty: the same settings as this site's cluster. The password comes from DSSYNC_PEER_KAFKA_PASSWORD."""
    peer_kafka_cafile: str = ""
    peer_kafka_password: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    def check_secret(self) -> str:
        """The pair's secret, refused when missing, short or a placeholder (``UsageError``).
        Called where the link is used (``serve``, ``mirror``, configuring a pair): tools that
        only read a home (``status``, ``verify``) need no secret, and one kept in the
        environment is not in the file."""
        hint = ("generate one with: python3 -c 'import secrets; print(secrets.token_hex(16))' > pair.secret; "
                "then pass --secret-file pair.secret on both appliances")
        if not self.secret:
            raise UsageError("no shared secret for the pair: none in dssync.toml, and DSSYNC_SYNC_SECRET is not set",
                             hint="set DSSYNC_SYNC_SECRET for this process, or run 'dssync sync configure' with "
                                  "--secret-file")
        if "change-me" in self.secret.lower() or "changeme" in self.secret.lower():
            raise UsageError("the pair's shared secret is a placeholder", hint=hint)
        if len(self.secret) < 16:
            raise UsageError("the pair's shared secret must be at least 16 characters", hint=hint)
        return self.secret


@dataclass
class TrafficConfig:
    """The in-path side: where optimized traffic arrives. Sync never uses this address."""

    address: str = ""


@dataclass
class MonitorConfig:
    """Lag monitoring and alarms (see dssync.monitor): evaluation cadence, thresholds with
    hysteresis (an alarm raises at or above *rising* held for raise_after_s, clears at or below
    *reset* held for clear_after_s), notifiers and the Prometheus endpoint."""

    interval_s: float = 5.0
    window_s: float = 60.0
    heartbeat_s: float = 5.0
    lag_seconds_rising: float = 60.0
    lag_seconds_reset: float = 10.0
    lag_records_rising: float = 100_000
    lag_records_reset: float = 1_000
    lag_bytes_rising: float = 1 << 30
    lag_bytes_reset: float = 64 << 20
    raise_after_s: float = 15.0
    clear_after_s: float = 15.0
    notify_command: str = ""
    notify_webhook: str = ""
    notify_max_per_hour: int = 30
    metrics_listen: str = "127.0.0.1:0"


@dataclass
class Config:
    name: str
    model: str
    software_version: str
    store_id: str
    chunker: str = "fastcdc2020/avg=8192/min=2048/max=65536"
    log: LogConfig = field(default_factory=LogConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    from_env: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Settings ``load`` took from the environment, with the file's values: ``save`` writes
    the file's (a password exported for one command never lands in dssync.toml)."""

    def validate(self) -> None:
        for table, key, low, high in RANGES:
            value = getattr(getattr(self, table), key)
            if not low <= value <= high:
                raise UsageError(f"[{table}] {key} = {value!r} is out of range ({low} to {high})",
                                 hint=f"set [{table}] {key} in HOME/dssync.toml within that range, "
                                      "or restore the file from a backup")
        if not _NAME.match(self.name) or self.name.startswith("mirror."):
            raise UsageError(
                f"invalid appliance name {self.name!r}",
                hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(and not with 'mirror.', kept for mirror topics)",
            )
        m = self.monitor
        if min(m.interval_s, m.window_s, m.heartbeat_s) <= 0 or m.notify_max_per_hour < 0:
            raise UsageError("[monitor] interval_s, window_s and heartbeat_s must be positive")
        for what in ("lag_seconds", "lag_records", "lag_bytes"):
            if getattr(m, f"{what}_reset") > getattr(m, f"{what}_rising"):
                raise UsageError(f"[monitor] {what}_reset is above {what}_rising",
                                 hint="an alarm clears at or below reset and raises at or above rising")
        if not self.model or not self.software_version:
            raise UsageError("model and software version must not be empty")
        if self.log.backend not in ("file", "kafka"):
            raise UsageError(f"unknown log backend {self.log.backend!r}", hint="use file or kafka")
        if self.log.backend == "kafka" and not self.kafka.bootstrap_servers:
            raise UsageError("the kafka log backend needs [kafka] bootstrap_servers",
                             hint="pass --kafka HOST:PORT to 'dssync init'")
        if self.log.fsync not in ("always", "interval", "never"):
            raise UsageError(f"unknown fsync policy {self.log.fsync!r}", hint="use always, interval or never")
        if self.store.capacity_bytes < self.store.pack_bytes * 2:
            raise UsageError("store capacity must hold at least two packs", hint="raise capacity_bytes")
        s = self.sync
        if s.role not in SYNC_ROLES or s.state not in SYNC_STATES or s.interface not in INTERFACES:
            raise UsageError("invalid [sync] role, state or interface",
                             hint="role is master or backup; interface is primary or aux")
        if s.transport not in TRANSPORTS:
            raise UsageError(f"unknown sync transport {s.transport!r}", hint="use " + ", ".join(TRANSPORTS))
        if s.role and (s.transport != "http") != (self.log.backend == "kafka"):
            raise UsageError(
                "sync transports kafka-shared and kafka-sites go with a Kafka log, and http with the file log",
                hint="use --transport kafka-shared or kafka-sites for appliances initialised with --kafka",
            )
        if s.role and s.transport == "kafka-sites":
            host, _, port = s.peer_kafka.rpartition(":")
            if not host or not port.isdigit():
                raise UsageError("transport kafka-sites needs the peer site's cluster as [sync] peer_kafka",
                                 hint="pass --peer-kafka HOST:PORT to 'dssync sync configure'")
        spec = s.peer_kafka_security.split(":") if s.peer_kafka_security else []
        if spec and (len(spec) not in (1, 3) or not all(spec)):
            raise UsageError(f"[sync] peer_kafka_security {s.peer_kafka_security!r} is not PROTOCOL or "
                             "PROTOCOL:MECHANISM:USER", hint="e.g. SSL, or SASL_SSL:SCRAM-SHA-512:dssync")
        if s.role:
            for name in ("peer", "listen"):
                addr = getattr(s, name)
                host, _, port = addr.rpartition(":")
                if not host or not port.isdigit():
                    raise UsageError(f"sync {name} address {addr!r} is not HOST:PORT")
            if s.secret:  # none in the file: it comes from DSSYNC_SYNC_SECRET where it is used
                s.check_secret()
            if self.traffic.address and self.traffic.address.rpartition(":")[0] == s.listen.rpartition(":")[0]:
                raise UsageError("the sync interface must not be the in-path (traffic) address",
                                 hint="use the primary or aux interface's address for --listen")


RANGES = (
    ("log", "segment_bytes", 4096, (1 << 32) - 1),
    ("log", "fsync_interval_ms", 1, (1 << 31) - 1),
    ("log", "retention_bytes", 0, 1 << 62),
    ("log", "retention_ms", 0, 1 << 62),
    ("kafka", "timeout_ms", 100, (1 << 31) - 1),
    ("store", "pack_bytes", 64 << 10, 1 << 40),
    ("store", "capacity_bytes", 128 << 10, 1 << 62),
    ("store", "memory_limit", 128 << 20, 1 << 50),
    ("monitor", "notify_max_per_hour", 0, 1_000_000),
)
"""(table, key, lowest, highest) of each bounded number: a value outside (a typo, a damaged
file) is refused when the configuration is read, not when a component first uses it. A pack
holds at least one segment of the largest size the chunker cuts (64 KiB)."""


def _check_types(path: str, cfg: Config) -> None:
    """Refuse a value of another type than its setting's (TOML keeps types: a damaged or
    hand-edited file can hold ``segment_bytes = "64"`` or ``fsync = 1``): ints are ints (not
    booleans), floats take ints too, strings are strings."""
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    tables = ("log", "store", "sync", "traffic", "kafka", "monitor")
    sections = {"": cfg, **{name: getattr(cfg, name) for name in tables}}
    for table, section in sections.items():
        for f in fields(section):
            want = kinds.get(str(f.type))
            if want is None:  # a table, or what load keeps beside the file's settings
                continue
            value = getattr(section, f.name)
            ok = (isinstance(value, bool) if want is bool else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
                  isinstance(value, want) and not isinstance(value, bool) if want is int else
                  isinstance(value, want))
            if not ok:
                where = f"[{table}] {f.name}" if table else f.name
                raise UsageError(f"{path}: {where} = {value!r} is not a{'n' if want is int else ''} {want.__name__}",
                                 hint="restore the file from a backup, or fix the value by hand")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


ENV_OVERRIDES = (
    ("DSSYNC_FSYNC", "log", "fsync"),
    ("DSSYNC_KAFKA_PASSWORD", "kafka", "sasl_password"),
    ("DSSYNC_PEER_KAFKA_PASSWORD", "sync", "peer_kafka_password"),
    ("DSSYNC_SYNC_SECRET", "sync", "secret"),
)
"""(variable, table, key): settings the environment overrides for one process, never saved."""


def dumps(cfg: Config) -> str:
    doc = asdict(cfg)
    doc.pop("from_env")
    for name, value in cfg.from_env.items():
        table, key = name.split(".")
        doc[table][key] = value
    lines = ["# dssync appliance configuration (see 'dssync init --help')"]
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    for k, v in doc.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for t, values in tables.items():
        lines.append(f"\n[{t}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def load(home: str) -> Config:
    path = os.path.join(home, FILENAME)
    if not os.path.isdir(home):
        raise NotFoundError(f"no appliance home at {home}", hint=f"create one with 'dssync init {home} --name NAME'")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise NotFoundError(
            f"{home} is not an appliance home (no {FILENAME})",
            hint=f"create one with 'dssync init {home} --name NAME'",
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}",
                         hint="restore the file from a backup, or fix it by hand") from None
    try:
        cfg = Config(
            name=doc["name"], model=doc["model"], software_version=doc["software_version"],
            store_id=doc["store_id"], chunker=doc.get("chunker", Config.chunker),
            log=LogConfig(**doc.get("log", {})), store=StoreConfig(**doc.get("store", {})),
            sync=SyncConfig(**doc.get("sync", {})), traffic=TrafficConfig(**doc.get("traffic", {})),
            kafka=KafkaConfig(**doc.get("kafka", {})), monitor=MonitorConfig(**doc.get("monitor", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"{path} is missing or has an unknown key or value: {exc}",
            hint="restore the file from a backup, or compare it with the dssync.toml of a new home (dssync init)",
        ) from None
    _check_types(path, cfg)
    for env, table, key in ENV_OVERRIDES:
        if env in os.environ:
            section = getattr(cfg, table)
            cfg.from_env[f"{table}.{key}"] = getattr(section, key)
            setattr(section, key, os.environ[env])
    try:
        cfg.validate()
    except UsageError as exc:
        raise UsageError(f"{path}: {exc.message}", hint=exc.hint.replace("HOME/dssync.toml", path)) from None
    return cfg


def save(home: str, cfg: Config) -> None:
    """Write the configuration durably, 0600 in a 0700 home: it holds the pair's secret (and
    passwords). Settings taken from the environment are written as they were in the file."""
    cfg.validate()
    os.chmod(home, 0o700)
    write_private(os.path.join(home, FILENAME), dumps(cfg).encode())

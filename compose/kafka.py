#!/usr/bin/env python3
"""Fetch, start, wait for and stop single-node Apache Kafka brokers (KRaft) without Docker.

The broker's released jars come from Maven Central through ``pom.xml`` (Maven caches them in
``~/.m2``; the classpath is copied to ``compose/.jars``) and run with ``java``. Each broker
lives in its own directory with its config, data, log and pid file.

    python compose/kafka.py fetch
    python compose/kafka.py start site-a --port 19092 [--controller-port 19093] [--scram-port 19094]
    python compose/kafka.py stop site-a [--remove]
    python compose/kafka.py status site-a
    python compose/kafka.py mirrormaker mm2 --source 127.0.0.1:19092 --target 127.0.0.1:29092 --topic T

Exit codes: 0 ok, 1 the broker did not start (its log tail is printed), 2 usage,
3 java or mvn missing. Standard library only: it runs before the project is installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
JARS = os.path.join(HERE, ".jars")
RUN = os.environ.get("DSSYNC_KAFKA_DIR", os.path.join(HERE, ".run"))
SCRAM_USER = "dssync"
SCRAM_PASSWORD = "dssync-secret"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        print(f"error: {tool} is not installed", file=sys.stderr)
        print("hint: install Java 17 and Maven (apt-get install openjdk-17-jre-headless maven)", file=sys.stderr)
        sys.exit(3)
    return path


def fetch() -> str:
    """Copy the broker's runtime classpath into compose/.jars (once); return the classpath."""
    marker = os.path.join(JARS, ".complete")
    pom = os.path.join(HERE, "pom.xml")
    if not os.path.exists(marker) or os.path.getmtime(marker) < os.path.getmtime(pom):
        mvn = _need("mvn")
        shutil.rmtree(JARS, ignore_errors=True)
        cmd = [mvn, "-B", "-q", "-f", pom, "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
               f"-DoutputDirectory={JARS}", "-DincludeScope=runtime"]
        if subprocess.run(cmd).returncode != 0:
            print("error: Maven could not fetch the Kafka jars", file=sys.stderr)
            print("hint: check that Maven Central is reachable, then run again", file=sys.stderr)
            sys.exit(1)
        open(marker, "w").close()
    return os.path.join(JARS, "*")


def _dir(name: str) -> str:
    return os.path.join(RUN, name)


def _pid(name: str) -> int | None:
    try:
        with open(os.path.join(_dir(name), "broker.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def _properties(d: str, port: int, cport: int, scram_port: int | None) -> str:
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{cport}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
    extra = []
    if scram_port:
        listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{scram_port}")
        advertised.append(f"SASL_PLAINTEXT://127.0.0.1:{scram_port}")
        protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
        extra = [
            "sasl.enabled.mechanisms=SCRAM-SHA-256",
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ]
    return "\n".join([
        "process.roles=broker,controller", "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
        f"listeners={','.join(listeners)}", f"advertised.listeners={','.join(advertised)}",
        "controller.listener.names=CONTROLLER", "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={','.join(protocols)}",
        f"log.dirs={os.path.join(d, 'data')}",
        "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=3",
        "share.coordinator.state.topic.replication.factor=1", "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0", "auto.create.topics.enable=false",
        "log.retention.check.interval.ms=2000",  # small test topics reach their retention quickly
        "num.partitions=1", "default.replication.factor=1", "min.insync.replicas=1",
        *extra, "",
    ])


def start(name: str, port: int, cport: int, scram_port: int | None, timeout: float, keep: bool = False) -> None:
    java = _need("java")
    cp = fetch()
    if _pid(name):
        print(f"broker {name} already running (pid {_pid(name)})")
        return
    d = _dir(name)
    props = os.path.join(d, "server.properties")
    if keep and os.path.exists(props):  # a restart: same config, same data
        _launch(name, java, cp, d, props, port, timeout)
        return
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(props, "w") as f:
        f.write(_properties(d, port, cport, scram_port))
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").replace("-", "A")
    log4j = f"-Dlog4j2.configurationFile={os.path.join(HERE, 'log4j2.properties')}"
    fmt = [java, log4j, "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
           "-c", props, "-f", "transaction.version=1"]
    if scram_port:
        fmt += ["--add-scram", f"SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"]
    out = subprocess.run(fmt, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"error: formatting the broker storage failed:\n{out.stdout}{out.stderr}", file=sys.stderr)
        sys.exit(1)
    _launch(name, java, cp, d, props, port, timeout)


def _launch(name: str, java: str, cp: str, d: str, props: str, port: int, timeout: float) -> None:
    log4j = f"-Dlog4j2.configurationFile={os.path.join(HERE, 'log4j2.properties')}"
    logpath = os.path.join(d, "broker.log")
    with open(logpath, "w") as logf:
        proc = subprocess.Popen([java, "-Xms256m", "-Xmx768m", log4j, "-cp", cp, "kafka.Kafka", props],
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(d, "broker.pid"), "w") as f:
        f.write(str(proc.pid))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        with open(logpath, errors="replace") as f:
            if "Kafka Server started" in f.read():
                print(f"broker {name} started on 127.0.0.1:{port} (pid {proc.pid})")
                return
        time.sleep(0.3)
    with open(logpath, errors="replace") as f:
        tail = f.read()[-4000:]
    stop(name)
    print(f"error: broker {name} did not start within {timeout:.0f}s; log tail:\n{tail}", file=sys.stderr)
    sys.exit(1)


MM2_MODES = {  # mode: (source cluster alias, target alias, extra properties)
    "default": ("A", "B", []),
    "read-committed": ("C", "D", ["C.consumer.isolation.level = read_committed"]),
    "exactly-once": ("S", "T", ["T.exactly.once.source.support = enabled",
                                "S.consumer.isolation.level = read_committed",
                                "dedicated.mode.enable.internal.rest = true"]),
}


def mirrormaker(name: str, source: str, target: str, topic: str, mode: str = "default") -> None:
    """Start MirrorMaker 2 (dedicated mode, from the same jars) copying ``topic`` from the
    cluster at ``source`` to the one at ``target``; stop it with ``stop``.

    ``mode`` (``MM2_MODES``): ``default`` reads the source uncommitted (records of open and of
    aborted transactions are copied too) and writes at least once, as ``A.<topic>``;
    ``read-committed`` is the default with the source read ``read_committed`` (what a mirror of
    a transactional topic needs not to copy aborted records), as ``C.<topic>``;
    ``exactly-once`` is MirrorMaker 2's exactly-once mode (Kafka 3.5+: transactional writes at
    the target, the source read ``read_committed``), as ``S.<topic>``. Each mode has cluster
    aliases of its own, so that they can run side by side.
    """
    java = _need("java")
    cp = fetch()
    d = _dir(name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    props = os.path.join(d, "mm2.properties")
    src, dst, extra = MM2_MODES[mode]
    if mode == "exactly-once":
        extra = [*extra, f"listeners = http://127.0.0.1:{_free_port()}"]
    rf1 = ["replication.factor", "checkpoints.topic.replication.factor", "heartbeats.topic.replication.factor",
           "offset-syncs.topic.replication.factor", "offset.storage.replication.factor",
           "status.storage.replication.factor", "config.storage.replication.factor"]
    with open(props, "w") as f:
        f.write("\n".join([
            f"clusters = {src}, {dst}", f"{src}.bootstrap.servers = {source}", f"{dst}.bootstrap.servers = {target}",
            f"{src}->{dst}.enabled = true", f"{src}->{dst}.topics = {topic}", f"{dst}->{src}.enabled = false",
            "tasks.max = 1", "refresh.topics.interval.seconds = 1", "emit.heartbeats.enabled = false",
            "emit.checkpoints.enabled = false", "sync.group.offsets.enabled = false",
            *(f"{k} = 1" for k in rf1), *extra, "",
        ]))
    log4j = f"-Dlog4j2.configurationFile={os.path.join(HERE, 'log4j2.properties')}"
    with open(os.path.join(d, "broker.log"), "w") as logf:
        proc = subprocess.Popen([java, "-Xms256m", "-Xmx768m", log4j, "-cp", cp,
                                 "org.apache.kafka.connect.mirror.MirrorMaker", props],
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(d, "broker.pid"), "w") as f:
        f.write(str(proc.pid))
    print(f"mirrormaker {name} started (pid {proc.pid}): {source} -> {target}, topic {topic} as {src}.{topic}"
          + f" ({mode} mode)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(name: str) -> None:
    pid = _pid(name)
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        if _pid(name) is None:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch")
    s = sub.add_parser("start")
    s.add_argument("name")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--controller-port", type=int)
    s.add_argument("--scram-port", type=int)
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("--keep-data", action="store_true", help="restart on the existing data (no format)")
    st = sub.add_parser("stop")
    st.add_argument("name")
    st.add_argument("--remove", action="store_true", help="also delete the broker's directory and data")
    sub.add_parser("status").add_argument("name")
    mm = sub.add_parser("mirrormaker", help="start MirrorMaker 2 between two running brokers")
    mm.add_argument("name")
    mm.add_argument("--source", required=True)
    mm.add_argument("--target", required=True)
    mm.add_argument("--topic", required=True)
    mm.add_argument("--mode", choices=sorted(MM2_MODES), default="default",
                    help="default (source read uncommitted), read-committed, or exactly-once")
    a = p.parse_args()
    if a.cmd == "fetch":
        print(fetch())
    elif a.cmd == "start":
        start(a.name, a.port, a.controller_port or a.port + 1, a.scram_port, a.timeout, a.keep_data)
    elif a.cmd == "mirrormaker":
        mirrormaker(a.name, a.source, a.target, a.topic, a.mode)
    elif a.cmd == "stop":
        stop(a.name)
        if a.remove:
            shutil.rmtree(_dir(a.name), ignore_errors=True)
    else:
        pid = _pid(a.name)
        print(f"{a.name}: running (pid {pid})" if pid else f"{a.name}: stopped")
        sys.exit(0 if pid else 1)


if __name__ == "__main__":
    main()

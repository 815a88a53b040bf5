"""The docker-compose files stay consistent with the scripts and the CLI (no Docker needed),
and the appliance entrypoint of docker-compose.yml runs as it is against two real brokers."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dssync.bench.localpair import SECRET, Node, free_port, wait_converged
from dssync.tools.cli import cli
from tests.pair import release

TOP = Path(__file__).resolve().parents[2]
DOCKER = TOP / "compose" / "docker"


def test_docker_compose_runs_the_kafka_release_the_scripts_fetch() -> None:
    pom = (TOP / "compose" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    images = re.findall(r"image:\s*apache/kafka:(\S+)", (DOCKER / "docker-compose.yml").read_text())
    assert images == [version.group(1)]


def test_the_compose_file_ships_no_pair_secret_and_refuses_to_start_without_one(tmp_path: Path) -> None:
    from tests.netcompose import ComposeError, NetCompose

    stack = NetCompose(DOCKER / "docker-compose.yml", tmp_path, {}, environ={})
    value = str(stack.services["sha"]["environment"]["DSSYNC_SYNC_SECRET"])
    with pytest.raises(ComposeError, match="DSSYNC_SYNC_SECRET"):
        stack.interpolate(value)
    assert NetCompose(DOCKER / "docker-compose.yml", tmp_path, {},
                      environ={"DSSYNC_SYNC_SECRET": SECRET}).interpolate(value) == SECRET


def test_the_appliance_entrypoint_uses_only_options_the_cli_has() -> None:
    script = (DOCKER / "appliance.sh").read_text().replace("\\\n", " ")
    calls = [shlex.split(line.strip().rstrip("&").strip()) for line in script.splitlines()
             if line.strip().startswith("dssync ")]
    assert {c[1] for c in calls} >= {"init", "sync", "serve", "mirror"}
    for call in calls:
        words = [w for w in call[1:] if not w.startswith("-") and "$" not in w and not w.startswith('"')]
        options = [w for w in call[1:] if w.startswith("--")]
        command = words[:2] if words[0] == "sync" else words[:1]
        out = CliRunner().invoke(cli, [*command, "--help"]).output
        for opt in options:
            assert opt in out, f"{opt} is not an option of 'dssync {' '.join(words[:2])}'"
    assert "--transport kafka-sites" in script and "--peer-kafka" in script


@pytest.mark.kafka
def test_the_compose_appliance_entrypoint_pairs_two_sites_and_keeps_them_in_sync(
        tmp_path: Path, kafka_broker: Any, kafka_broker_b: Any) -> None:
    """What ``docker compose up`` runs in the two appliance containers, run here as two
    process trees on loopback: first start creates and pairs the homes, then serve + mirror;
    SIGTERM (docker stop) ends each tree cleanly."""
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = {"sha": free_port(), "shb": free_port()}
    sites = {"sha": kafka_broker.bootstrap, "shb": kafka_broker_b.bootstrap}
    prefix = f"compose{os.getpid()}-{uuid.uuid4().hex[:6]}."
    bin_dir = os.path.dirname(sys.executable)  # the 'dssync' command of this environment
    procs: dict[str, subprocess.Popen[bytes]] = {}
    a, b = (Node(n, str(tmp_path / n), ports[n], str(logs)) for n in ("sha", "shb"))
    try:
        for name, peer, role in (("sha", "shb", "master"), ("shb", "sha", "backup")):
            env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                   "NAME": name, "ROLE": role, "PEER": peer, "KAFKA": sites[name], "PEER_KAFKA": sites[peer],
                   "DSSYNC_SYNC_SECRET": SECRET, "DSSYNC_ROOT": str(tmp_path), "KAFKA_TOPIC_PREFIX": prefix,
                   "PEER_ADDRESS": f"127.0.0.1:{ports[peer]}", "LISTEN": f"127.0.0.1:{ports[name]}"}
            with open(logs / f"{name}.entrypoint.log", "ab") as log:
                procs[name] = subprocess.Popen(["bash", str(DOCKER / "appliance.sh")], env=env, stdout=log,
                                               stderr=log, start_new_session=True)
        deadline = time.time() + 120
        while not all((tmp_path / n / "run" / "serve.json").exists() for n in ports):
            for name, p in procs.items():
                assert p.poll() is None, (logs / f"{name}.entrypoint.log").read_text()[-2000:]
            assert time.time() < deadline, "the entrypoints did not start their services"
            time.sleep(0.2)
        r = release(tmp_path, 47, 1_000_000, 3)
        a.ingest(r[0])
        b.ingest(r[1])
        wait_converged(a, b, timeout=120)
        assert a.status()["sync"]["role"] == "master"
        assert b.ingest(r[0])["savings"] > 0.999  # sha's data is in shb's store
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for name, p in procs.items():  # docker stop: the trap stops serve and mirror, nothing left
        assert p.returncode in (0, 143), (logs / f"{name}.entrypoint.log").read_text()[-2000:]
        left = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert not left, f"processes left in {name}'s group: {left}"


def _compose_images(tmp_path: Path) -> dict[str, Any]:
    """Stand-ins for docker-compose.yml's two images (tests/netcompose.py): the Dockerfile's
    (this environment's installed dssync, its ENTRYPOINT and COPY as written) and
    apache/kafka's (the same release's jars behind the three scripts of the image that
    kafka-site.sh and the healthcheck call)."""
    from tests.netcompose import Image, dockerfile_entrypoint

    cp = subprocess.run([sys.executable, str(TOP / "compose" / "kafka.py"), "fetch"], check=True,
                        capture_output=True, text=True).stdout.strip().splitlines()[-1]
    home = tmp_path / "opt-kafka"
    (home / "bin").mkdir(parents=True)
    log4j = f"-Dlog4j2.configurationFile={TOP / 'compose' / 'log4j2.properties'}"
    for script, main, heap in (("kafka-storage.sh", "kafka.tools.StorageTool", "-Xmx256m"),
                               ("kafka-server-start.sh", "kafka.Kafka", "-Xms256m -Xmx768m"),
                               ("kafka-broker-api-versions.sh", "org.apache.kafka.tools.BrokerApiVersionsCommand",
                                "-Xmx128m")):
        path = home / "bin" / script
        path.write_text(f'#!/bin/sh\nexec java {heap} {log4j} -cp "{cp}" {main} "$@"\n')
        path.chmod(0o755)
    entrypoint, copies = dockerfile_entrypoint(DOCKER / "Dockerfile", TOP)
    bin_dir = os.path.dirname(sys.executable)

    def kafka_env(service: str, volumes: dict[str, str]) -> dict[str, str]:
        return {"KAFKA_HOME": str(home), "KAFKA_STATE": str(tmp_path / "state" / service)}

    def appliance_env(service: str, volumes: dict[str, str]) -> dict[str, str]:
        return {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "DSSYNC_ROOT": volumes["/var/lib/dssync"]}

    return {"apache/kafka:4.1.1": Image({"/opt/kafka": str(home)}, kafka_env),
            "build": Image(copies, appliance_env, entrypoint)}


@pytest.mark.kafka
def test_docker_compose_yml_runs_two_sites_each_service_on_a_host_of_its_own(tmp_path: Path) -> None:
    """docker-compose.yml as written (hostnames, ports, environment, depends_on, healthchecks,
    entrypoints), each service in a network namespace of its own (tests/netcompose.py): the
    two brokers come up healthy, the appliances pair across the sites, data ingested on each
    reaches the other's store, and ``down`` stops everything within Docker's grace."""
    from tests.netcompose import NetCompose, can_run

    why = can_run()
    if why is not None:
        message = f"the compose stack runs in network namespaces: {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    images = _compose_images(tmp_path)
    r = release(tmp_path, 53, 1_000_000, 3)
    with NetCompose(DOCKER / "docker-compose.yml", tmp_path / "compose", images,
                    environ={**os.environ, "DSSYNC_SYNC_SECRET": SECRET}) as stack:
        stack.up(timeout=300)

        def status(name: str) -> dict[str, Any]:
            doc: dict[str, Any] = json.loads(stack.exec(name, ["dssync", "status", f"/var/lib/dssync/{name}",
                                                               "--json"]).stdout)
            return doc

        volumes = tmp_path / "compose" / "volumes"
        deadline = time.time() + 120
        while not all((volumes / f"{n}-home" / n / "run" / "serve.json").exists() for n in ("sha", "shb")):
            assert time.time() < deadline, f"{stack.log('sha')[-2000:]}\n{stack.log('shb')[-2000:]}"
            time.sleep(0.5)
        stack.exec("sha", ["dssync", "ingest", "/var/lib/dssync/sha", r[0]])
        stack.exec("shb", ["dssync", "ingest", "/var/lib/dssync/shb", r[1]])
        deadline = time.time() + 180
        while True:
            sa, sb = status("sha"), status("shb")
            if (sb["store"]["offsets"].get("log:sha", 0) >= sa["log_end_offset"] > 0
                    and sa["store"]["offsets"].get("log:shb", 0) >= sb["log_end_offset"] > 0):
                break
            assert time.time() < deadline, f"no convergence\n{stack.log('sha')[-3000:]}\n{stack.log('shb')[-3000:]}"
            time.sleep(0.5)
        assert sa["sync"]["role"] == "master" and sb["sync"]["role"] == "backup"
        for name in ("sha", "shb"):  # the compose file's own check, in each container
            stack.exec(name, ["dssync", "verify", f"/var/lib/dssync/{name}"])
        doc = json.loads(stack.exec("shb", ["dssync", "ingest", "/var/lib/dssync/shb", r[0], "--json"]).stdout)
        assert doc["savings"] > 0.999  # sha's data is in shb's store
        stack.down()
    assert not stack.killed, f"needed SIGKILL: {stack.killed}"
    for name in ("sha", "shb"):
        assert stack.returncodes[name] in (0, 143), stack.log(name)[-2000:]

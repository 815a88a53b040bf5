"""The docker-compose files stay consistent with the scripts and the CLI (no Docker needed),
and the appliance entrypoint of docker-compose.yml runs as it is against two real brokers."""

from __future__ import annotations

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

from dssync.tools.cli import cli
from dssync.tools.localpair import SECRET, Node, free_port, wait_converged
from tests.pair import release

TOP = Path(__file__).resolve().parent.parent
DOCKER = TOP / "compose" / "docker"


def test_docker_compose_runs_the_kafka_release_the_scripts_fetch() -> None:
    pom = (TOP / "compose" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    images = re.findall(r"image:\s*apache/kafka:(\S+)", (DOCKER / "docker-compose.yml").read_text())
    assert images == [version.group(1)]


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

"""The docker-compose files stay consistent with the scripts and the CLI (no Docker needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from dssync.tools.cli import cli

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

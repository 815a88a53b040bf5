"""Shared fixtures: appliance homes, a CLI runner, and a helper to run dssync in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dssync.tools.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def make_home(tmp_path: Path) -> Callable[..., str]:
    """Create an appliance home through the CLI; returns its path."""

    def make(name: str = "sh1", *extra: str) -> str:
        home = str(tmp_path / name)
        args = ["init", home, "--name", name, "--model", "SH-7080", "--version", "9.14", *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        return home

    return make


def run_dssync(*args: str, check: bool = True, env: dict[str, str] | None = None,
               input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real command line in a child process."""
    proc = subprocess.run([sys.executable, "-m", "dssync.tools.cli", *args], capture_output=True,
                          env={**os.environ, **(env or {})}, input=input_bytes)
    if check and proc.returncode != 0:
        raise AssertionError(f"dssync {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


@pytest.fixture(scope="session")
def kafka_broker() -> object:
    """One real broker for the whole session (site A)."""
    from tests.kafka_broker import start_broker

    broker = start_broker("site-a", scram=True)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_broker_b() -> object:
    """A second cluster (site B), for mirroring between sites."""
    from tests.kafka_broker import start_broker

    broker = start_broker("site-b")
    yield broker
    broker.stop()

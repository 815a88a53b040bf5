"""Shared fixtures: appliance homes, a CLI runner, a helper to run dssync in a real process,
running appliances stopped after each test, and real Kafka brokers."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dssync.bench.localpair import Node
from dssync.process import command
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


@pytest.fixture
def running() -> Iterator[list[Node]]:
    """Appliances a test adds here have their service and mirror stopped when it ends, whether
    it passed or failed, so no process outlives its test."""
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.stop_all()


def run_dssync(*args: str, check: bool = True, env: dict[str, str] | None = None,
               input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real command line in a child process."""
    proc = subprocess.run(command(*args), capture_output=True,
                          env={**os.environ, **(env or {})}, input=input_bytes)
    if check and proc.returncode != 0:
        raise AssertionError(f"dssync {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


@pytest.fixture
def leaky_client() -> Iterator[None]:
    """kafka-python 3.0 leaves unclosed the socket of a connection attempt that fails (a client
    whose constructor fails; a client reconnecting to a broker the test stopped); the object
    never reaches our code. Collect them here, with their ResourceWarning silenced, so the leak
    is neither reported against another test nor hidden for the rest of the suite."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


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


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real local webhook receiver: its URL, and the JSON documents POSTed to it (in order,
    each with the time it arrived as ``received_at``)."""
    got: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            doc["received_at"] = time.time()
            got.append(doc)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/alarms", got
    srv.shutdown()
    srv.server_close()

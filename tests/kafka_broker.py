"""A real Kafka broker for the tests, started once per session with compose/kafka.py.

Without Java or Maven the Kafka tests skip with a clear message, except under CI (the ``CI``
environment variable), where a broker that cannot be started fails the run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAFKA_PY = os.path.join(TOP, "compose", "kafka.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    name: str
    port: int
    scram_port: int | None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, remove: bool = True) -> None:
        """Stop the broker; unless ``remove`` is False (a restart follows), delete its data."""
        subprocess.run([sys.executable, KAFKA_PY, "stop", self.name, *(["--remove"] if remove else [])], check=True)

    def start(self, keep_data: bool = False) -> None:
        """Start the broker (formatted afresh, or on its existing data for a restart)."""
        proc = subprocess.run([sys.executable, KAFKA_PY, "start", self.name, "--port", str(self.port),
                               "--controller-port", str(free_port()),
                               *(["--scram-port", str(self.scram_port)] if self.scram_port else []),
                               *(["--keep-data"] if keep_data else [])],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            message = f"the Kafka broker could not be started: {proc.stderr.strip()[-2000:]}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


def start_broker(name: str, scram: bool = False) -> Broker:
    missing = [t for t in ("java", "mvn") if shutil.which(t) is None]
    if missing:
        message = f"Kafka tests need {' and '.join(missing)} (Java 17 and Maven) to run a real broker"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    b = Broker(f"{name}-{os.getpid()}", free_port(), free_port() if scram else None)
    b.start()
    return b

"""The embedded file log passes the log contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from dssync.log.base import Log, LogReader
from dssync.log.filelog import FileLog
from tests.contract.log_contract import LogContract


class TestFileLogContract(LogContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.dir = str(tmp_path / "log")

    def make_log(self) -> Log:
        return FileLog(self.dir, writer=True, create=True, segment_bytes=64 * 1024)

    def reopen(self, log: Log) -> Log:
        log.close()
        return FileLog(self.dir, writer=True)

    def make_trimmed_reader(self, batches: list[list[bytes]]) -> LogReader:
        log = FileLog(self.dir, writer=True, create=True, segment_bytes=64 * 1024, retention_bytes=1 << 20)
        for batch in batches:
            log.append(batch)  # each roll of a segment applies retention
        return log

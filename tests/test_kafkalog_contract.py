"""The Kafka log passes the same log contract as the file log, against a real broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dssync.log.base import Log
from dssync.log.kafka import KafkaLog, KafkaSettings
from tests.contract.log_contract import LogContract

pytestmark = pytest.mark.kafka


class TestKafkaLogContract(LogContract):
    @pytest.fixture(autouse=True)
    def _broker(self, kafka_broker: Any) -> None:
        self.settings = KafkaSettings(kafka_broker.bootstrap)
        self.topic = f"contract-{uuid.uuid4().hex[:12]}"

    def make_log(self) -> Log:
        return KafkaLog(self.settings, self.topic, writer=True, create=True, origin="sh1")

    def reopen(self, log: Log) -> Log:
        log.close()
        return KafkaLog(self.settings, self.topic, writer=True)

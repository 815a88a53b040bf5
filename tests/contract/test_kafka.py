"""The Kafka log, and a mirror topic read in its source's offsets, pass the log contracts
against real brokers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, TopicPartition

from dssync.log.base import Log, LogReader
from dssync.log.kafka import KafkaLog, KafkaSettings
from dssync.log.mirrored import MirroredTopic, TopicReader, source_position
from dssync.sync.kafka_mirror import TopicCopier
from tests.contract.log_contract import LogContract, ReaderContract

pytestmark = pytest.mark.kafka


def _delete_records(settings: KafkaSettings, topic: str, before: int) -> None:
    """What retention does to a topic: every record below ``before`` goes."""
    admin = KafkaAdminClient(**settings.client_options())
    try:
        admin.delete_records({TopicPartition(topic, 0): before})
    finally:
        admin.close()


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

    def make_trimmed_reader(self, batches: list[list[bytes]]) -> LogReader:
        log = self.make_reader(batches)
        _delete_records(self.settings, self.topic, log.read(log.start_offset(), 30)[-1].offset)
        return log


class TestMirroredTopicContract(ReaderContract):
    """A mirror topic on a second cluster, copied by the Kafka mirror, read in source offsets."""

    indexed_by_time = False

    @pytest.fixture(autouse=True)
    def _brokers(self, kafka_broker: Any, kafka_broker_b: Any) -> None:
        self.source = KafkaSettings(kafka_broker.bootstrap)
        self.dest = KafkaSettings(kafka_broker_b.bootstrap)
        tag = uuid.uuid4().hex[:12]
        self.topic, self.mirror = f"contract-{tag}", f"mirror.contract-{tag}"

    def make_reader(self, batches: list[list[bytes]]) -> LogReader:
        with KafkaLog(self.source, self.topic, writer=True, create=True, origin="sh1") as src:
            src.append_batches(batches)
        copier = TopicCopier(KafkaLog(self.source, self.topic), self.topic, self.dest, self.mirror, "sh1")
        try:
            copier.open()
            want = sum(len(b) for b in batches)
            while copier.stats["copied_records"] < want:
                copier.step()
        finally:
            copier.close()  # commits the copies
            copier.source.close()
        return MirroredTopic(self.dest, self.mirror)

    def make_trimmed_reader(self, batches: list[list[bytes]]) -> LogReader:
        log = self.make_reader(batches)
        raw = TopicReader(self.dest, self.mirror)
        try:
            begin, end = raw.bounds()
            cut = next(r.offset for r in raw.fetch(begin, end, 100) if r.value and source_position(r)[0] >= 30)
        finally:
            raw.close()
        _delete_records(self.dest, self.mirror, cut)
        return log

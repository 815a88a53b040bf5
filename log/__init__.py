"""The append-only log: the interface every backend implements, and the embedded file log.

Producers append batches of opaque record values; consumers read them back by offset.
``FileLog`` keeps the log in segment files on local disk (the embedded default); the Kafka
backend lives in ``dssync.log.kafka`` and passes the same contract tests.
"""

from dssync.log.base import Log, LogRecord
from dssync.log.batch import Batch
from dssync.log.filelog import FileLog, RecoveryReport

__all__ = ["Batch", "FileLog", "Log", "LogRecord", "RecoveryReport"]

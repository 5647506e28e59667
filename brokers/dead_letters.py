"""Malformed input -> a dead-letter topic, with the reason and where it came from.

A dead letter keeps the original message key and value byte for byte; its headers say why it
was refused and where it was read:

========================  ===============================================================
``mmcross.error``         exception class (``BadAlertError``, ``BadNoticeError``, ...)
``mmcross.reason``        the error message (UTF-8, at most 4 kB)
``mmcross.source.topic``  topic the message was read from
``mmcross.source.partition`` / ``mmcross.source.offset``  its partition and offset (decimal)
``mmcross.source.timestamp``  its Kafka timestamp, ms since the Unix epoch (decimal)
========================  ===============================================================

Dead letters go through the service's transactional output, so they are committed together
with the reports and the source offsets, or not at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_REASON_BYTES = 4096


@dataclass(frozen=True)
class SourceRef:
    """Where a message was read: topic, partition, offset and Kafka timestamp (ms)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int = -1

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def of(cls, message) -> SourceRef:
        """The reference of a ``confluent_kafka.Message``."""
        _kind, ts = message.timestamp()
        return cls(message.topic(), message.partition(), message.offset(), int(ts))


def dead_letter_headers(source: SourceRef, error: BaseException) -> list[tuple[str, bytes]]:
    """The headers of a dead letter for ``error`` raised reading ``source``."""
    reason = str(error).encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return [
        ("mmcross.error", type(error).__name__.encode()),
        ("mmcross.reason", reason),
        ("mmcross.source.topic", source.topic.encode()),
        ("mmcross.source.partition", str(source.partition).encode()),
        ("mmcross.source.offset", str(source.offset).encode()),
        ("mmcross.source.timestamp", str(source.timestamp_ms).encode()),
    ]


class DeadLetters:
    """Sends refused messages to ``topic`` with :meth:`send`.

    Args:
        producer: the :class:`mmcross.brokers.kafka_reports.TransactionalOutput` shared with
            the report sink (anything with ``produce(topic, key, value, headers)``), so that
            dead letters are in the transaction of the batch they were read in.
        topic: the dead-letter topic.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.counts: Counter[str] = Counter()

    def send(self, key: bytes | None, value: bytes | None, source: SourceRef,
             error: BaseException) -> None:
        """Add one dead letter to the open transaction."""
        self.counts[type(error).__name__] += 1
        log.warning("dead letter from %s -> %s: %s: %s", source, self.topic,
                    type(error).__name__, error)
        self.producer.produce(self.topic, key, value, dead_letter_headers(source, error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

"""GCN notices from Kafka: a :class:`gcn_kafka.Consumer` over a list of GCN topics.

Every ``mmcross listen`` process must see every event, so the notice consumer never shares a
consumer group with another process: its group id is either a stable one configured per
process (it then resumes from its own commits, see :meth:`NoticeConsumer.commit`) or a fresh
one per start reading from the earliest retained notice (events already in the store are
dropped by the index as duplicates).

Each message is parsed with :func:`mmcross.listeners.parse_notice` with ``topic=msg.topic()`` and
``source="topic/partition/offset"``; the result, an event or the refusal, comes back with the
message's coordinates so that the caller can dead-letter it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gcn_kafka
from confluent_kafka import KafkaError, TopicPartition

from mmcross.listeners.dispatch import parse_notice
from mmcross.model.errors import BadNoticeError, MmcrossError
from mmcross.model.event import Event

log = logging.getLogger(__name__)

@dataclass
class ReceivedNotice:
    """One GCN Kafka message and what parsing it gave: ``event`` or ``error``."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    event: Event | None = None
    error: MmcrossError | None = None

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def parse_message(notice: ReceivedNotice, options: Mapping[str, Any] | None = None
                  ) -> ReceivedNotice:
    """Parse one message's value (the key is not used) into ``notice.event``, or set
    ``notice.error`` to the :class:`~mmcross.model.errors.MmcrossError` naming its
    ``topic/partition/offset``; ``options`` are keyword arguments of
    :func:`mmcross.listeners.parse_notice`. Returns ``notice``."""
    try:
        if not notice.value:
            raise BadNoticeError(f"{notice.source}: empty notice message")
        notice.event = parse_notice(notice.value, topic=notice.topic, source=notice.source,
                                    **dict(options or {}))
    except MmcrossError as exc:
        notice.error = exc
    return notice


class NoticeConsumer:
    """Reads GCN notice topics with :class:`gcn_kafka.Consumer` and parses each message.

    Args:
        config: librdkafka properties (see
        :func:`mmcross.brokers.kafka_config.gcn_consumer_config`).
        topics: GCN topic names, e.g. ``["igwn.gwalert",
            "gcn.classic.voevent.FERMI_GBM_GND_POS"]``.
        credentials: ``client_id``, ``client_secret``, ``domain`` for GCN (None: not used).
        notice_options: keyword arguments of :func:`mmcross.listeners.parse_notice`
            (``mmcross.model.config.notice_options(config)``).
        commits: commit offsets (only with a stable, per-process group id).
        on_error: called with each transport-level error.
    """

    def __init__(self, config: Mapping[str, Any], topics: Sequence[str], *,
                 credentials: Mapping[str, Any] | None = None,
                 notice_options: Mapping[str, Any] | None = None, commits: bool = False,
                 on_error: Callable[[KafkaError], None] | None = None) -> None:
        self.topics = list(topics)
        self.options = dict(notice_options or {})
        self.commits = commits
        self._on_error = on_error
        self._missing: set[str] = set()
        creds = {k: v for k, v in (credentials or {}).items() if v}
        self.consumer = gcn_kafka.Consumer(config=dict(config), **creds)
        self.consumer.subscribe(self.topics)
        log.info("notice consumer subscribed to %d GCN topics (group %s): %s", len(self.topics),
                 config.get("group.id"), ", ".join(self.topics))

    def poll(self, max_messages: int = 50, timeout: float = 0.0) -> list[ReceivedNotice]:
        """Read and parse up to ``max_messages`` notices (waiting at most ``timeout`` s)."""
        out: list[ReceivedNotice] = []
        for msg in self.consumer.consume(max_messages, timeout):
            err = msg.error()
            if err is not None:
                self._transport_error(err, msg.topic())
                continue
            _kind, ts = msg.timestamp()
            out.append(parse_message(ReceivedNotice(msg.topic(), msg.partition(), msg.offset(),
                                                    int(ts), msg.key(), msg.value()),
                                     self.options))
        return out

    def _transport_error(self, err: KafkaError, topic: str | None) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            if topic not in self._missing:
                self._missing.add(topic or "")
                log.warning("GCN topic %s does not exist (yet) on the broker: %s", topic, err)
            return
        if self._on_error is not None:
            self._on_error(err)
        else:
            log.warning("notice consumer: %s", err)

    def commit(self, notices: Sequence[ReceivedNotice]) -> None:
        """Commit past ``notices`` (only if this consumer commits; synchronous)."""
        if not self.commits or not notices:
            return
        nxt: dict[tuple[str, int], int] = {}
        for n in notices:
            nxt[(n.topic, n.partition)] = max(nxt.get((n.topic, n.partition), 0), n.offset + 1)
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()],
                             asynchronous=False)

    def close(self) -> None:
        self.consumer.close()

"""Match reports to Kafka: Avro reports and counterpart VOEvents, acknowledged before commit.

:class:`AckedProducer` wraps one idempotent ``confluent_kafka.Producer`` and remembers every
record until the broker acknowledged it; :meth:`AckedProducer.acknowledge` flushes, re-sends
what failed and says whether everything is through. The service calls it before committing the
alert offsets that caused the records (at-least-once).

:class:`KafkaReportSink` is an engine sink (``write``/``close``): each match becomes one
record on the report topic (value: schemaless Avro ``mmcross.match_report``, the schema of the
JSON Lines; key: ``event_id|alert_id``, so a compacted topic keeps the latest state; a
revocation is its own record with ``retracted = true``) and, when configured, one counterpart
(or retraction) VOEvent on the VOEvent topic with the same key. Once acknowledged, the
deliveries are written to the store (:meth:`mmcross.model.store.Store.mark_delivered`); at start-up,
:meth:`KafkaReportSink.redeliver` sends the stored reports a crash left undelivered, after
checking the topic's recent records so that none is sent twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from mmcross.brokers.reports import match_to_avro
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.model.match import Match

if TYPE_CHECKING:
    from mmcross.model.store import Store

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


def delivery_key(match: Match) -> str:
    """Store key of one delivered record: ``event_id|alert_id|revision|match`` (or ``revoke``).

    Finer than the Kafka key (``event_id|alert_id``): a revision's match and its revocation
    are two records, and a later revision may match the same alert again.
    """
    return f"{match.key}|{match.event_revision}|{'revoke' if match.retracted else 'match'}"


def report_headers(match: Match) -> Headers:
    return [("mmcross.revision", str(match.event_revision).encode()),
            ("mmcross.retracted", b"true" if match.retracted else b"false")]


class AckedProducer:
    """An idempotent producer that keeps each record until the broker acknowledged it.

    Args:
        producer: a ``confluent_kafka.Producer`` (``enable.idempotence`` recommended).
    """

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._pending: dict[int, tuple[str, bytes | None, bytes | None, Headers | None]] = {}
        self._failed: list[int] = []
        self._next = 0
        self.acknowledged = 0

    def __len__(self) -> int:
        """Records not acknowledged yet."""
        return len(self._pending)

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: Headers | None = None) -> None:
        """Queue one record (asynchronous; see :meth:`acknowledge`)."""
        n = self._next
        self._next += 1
        self._pending[n] = (topic, key, value, headers)
        self._send(n)

    def _send(self, n: int) -> None:
        topic, key, value, headers = self._pending[n]

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is None:
                if self._pending.pop(n, None) is not None:
                    self.acknowledged += 1
            else:
                log.warning("record to %s not acknowledged (%s): will re-send", topic, err)
                self._failed.append(n)

        while True:
            try:
                self.producer.produce(topic, key=key, value=value, headers=headers,
                                      on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)

    def acknowledge(self, timeout: float = 30.0) -> bool:
        """Wait (at most ``timeout`` s) until every queued record is acknowledged.

        Records the broker refused or that timed out are re-sent. Returns True when nothing is
        left pending.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.producer.flush(max(0.0, min(5.0, deadline - time.monotonic())))
            failed, self._failed = self._failed, []
            for n in failed:
                if n in self._pending:
                    self._send(n)
            if not self._pending:
                return True
            if time.monotonic() >= deadline:
                log.warning("%d records still unacknowledged after %.0f s", len(self._pending),
                            timeout)
                return False


class KafkaReportSink:
    """Engine sink writing match reports (and VOEvents) through an :class:`AckedProducer`.

    Args:
        producer: shared with the dead letters, so one acknowledgement covers both.
        report_topic: topic of the Avro match reports.
        voevent_topic: topic of counterpart/retraction VOEvents, or ``None`` for none.
        store: when given, acknowledged records are marked delivered to ``name``.
        name: the sink name in the store's delivery table (default ``kafka:<report_topic>``).
    """

    def __init__(self, producer: AckedProducer, report_topic: str,
                 voevent_topic: str | None = None, store: Store | None = None,
                 name: str | None = None) -> None:
        self.producer = producer
        self.report_topic = report_topic
        self.voevent_topic = voevent_topic or None
        self.store = store
        self.name = name or f"kafka:{report_topic}"
        self._unmarked: list[str] = []
        self.sent = 0
        self.delivered = 0  # match/revocation records acknowledged (VOEvents not counted)

    def write(self, matches: Sequence[Match]) -> None:
        """Queue one report (and one VOEvent) per match or revocation."""
        for m in matches:
            key = m.key.encode()
            self.producer.produce(self.report_topic, key, match_to_avro(m), report_headers(m))
            if self.voevent_topic:
                xml = retraction_voevent(m) if m.retracted else counterpart_voevent(m)
                self.producer.produce(self.voevent_topic, key, xml, report_headers(m))
            self._unmarked.append(delivery_key(m))
        self.sent += len(matches)

    def acknowledge(self, timeout: float = 30.0) -> bool:
        """Wait for the broker's acknowledgement of everything written, then record it in the
        store; True when all is through (the caller may commit its input offsets)."""
        if not self.producer.acknowledge(timeout):
            return False
        if self._unmarked and self.store is not None:
            self.store.mark_delivered(self._unmarked, self.name)
        self.delivered += len(self._unmarked)
        self._unmarked = []
        return True

    def close(self) -> None:
        if not self.acknowledge(10.0):
            log.warning("closing with %d reports unacknowledged (they will be re-sent at the "
                        "next start)", len(self.producer))

    # -- recovery ----------------------------------------------------------------------

    def undelivered(self) -> list[Match]:
        """Stored matches and revocations never acknowledged by the broker (store order)."""
        if self.store is None:
            return []
        records: list[Match] = []
        for m in self.store.matches(include_retracted=True):
            if m.retracted:
                records.append(replace(m, retracted=False))
                records.append(m)
            else:
                records.append(m)
        done = self.store.delivered([delivery_key(m) for m in records], self.name)
        return [m for m in records if delivery_key(m) not in done]

    def redeliver(self, reader_config: Mapping[str, Any], *, lookback_s: float = 86400.0,
                  timeout: float = 30.0) -> int:
        """Send the stored records a crash left undelivered; returns how many were sent.

        A record may have reached the topic just before the crash, before its delivery was
        stored: the topic's records of the last ``lookback_s`` seconds are read first
        (``reader_config``: a consumer that never commits) and those found there are only
        marked delivered.
        """
        pending = self.undelivered()
        if not pending:
            return 0
        on_topic = recent_delivery_keys(reader_config, self.report_topic,
                                        since_ms=int((time.time() - lookback_s) * 1000),
                                        timeout=timeout)
        found = [delivery_key(m) for m in pending if delivery_key(m) in on_topic]
        if found and self.store is not None:
            self.store.mark_delivered(found, self.name)
        todo = [m for m in pending if delivery_key(m) not in on_topic]
        log.info("%d stored reports were undelivered at start: %d already on %s, re-sending %d",
                 len(pending), len(found), self.report_topic, len(todo))
        self.write(todo)
        return len(todo)


def recent_delivery_keys(reader_config: Mapping[str, Any], topic: str, *, since_ms: int,
                         timeout: float = 30.0) -> set[str]:
    """Delivery keys (:func:`delivery_key`) of the report records on ``topic`` from
    ``since_ms`` (Kafka timestamp, ms since the Unix epoch) to the end."""
    consumer = Consumer(dict(reader_config))
    keys: set[str] = set()
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return keys
        parts = [TopicPartition(topic, p, since_ms) for p in meta.topics[topic].partitions]
        starts = consumer.offsets_for_times(parts, timeout=timeout)
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout)[1]
                for p in parts}
        todo = {tp.partition: ends[tp.partition] for tp in starts
                if tp.offset not in (OFFSET_END, -1) and tp.offset < ends[tp.partition]}
        if not todo:
            return keys
        consumer.assign([tp for tp in starts if tp.partition in todo])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                keys.add(_delivery_key_of(msg))
                if msg.offset() + 1 >= todo.get(msg.partition(), 0):
                    todo.pop(msg.partition(), None)
        if todo:
            raise KafkaException(f"could not read {topic} to its end within {timeout} s")
    finally:
        consumer.close()
    return keys


def _delivery_key_of(msg) -> str:
    headers = dict(msg.headers() or [])
    revision = headers.get("mmcross.revision", b"").decode()
    kind = "revoke" if headers.get("mmcross.retracted") == b"true" else "match"
    return f"{(msg.key() or b'').decode()}|{revision}|{kind}"



class PartnerMatchSink:
    """Partner stream matches (``mmcross.matchers.partner_streams.StreamMatch``) to a Kafka topic.

    Each match becomes one record through the shared :class:`AckedProducer` (so the service's
    acknowledgement before committing its input offsets covers them too): key
    ``partner|detection_id|alert_id``, value the match's JSON (``to_json()``, UTF-8).

    Args:
        producer: the service's acknowledged producer.
        topic: ``[submit.kafka] stream_match_topic``.
    """

    def __init__(self, producer: AckedProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.sent = 0

    @staticmethod
    def key(match: Any) -> str:
        """``partner|detection_id|alert_id`` of one stream match."""
        return f"{match.partner}|{match.detection_id}|{match.alert_id}"

    def write(self, matches: Sequence[Any]) -> None:
        """Queue one record per match (acknowledged by the producer's ``acknowledge``)."""
        for m in matches:
            self.producer.produce(self.topic, self.key(m).encode(), m.to_json().encode())
        self.sent += len(matches)

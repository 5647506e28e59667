"""The Rubin alert stream from Kafka: wire-format Avro in, :class:`AlertBatch` out.

Messages are Confluent wire-format Avro (magic byte, schema id, schemaless body); the schema
is chosen by its id from a Schema Registry when configured, else from lsst-alert-packet
(:mod:`mmcross.brokers.kafka_schemas`); a poll's messages are decoded together by the compiled
prefix decoder. The consumer joins a consumer group, so N ``mmcross listen`` processes with
the same group id share the alert partitions. Nothing is committed automatically:
:meth:`AlertConsumer.commit` commits the offsets of a polled batch once the caller has dealt
with it (reports acknowledged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from mmcross.brokers.alert_decoding import AlertRow, decode_wire_many, rows_to_batch
from mmcross.brokers.dead_letters import SourceRef
from mmcross.brokers.kafka_schemas import SchemaResolver
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import BadAlertError

log = logging.getLogger(__name__)


@dataclass
class Refused:
    """A message that could not be decoded: its bytes, where it was read, and why."""

    key: bytes | None
    value: bytes | None
    source: SourceRef
    error: BadAlertError


@dataclass
class PolledAlerts:
    """One poll's worth of alerts: the decoded batch (time-ordered), the refused messages,
    and the offsets to commit once both are dealt with (next offset per partition)."""

    batch: AlertBatch
    refused: list[Refused]
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: int = 0


class AlertConsumer:
    """Consumer-group reader of wire-format alerts.

    Args:
        config: librdkafka properties (see
        :func:`mmcross.brokers.kafka_config.alert_consumer_config`).
        topics: alert topics to subscribe to.
        on_error: called with each transport-level error (for back-off and logging).
        keep_packets: keep each alert's packet bytes in the batch.
        schemas: schema look-up (a Schema Registry, see :mod:`mmcross.brokers.kafka_schemas`);
            default: lsst-alert-packet only.
    """

    def __init__(self, config: Mapping[str, Any], topics: Sequence[str], *,
                 on_error: Callable[[KafkaError], None] | None = None,
                 keep_packets: bool = True, schemas: SchemaResolver | None = None) -> None:
        self.topics = list(topics)
        self.schemas = schemas
        self.group_id = config.get("group.id")
        self.keep_packets = keep_packets
        self._on_error = on_error
        self.consumer = Consumer(dict(config))
        self.consumer.subscribe(self.topics, on_assign=self._assigned, on_revoke=self._revoked)
        log.info("alert consumer of %s joined group %s", ", ".join(self.topics), self.group_id)

    @staticmethod
    def _assigned(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            log.info("alert partitions assigned: %s",
                     ", ".join(f"{p.topic}/{p.partition}" for p in partitions))

    @staticmethod
    def _revoked(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            log.info("alert partitions revoked: %s",
                     ", ".join(f"{p.topic}/{p.partition}" for p in partitions))

    def poll(self, max_messages: int = 5000, timeout: float = 1.0) -> PolledAlerts:
        """Read up to ``max_messages`` (waiting at most ``timeout`` s) and decode them.

        Undecodable messages (not wire format, unknown schema id, bad Avro, position off the
        sphere) are returned in ``refused``; transport errors go to ``on_error``.
        """
        rows: list[AlertRow] = []
        refused: list[Refused] = []
        offsets: dict[tuple[str, int], int] = {}
        bulk: list = []  # (message, source) decoded together by the compiled kernel
        n = 0
        for msg in self.consumer.consume(max_messages, timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if self._on_error is not None:
                    self._on_error(err)
                else:
                    log.warning("alert consumer: %s", err)
                continue
            n += 1
            source = SourceRef.of(msg)
            offsets[(source.topic, source.partition)] = source.offset + 1
            value = msg.value()
            try:
                if value is None:
                    raise BadAlertError("empty message (no value)", source=str(source))
                if self.schemas is None or len(value) < 5 or self.schemas.native(
                        int.from_bytes(value[1:5], "big")):
                    bulk.append((msg, source))
                else:
                    rows.append(self.schemas.decode_row(value, str(source),
                                                        keep_packet=self.keep_packets))
            except BadAlertError as exc:
                refused.append(Refused(msg.key(), value, source, exc))
        batch = rows_to_batch(rows, keep_packets=self.keep_packets)
        if bulk:
            decoded, errors = decode_wire_many([m.value() for m, _ in bulk],
                                               [str(s) for _, s in bulk],
                                               keep_packets=self.keep_packets)
            for exc in errors:  # exc.index: the message's position in ``bulk``
                msg, source = bulk[exc.index]
                refused.append(Refused(msg.key(), msg.value(), source, exc))
            batch = decoded if not rows else AlertBatch.concatenate([batch, decoded])
        if len(batch) > 1:
            order = np.argsort(batch.mjd_tai, kind="stable")
            if np.any(np.diff(order) != 1):
                batch = batch.take(order)
        return PolledAlerts(batch, refused, offsets, n)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit ``(topic, partition) -> next offset`` synchronously.

        Raises:
            KafkaException: the commit failed (e.g. the partitions were reassigned; the
                messages will then be read again by their new owner).
        """
        if not offsets:
            return
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                             asynchronous=False)

    def lag(self) -> int:
        """Messages behind the end of the assigned partitions (-1 when unknown)."""
        try:
            assigned = self.consumer.assignment()
            if not assigned:
                return -1
            total = 0
            for tp in self.consumer.position(assigned):
                _lo, hi = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=True)
                if tp.offset >= 0 and hi >= 0:
                    total += max(0, hi - tp.offset)
            return total
        except KafkaException:
            return -1

    def close(self) -> None:
        """Leave the group (its partitions go to the other processes at once)."""
        self.consumer.close()

"""Outputs that cannot join a Kafka transaction get committed reports only, from the topic.

A VTP broadcaster (counterpart VOEvents pushed to subscribers) and a Hopskotch producer (an
other cluster) cannot be part of the service's Kafka transaction. Fed directly by the
engine, they would send what an aborted transaction produced, and send it again when the
input is read again. Instead, in Kafka mode, :class:`CommittedRelay` reads the report topic
with ``isolation.level=read_committed`` in a consumer group of its own, hands each poll's
reports to those sinks, and commits its offsets after they took them:

* nothing from an aborted transaction ever leaves (read_committed skips it);
* a crash between a hand-off and the relay's commit repeats only the reports of that poll,
  with the same IVORN (one per event revision and alert, :mod:`mmcross.brokers.voevent_out`)
  and the same Kafka key: VOEvent brokers drop an IVORN they have seen (Comet keeps an IVORN
  database), Hopskotch readers de-duplicate by key. That is the delivery VOEvent transport
  and a second cluster allow: at least once, idempotent by identity.

The group (``[kafka] relay_group_id``, default ``<alert group>.relay``) is shared by every
instance, so that each report is relayed by one of them. A partition the group never
committed starts at its end as the relay joins (a first start does not replay months of
reports to subscribers); the service waits for that (:meth:`CommittedRelay.wait_assigned`)
before it produces anything, so no report of this run is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from mmcross.app.engine import ReportSink
from mmcross.brokers.reports import match_from_avro
from mmcross.model import crashpoints
from mmcross.model.match_batch import MatchBatch

log = logging.getLogger(__name__)

#: Errors of a group coordinator that is moving or loading (e.g. just after a broker restart).
_COORDINATOR_BUSY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                     KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT,
                     KafkaError._TRANSPORT}


class CommittedRelay:
    """Committed match reports from ``report_topic`` to ``sinks`` (see module docstring).

    Args:
        consumer_props: librdkafka properties (bootstrap servers, security); the group,
            isolation level and commit settings are set here.
        report_topic: the service's report topic (Avro ``mmcross.match_report``).
        group_id: the relay's consumer group.
        sinks: report sinks (VTP broadcaster, Hopskotch producer); closed by :meth:`close`.
        batch: most reports handed over per poll.
        instance_id: static group membership (``group.instance.id``, the service's
            transactional id + ``.relay``): a restarted relay takes its partitions back at
            once instead of waiting for its killed predecessor's session to expire.
    """

    def __init__(self, consumer_props: Mapping[str, Any], report_topic: str, group_id: str,
                 sinks: Sequence[ReportSink], batch: int = 500,
                 instance_id: str | None = None) -> None:
        self.report_topic = report_topic
        self.sinks = list(sinks)
        self.batch = batch
        self.relayed = 0
        self.undecodable = 0
        props = {**dict(consumer_props), "group.id": group_id, "enable.auto.commit": False,
                 "isolation.level": "read_committed", "auto.offset.reset": "latest"}
        if instance_id:
            props["group.instance.id"] = instance_id
        self._consumer = Consumer(props)
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer.subscribe([report_topic], on_assign=self._on_assign)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions the group never committed start at their end now."""
        committed = _committed(consumer, partitions) if partitions else []
        start = []
        for tp in committed:
            if tp.offset == OFFSET_INVALID:
                _low, high = consumer.get_watermark_offsets(tp, timeout=30.0)
                tp = TopicPartition(tp.topic, tp.partition, high)
            start.append(tp)
        consumer.assign(start)
        self._assigned.set()

    def wait_assigned(self, timeout: float) -> bool:
        """Whether the relay got its partitions (and their start offsets) within ``timeout``
        seconds (the running thread polls, which joins the group)."""
        return self._assigned.wait(timeout)

    def step(self, timeout: float = 0.5) -> int:
        """One poll: hand its committed reports to every sink, then commit the offsets;
        returns how many reports were relayed."""
        messages = self._consumer.consume(self.batch, timeout)
        matches = []
        ends: dict[tuple[str, int], int] = {}  # next offset to read, per partition
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("relay of %s: %s", self.report_topic, err)
                continue
            ends[(msg.topic(), msg.partition())] = msg.offset() + 1
            try:
                matches.append(match_from_avro(msg.value()))
            except Exception as exc:  # noqa: BLE001 - a foreign record on our topic
                self.undecodable += 1
                log.error("relay: %s[%d]@%d is not a match report (%s): skipped",
                          msg.topic(), msg.partition(), msg.offset(), exc)
        if matches:
            batch = MatchBatch.from_matches(matches)
            for sink in self.sinks:
                sink.write(batch)
            self.relayed += len(matches)
        if ends:
            crashpoints.hit("relay_commit")
            try:
                self._consumer.commit(offsets=[TopicPartition(t, p, o)
                                               for (t, p), o in ends.items()],
                                      asynchronous=False)
            except KafkaException as exc:  # e.g. a rebalance took the partitions
                log.warning("relay: offsets not committed (%s): the last %d reports may be "
                            "relayed again", exc.args[0], len(matches))
        return len(matches)

    def start(self) -> CommittedRelay:
        """Relay in a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="mmcross-relay", daemon=True)
        self._thread.start()
        log.info("relaying committed reports of %s to %s", self.report_topic,
                 ", ".join(type(s).__name__ for s in self.sinks))
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except KafkaException as exc:
                log.warning("relay: %s", exc.args[0])
                self._stop.wait(1.0)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread, leave the group, close the sinks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the relay consumer: %s", exc)
        for sink in self.sinks:
            sink.close()


def _committed(consumer: Consumer, partitions: list[TopicPartition],
               timeout: float = 60.0) -> list[TopicPartition]:
    """The group's committed offsets, asked again while the coordinator is moving or
    loading (as after a broker restart) for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.committed(partitions, timeout=30.0)
        except KafkaException as exc:
            if exc.args[0].code() not in _COORDINATOR_BUSY or time.monotonic() > deadline:
                raise
            log.info("relay: committed offsets not readable yet (%s): asking again",
                     exc.args[0])
            time.sleep(0.5)

"""Match reports to Kafka inside transactions: every output of a batch, or none of it.

:class:`TransactionalOutput` wraps one transactional ``confluent_kafka.Producer`` (stable
``transactional.id`` per service instance; ``init_transactions`` at start-up fences a zombie of
the same instance and completes or aborts its last transaction). The service opens one
transaction per consumed batch (:meth:`~TransactionalOutput.begin`), produces every record the
batch caused, adds the consumed offsets (:meth:`~TransactionalOutput.send_offsets`, KIP-447
group metadata) and commits (:meth:`~TransactionalOutput.commit`); readers with
``isolation.level=read_committed`` see all of it or nothing.

Each transaction also carries one *commit marker* on the marker topic (key: the instance's
transactional id, value: the transaction id). The service saves its store writes under that
transaction id before committing; after a crash, :func:`transaction_committed` looks for the
marker to decide whether those writes belong to the committed state (apply them) or not (drop
them). This is the only read of an output topic, bounded to the records written since the
pending transaction began.

:class:`KafkaReportSink` is an engine sink: each match becomes one record on the report topic
(value: schemaless Avro ``mmcross.match_report``, the schema of the JSON Lines; key:
``event_id|alert_id``, so a compacted topic keeps the latest state; a revocation is its own
record with ``retracted = true``) and, when configured, one counterpart (or retraction) VOEvent
on the VOEvent topic with the same key. :class:`PartnerMatchSink` does the same for partner
stream matches.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from mmcross.brokers.reports import match_records, record_to_avro
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.model import crashpoints
from mmcross.model.match import Match

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


def record_headers(record: dict[str, Any]) -> Headers:
    """Kafka headers of a report record (:func:`~mmcross.brokers.reports.match_records`)."""
    return [("mmcross.revision", str(record["event_revision"]).encode()),
            ("mmcross.retracted", b"true" if record["retracted"] else b"false")]


class TransactionalOutput:
    """One transactional producer: records and consumed offsets committed together.

    Args:
        producer: a ``confluent_kafka.Producer`` with ``transactional.id`` set.
        owner: its transactional id (key of the commit markers).
        marker_topic: topic of the commit markers.
    """

    def __init__(self, producer: Producer, owner: str, marker_topic: str) -> None:
        self.producer = producer
        self.owner = owner
        self.marker_topic = marker_topic
        self.txn: str | None = None
        self.produced = 0  # records of the open transaction
        self.committed_records = 0  # records of committed transactions (markers excluded)

    def init(self, timeout: float = 60.0) -> None:
        """Register the transactional id: fences an older producer with the same id and
        completes or aborts its open transaction."""
        self.producer.init_transactions(timeout)

    @property
    def open(self) -> bool:
        return self.txn is not None

    def begin(self) -> str:
        """Start a transaction; returns its id (``<unix ns>-<random>``)."""
        self.producer.begin_transaction()
        self.txn = f"{time.time_ns()}-{uuid.uuid4().hex[:12]}"
        self.produced = 0
        return self.txn

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: Headers | None = None) -> None:
        """Add one record to the open transaction (beginning one when none is open)."""
        if self.txn is None:
            self.begin()
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, headers=headers)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)
        self.produced += 1
        crashpoints.hit("after_produce")

    def send_offsets(self, offsets: Mapping[tuple[str, int], int], group_metadata: Any,
                     timeout: float = 30.0) -> None:
        """Add consumed offsets (``(topic, partition) -> next offset``) of the consumer group
        described by ``group_metadata`` (``Consumer.consumer_group_metadata()``)."""
        if offsets:
            parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            _bounded(lambda: self.producer.send_offsets_to_transaction(
                parts, group_metadata, timeout), timeout, "send_offsets_to_transaction")

    def commit(self, timeout: float = 60.0) -> None:
        """Write the commit marker and commit the open transaction.

        A retriable failure is retried until ``timeout``; others are raised (the caller
        aborts when ``KafkaError.txn_requires_abort()``).
        """
        assert self.txn is not None
        self.producer.produce(self.marker_topic, key=self.owner.encode(),
                              value=self.txn.encode())
        deadline = time.monotonic() + timeout
        while True:
            try:
                left = max(1.0, deadline - time.monotonic())
                _bounded(lambda left=left: self.producer.commit_transaction(left), left,
                         "commit_transaction")
                break
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or time.monotonic() >= deadline:
                    raise
                log.warning("committing transaction %s: %s; retrying", self.txn, err)
        self.committed_records += self.produced
        self.txn = None

    def abort(self, timeout: float = 60.0) -> None:
        """Abort the open transaction (nothing of it becomes visible)."""
        if self.txn is None:
            return
        self.txn = None
        self.producer.abort_transaction(timeout)


def _bounded(call: Callable[[], None], timeout: float, what: str) -> None:
    """Run a blocking producer call, giving up after ``timeout`` + 30 s.

    librdkafka 2.16's ``send_offsets_to_transaction`` was seen to block for good, ignoring
    its timeout, in a producer that lived through a broker killed with SIGKILL (fresh clients
    were fine). The call then runs on in a daemon thread; a fatal error is raised so that the
    caller replaces the producer.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True, name=f"kafka-{what}")
    worker.start()
    worker.join(timeout + 30.0)
    if not outcome:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                        f"{what} did not return in {timeout + 30.0:.0f} s",
                                        fatal=True))
    if outcome[0] is not None:
        raise outcome[0]


def ensure_marker_topic(admin_config: Mapping[str, Any], topic: str,
                        timeout: float = 30.0) -> None:
    """Create the commit-marker topic when missing: one partition, compacted (the latest
    marker per instance is all that matters), hourly segments so compaction keeps it small."""
    ensure_topic(admin_config, topic, timeout, partitions=1,
                 config={"cleanup.policy": "compact", "segment.ms": "3600000"})


def ensure_topic(admin_config: Mapping[str, Any], topic: str, timeout: float = 30.0, *,
                 partitions: int = -1, config: Mapping[str, str] | None = None) -> None:
    """Create ``topic`` when missing (``partitions`` -1: the broker's default number; the
    broker's default replication), e.g. the report topic before a consumer subscribes to
    it; a topic that exists, or appears meanwhile, is left as it is."""
    admin = AdminClient(dict(admin_config))
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    new = NewTopic(topic, num_partitions=partitions, replication_factor=-1,
                   config=dict(config or {}))
    try:
        admin.create_topics([new])[topic].result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def transaction_committed(reader_config: Mapping[str, Any], topic: str, owner: str, txn: str,
                          timeout: float = 30.0) -> bool:
    """Whether ``owner``'s transaction ``txn`` committed: its marker is on ``topic``.

    Reads (``read_committed``) from the marker records written since the transaction began
    (its id starts with its begin time, ns since the Unix epoch; one minute of margin) to the
    end. Call after ``init_transactions`` so that the transaction is no longer open.
    """
    since_ms = int(txn.split("-", 1)[0]) // 1_000_000 - 60_000
    consumer = Consumer({**dict(reader_config), "isolation.level": "read_committed"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return False
        parts = [TopicPartition(topic, p, since_ms) for p in meta.topics[topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout)[1]
                for tp in parts}
        todo = [tp for tp in consumer.offsets_for_times(parts, timeout=timeout)
                if tp.offset not in (OFFSET_END, -1) and tp.offset < ends[tp.partition]]
        if not todo:
            return False
        ends = {tp.partition: ends[tp.partition] for tp in todo}
        consumer.assign(todo)
        want_key, want = owner.encode(), txn.encode()
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None and msg.key() == want_key and msg.value() == want:
                    return True
            for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:
                    ends.pop(tp.partition)
        if ends:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            f"could not read {topic} to its end in {timeout} s"))
        return False
    finally:
        consumer.close()


class KafkaReportSink:
    """Engine sink: one report record (and one VOEvent) per match or revocation, added to
    the open transaction of ``output``.

    Args:
        output: the service's transactional output (shared with dead letters and partners).
        report_topic: topic of the Avro match reports.
        voevent_topic: topic of counterpart/retraction VOEvents, or ``None`` for none.
    """

    def __init__(self, output: TransactionalOutput, report_topic: str,
                 voevent_topic: str | None = None) -> None:
        self.output = output
        self.report_topic = report_topic
        self.voevent_topic = voevent_topic or None
        self.sent = 0

    def write(self, matches: Sequence[Match]) -> None:
        """Add one report (and one VOEvent) per match or revocation to the transaction."""
        for r in match_records(matches):
            key = f"{r['event_id']}|{r['alert_id']}".encode()
            headers = record_headers(r)
            self.output.produce(self.report_topic, key, record_to_avro(r), headers)
            if self.voevent_topic:
                m = Match(**r)
                xml = retraction_voevent(m) if m.retracted else counterpart_voevent(m)
                self.output.produce(self.voevent_topic, key, xml, headers)
        self.sent += len(matches)

    def close(self) -> None:
        """Nothing to flush: the service commits or aborts the transaction."""


class PartnerMatchSink:
    """Partner stream matches (``mmcross.matchers.partner_streams.StreamMatch``) to a topic.

    Each match becomes one record in the open transaction: key
    ``partner|detection_id|alert_id``, value the match's JSON (``to_json()``, UTF-8).

    Args:
        output: the service's transactional output.
        topic: ``[submit.kafka] stream_match_topic``.
    """

    def __init__(self, output: TransactionalOutput, topic: str) -> None:
        self.output = output
        self.topic = topic
        self.sent = 0

    @staticmethod
    def key(match: Any) -> str:
        """``partner|detection_id|alert_id`` of one stream match."""
        return f"{match.partner}|{match.detection_id}|{match.alert_id}"

    def write(self, matches: Sequence[Any]) -> None:
        """Add one record per match to the open transaction."""
        for m in matches:
            self.output.produce(self.topic, self.key(m).encode(), m.to_json().encode())
        self.sent += len(matches)

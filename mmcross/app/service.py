"""``mmcross listen``: GCN notices and the alert stream from Kafka, match reports to Kafka,
exactly once through Kafka transactions.

One loop, one thread. Each step polls notices, the partner inputs and one batch of alerts,
and everything the step caused -- match reports, revocations, counterpart and retraction
VOEvents, dead letters, partner stream matches -- goes into **one transaction** of a
transactional producer (:class:`~mmcross.brokers.kafka_reports.TransactionalOutput`, stable
``transactional.id`` per instance, see :func:`~mmcross.brokers.kafka_config.transactional_id`)
together with the consumed alert offsets and the partner topic's offsets
(``send_offsets_to_transaction`` with each consumer's group metadata, KIP-447). The
transaction commits as a whole or not at all; consumers of the outputs read with
``isolation.level=read_committed``.

**The store follows the commits.** The engine writes to a
:class:`~mmcross.app.staged_store.StagedStore`: its writes are saved as one pending record
(``Store.save_pending``, keyed by the instance and the transaction id) before
``commit_transaction``, applied to the store after it, then dropped. At start-up, after
``init_transactions`` (which fences a zombie and resolves its open transaction), a pending
record is applied if its transaction's commit marker is on the marker topic, else dropped
(:func:`~mmcross.brokers.kafka_reports.transaction_committed`). So the store always holds
exactly the committed state; it never decides what is delivered.

**Abort = crash.** A failure inside a transaction (produce, offsets, a commit that the broker
says needs an abort) aborts it, then does what a restart does: the engine is rebuilt from the
store and every consumer is rewound to its committed offsets (the notice consumer without
commits to its first offset), so the aborted input is read and processed again. When the
transaction cannot be aborted (a fatal producer error, e.g. after a broker restart outlived the
transaction timeout, or a commit whose outcome is unknown) a new producer with the same
transactional id is started and the pending store writes settled by the commit marker, as at
start-up. Being fenced by another live process with the same transactional id stops the
service.

**Notices** (GCN Kafka topics) are applied in the step that polled them, so their effects
(retro-matches, revocations, dead letters) are in the *same transaction as that step's alert
batch*: a notice and the alerts matched against it commit together, and the engine state after
an abort is the committed one. When the notices come from our own cluster (no ``[kafka.gcn]
client_id``), the notice consumer has a group of its own per instance (``[kafka.gcn] group_id``
or ``<transactional id>.notices``) whose offsets go into that same transaction too, so a
restart resumes after the last committed notice and never applies one twice (re-applying
would matter: the store does not restore a retracted or expired event, so its notices would
come back as a new event). From GCN's cluster the offsets cannot join our transaction; they
are committed after it when ``[kafka.gcn] group_id`` is set (a notice read again after a crash
in between is dropped as a duplicate while its event is live), else every start reads the
retained notices again.

Outputs that cannot join the transaction -- counterparts pushed over VTP, reports published to
Hopskotch -- are fed from the report topic by :class:`~mmcross.app.relay.CommittedRelay`
(``read_committed``, its own consumer group): they never carry an aborted transaction's
reports, and a crash repeats at most one relay poll, with the same IVORNs and keys. Partner
detections kept in memory for later alerts are re-read from the partner topic after an abort,
and kept again.

Start-up restores the live events, their matches and the alert history from the store.
Transport errors are logged and waited out with an exponential back-off (librdkafka
reconnects by itself); SIGTERM/SIGINT finish the current step and leave cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from mmcross.app.engine import Engine
from mmcross.app.metrics import Metrics, MetricsServer, RateMeter
from mmcross.app.relay import CommittedRelay
from mmcross.app.service_state import (
    EngineLoop,
    ServiceStats,
    declare_metrics,
    newest_alert_mjd,
    prune_history,
)
from mmcross.app.staged_store import StagedStore, apply_writes, decode_writes, encode_writes
from mmcross.app.transports import Transports
from mmcross.brokers.coincidence_reports import KafkaCoincidenceSink
from mmcross.brokers.dead_letters import DeadLetters, SourceRef
from mmcross.brokers.kafka_alerts import AlertConsumer
from mmcross.brokers.kafka_config import (
    alert_consumer_config,
    base_properties,
    gcn_consumer_config,
    producer_config,
    reader_config,
)
from mmcross.brokers.kafka_reports import (
    KafkaReportSink,
    PartnerMatchSink,
    TransactionalOutput,
    ensure_marker_topic,
    ensure_topic,
    transaction_committed,
)
from mmcross.brokers.kafka_schemas import SchemaResolver
from mmcross.listeners.gcn_kafka import NoticeConsumer, ReceivedNotice
from mmcross.model import crashpoints
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError, NotAnEventError

if TYPE_CHECKING:
    from mmcross.catalogs import Store


log = logging.getLogger(__name__)

_TRANSPORT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
              KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT}

_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED}

Offsets = dict[tuple[str, int], int]


@dataclass
class ServiceSettings:
    """Topics and loop parameters (seconds) of the service, from ``[kafka]``/``[service]``."""

    alert_topics: list[str]
    report_topic: str
    voevent_topic: str | None
    dead_letter_topic: str
    notice_topics: list[str]
    marker_topic: str = "mmcross.transactions"
    coincidence_topic: str | None = None
    batch_size: int = 5000
    poll_timeout: float = 0.5
    commit_timeout: float = 60.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    log_every: float = 30.0
    prune_interval: float = 3600.0
    metrics_port: int = -1
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_config(cls, config: Config) -> ServiceSettings:
        k = config.get("kafka", {}) or {}
        s = config.get("service", {}) or {}
        alerts = k.get("alert_topics") or []
        if isinstance(alerts, str):
            alerts = [alerts]
        if not alerts:
            raise ConfigError("no alert topic: set [kafka] alert_topics or --alert-topic")
        if not k.get("report_topic"):
            raise ConfigError("no report topic: set [kafka] report_topic or --report-topic")
        return cls(
            alert_topics=list(alerts), report_topic=k["report_topic"],
            voevent_topic=k.get("voevent_topic") or None,
            dead_letter_topic=k.get("dead_letter_topic") or "mmcross.dead-letters",
            notice_topics=list((k.get("gcn") or {}).get("topics") or []),
            marker_topic=k.get("transaction_marker_topic") or "mmcross.transactions",
            coincidence_topic=k.get("coincidence_topic") or None,
            **{name: type(getattr(cls, name))(s[name]) for name in (
                "batch_size", "poll_timeout", "commit_timeout", "backoff_min", "backoff_max",
                "log_every", "prune_interval") if name in s},
            metrics_port=int((config.get("metrics", {}) or {}).get("port", -1)),
            metrics_host=str((config.get("metrics", {}) or {}).get("host", "127.0.0.1")))


class ListenService(EngineLoop):
    """The live service. Call :meth:`run` (blocks until :meth:`stop`), or :meth:`start`,
    :meth:`step` and :meth:`close` to drive it by hand.

    Args:
        config: merged configuration (``[kafka]``, ``[kafka.gcn]``, ``[service]``).
        store: the store (events, matches, pending writes, alert history).
        env: environment for ``KAFKA_*`` / ``GCN_KAFKA_*`` (default ``os.environ``).
        kafka_overrides: librdkafka properties that win over config and environment
            (the command line's ``--bootstrap-servers``).
    """

    def __init__(self, config: Config, store: Store, *, env: Mapping[str, str] | None = None,
                 kafka_overrides: Mapping[str, Any] | None = None,
                 metrics_port: int | None = None) -> None:
        self.config = config
        self.store = store
        self.settings = ServiceSettings.from_config(config)
        if metrics_port is not None:
            self.settings.metrics_port = metrics_port
        self.metrics = declare_metrics(Metrics())
        self.metrics_server: MetricsServer | None = None
        self._rate = RateMeter(10.0)
        self._last_gauges = 0.0
        self._newest: float | None = None
        self._last_prune = time.monotonic()
        self._env = env
        self._overrides = dict(kafka_overrides or {})
        self._stop = threading.Event()
        self._backoff = 0.0
        self._last_error_log = 0.0
        self._commit_sent = False
        self._notices_in_txn = False
        self.stats = ServiceStats()
        self.engine: Engine | None = None
        self.staged: StagedStore | None = None
        self.alerts: AlertConsumer | None = None
        self.notices: NoticeConsumer | None = None
        self.output: TransactionalOutput | None = None
        self.sink: KafkaReportSink | None = None
        self.dead_letters: DeadLetters | None = None
        self.partner_out: PartnerMatchSink | None = None
        self.transports = Transports(config)
        self.relay: CommittedRelay | None = None

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Register the transactional id, settle a pending transaction, restore the engine
        from the store, join the consumer groups."""
        kw = {"env": self._env, "overrides": self._overrides}
        s = self.settings
        self.metrics.set("start_unixtime", time.time())
        if s.metrics_port >= 0 and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, s.metrics_port, s.metrics_host)
        props = producer_config(self.config, **kw)
        ensure_marker_topic(base_properties(self.config, **kw), s.marker_topic)
        self.output = TransactionalOutput(Producer({**props, "error_cb": self._on_error}),
                                          str(props["transactional.id"]), s.marker_topic)
        if not self._init_transactions():
            return
        self._settle_pending(reader_config(self.config, **kw))
        self.sink = KafkaReportSink(self.output, s.report_topic, s.voevent_topic)
        self.dead_letters = DeadLetters(self.output, s.dead_letter_topic)
        if self.transports.streams is not None:
            self.partner_out = PartnerMatchSink(self.output,
                                                self.transports.settings.stream_match_topic)
        self._build_engine([self.sink], [KafkaCoincidenceSink(self.output, s.coincidence_topic)]
                           if s.coincidence_topic else [])
        if s.notice_topics:
            props, creds = gcn_consumer_config(self.config, **kw)
            stable = bool((self.config.get("kafka.gcn", {}) or {}).get("group_id"))
            # Notices on our own cluster: a group of this instance, offsets in the transaction
            self._notices_in_txn = not creds["client_id"]
            if self._notices_in_txn and not stable:
                props["group.id"] = f"{self.output.owner}.notices"
                # static membership: a restart takes the partitions back at once instead of
                # waiting for its killed predecessor's session to time out
                props.setdefault("group.instance.id", props["group.id"])
            self.notices = NoticeConsumer(props, s.notice_topics, credentials=creds,
                                          notice_options=notice_options(self.config),
                                          commits=stable or self._notices_in_txn,
                                          on_error=self._on_error)
        registry = str(self.config.get("kafka.schema_registry_url", "") or "")
        self.alerts = AlertConsumer(alert_consumer_config(self.config, **kw), s.alert_topics,
                                    on_error=self._on_error,
                                    schemas=SchemaResolver(registry or None))
        relayed: list = []
        self.transports.start(self.engine, kafka_props=base_properties(self.config, **kw),
                              output_sinks=relayed)
        if relayed:
            group = str(self.config.get("kafka.relay_group_id", "") or "") or \
                f"{alert_consumer_config(self.config, **kw)['group.id']}.relay"
            ensure_topic(base_properties(self.config, **kw), s.report_topic)
            self.relay = CommittedRelay(base_properties(self.config, **kw), s.report_topic,
                                        group, relayed,
                                        instance_id=f"{self.output.owner}.relay").start()
            if not self.relay.wait_assigned(self.settings.commit_timeout):
                raise ConfigError(f"the relay of {s.report_topic} got no partition in "
                                  f"{self.settings.commit_timeout:g} s (group {group})")
        log.info("listening: alerts %s -> reports %s (VOEvents %s, dead letters %s) in "
                 "transactions of %s; %d live events", ", ".join(s.alert_topics),
                 s.report_topic, s.voevent_topic, s.dead_letter_topic, self.output.owner,
                 len(self.engine.index))

    def _settle_pending(self, reader: Mapping[str, Any]) -> None:
        """Apply or drop the store writes of the transaction a crash left pending."""
        assert self.output is not None
        pending = self.store.pending(self.output.owner)
        if pending is None:
            return
        txn, payload = pending
        if transaction_committed(reader, self.settings.marker_topic, self.output.owner, txn,
                                 timeout=self.settings.commit_timeout):
            apply_writes(self.store, decode_writes(payload))
            log.info("transaction %s had committed before the last stop: its store writes "
                     "are applied now", txn)
        else:
            log.info("transaction %s had not committed before the last stop: its store "
                     "writes are dropped (its input is read again)", txn)
        self.store.drop_pending(self.output.owner)

    def _build_engine(self, sinks: list, coincidence_sinks: list) -> None:
        """A fresh engine on the committed state of the store (start-up and after an abort)."""
        self.staged = StagedStore(self.store)
        self.engine = Engine(self.config, store=self.staged, sinks=sinks,
                             coincidence_sinks=coincidence_sinks)
        self._newest = newest_alert_mjd(self.store)
        prune_history(self.store, self.config, self._newest)
        self._last_prune = time.monotonic()
        self.engine.restore()

    def stop(self) -> None:
        """Ask :meth:`run` to finish the current step and return (signal-handler safe)."""
        self._stop.set()
        self.transports.inbox.wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> ServiceStats:
        """Start, then loop until :meth:`stop`; close on the way out."""
        try:
            self.start()
            last_log = time.monotonic()
            while not self._stop.is_set():
                self.step()
                now = time.monotonic()
                if now - last_log >= self.settings.log_every:
                    last_log = now
                    self._log_progress()
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """Stop the VTP inputs (committing what they queued), leave the consumer groups,
        close the producer and the store."""
        self.transports.stop_inputs()
        if self.engine is not None and self.output is not None:
            # events already acknowledged upstream: commit their effects
            n = self.transports.poll(self._apply_event, self._apply_detections)
            if n:
                try:
                    self._commit({}, {})
                except KafkaException as exc:
                    log.warning("closing: the last transaction failed (%s)", exc.args[0])
        self.transports.inbox.close()
        for consumer in (self.notices, self.alerts):
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("closing a consumer: %s", exc)
        self.notices = self.alerts = None
        if self.engine is not None:
            self.engine.close()  # closes the sinks
            self.engine = None
        if self.relay is not None:
            self.relay.close()  # closes the VTP broadcaster and the Hopskotch sink
            self.relay = None
        if self.output is not None:
            try:
                self.output.abort(10.0)
            except KafkaException as exc:
                log.warning("aborting the open transaction: %s", exc)
            with contextlib.suppress(KafkaException):
                self.output.producer.flush(10.0)
            self.output = None
        self.store.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        log.info("stopped: %s", self._summary())

    # -- one step ----------------------------------------------------------------------

    def step(self) -> int:
        """Poll notices, the partner inputs and one batch of alerts; commit everything they
        caused and their offsets in one transaction (or abort and rewind).

        Returns:
            the number of input messages handled (0 after an abort).
        """
        assert self.engine is not None and self.alerts is not None and self.sink is not None
        reports_before = self.stats.reports
        try:
            notices = self.notices.poll(50, 0.0) if self.notices is not None else []
            for notice in notices:
                self._apply_notice(notice)
            pushed = self.transports.poll(self._apply_event, self._apply_detections)
            polled = self.alerts.poll(self.settings.batch_size, self.settings.poll_timeout)
            for bad in polled.refused:
                self.dead_letters.send(bad.key, bad.value, bad.source, bad.error)
                self.metrics.inc("dead_letters_total", error=type(bad.error).__name__)
            if len(polled.batch):
                self._count_reports(self.engine.on_alerts(polled.batch))
                self._report_partner_matches(self.transports.match_alerts(polled.batch))
                self.metrics.inc("alerts_total", len(polled.batch))
                newest = float(polled.batch.mjd_tai.max())
                self._newest = newest if self._newest is None else max(self._newest, newest)
                self.metrics.set("last_alert_mjd_tai", self._newest)
                self.metrics.set("last_alert_unixtime", time.time())
            if not notices and not polled.messages and not pushed:
                self._update_gauges()
                if self._backoff > 0:  # transport errors seen: wait instead of spinning
                    self._stop.wait(self._backoff)
                return 0
            self._commit(polled.offsets, self._partner_positions() if pushed else {},
                         notice_offsets(notices) if self._notices_in_txn else {})
        except KafkaException as exc:
            self._abort(exc)
            return 0
        self._backoff = 0.0
        self.stats.alerts += len(polled.batch)
        self._rate.add(len(polled.batch), time.monotonic())
        self.metrics.inc("reports_delivered_total", self.stats.reports - reports_before)
        self._maybe_prune()
        self._update_gauges()
        if self.notices is not None and not self._notices_in_txn:
            try:
                self.notices.commit(notices)
            except KafkaException as exc:
                log.warning("notice offsets not committed (%s): they will be read again and "
                            "dropped as duplicates", exc)
        return len(notices) + polled.messages + pushed

    def _partner_positions(self) -> Offsets:
        """Next offsets of the partner submission consumer's assigned partitions."""
        partner = self.transports.partner_kafka
        if partner is None:
            return {}
        assigned = partner.consumer.assignment()
        return {(tp.topic, tp.partition): tp.offset
                for tp in partner.consumer.position(assigned) if tp.offset >= 0}

    def _commit(self, alert_offsets: Offsets, partner_offsets: Offsets,
                notice_offsets: Offsets | None = None) -> None:
        """Add the offsets and the pending store writes, commit, then write the store.

        Raises:
            KafkaException: the transaction failed; ``self._commit_sent`` says whether
                ``commit_transaction`` was called (its outcome then unknown).
        """
        assert self.output is not None and self.staged is not None
        out = self.output
        writes = self.staged.take()
        if not out.open:
            out.begin()
        if alert_offsets and self.alerts is not None:
            out.send_offsets(alert_offsets, self.alerts.consumer.consumer_group_metadata())
        if partner_offsets:
            out.send_offsets(partner_offsets,
                             self.transports.partner_kafka.consumer.consumer_group_metadata())
        if notice_offsets and self.notices is not None:
            out.send_offsets(notice_offsets, self.notices.consumer.consumer_group_metadata())
        if writes:
            self.store.save_pending(out.owner, out.txn, encode_writes(writes))
        crashpoints.hit("before_commit")
        self._commit_sent = True
        try:
            out.commit(self.settings.commit_timeout)
        except KafkaException as exc:
            self._commit_sent = not exc.args[0].txn_requires_abort()
            raise
        self._commit_sent = False
        crashpoints.hit("after_commit")
        self.stats.commits += 1
        self.metrics.inc("commits_total")
        if writes:
            apply_writes(self.store, writes)
            self.store.drop_pending(out.owner)

    def _abort(self, exc: KafkaException) -> None:
        """After a failed transaction: abort it (or, when that is impossible, start a new
        producer and settle the transaction as a restart does), rebuild the engine from the
        store and rewind the consumers."""
        if self.output is None:
            return
        cause = exc.args[0]
        if cause.code() in _FENCED:
            log.error("fenced by another process with this transactional id (%s): stopping; "
                      "give each process of the group its own --instance", cause)
            self.stop()
            return
        log.warning("transaction failed (%s): aborting; the engine is rebuilt from the store "
                    "and the input read again", cause)
        if cause.fatal() or self._commit_sent or not self._abort_open():
            if not self._new_producer():
                return
        else:
            self.store.drop_pending(self.output.owner)
        self._commit_sent = False
        self.stats.aborts += 1
        self.metrics.inc("transaction_aborts_total")
        assert self.engine is not None
        self._build_engine(self.engine.sinks, self.engine.coincidence_sinks)
        consumers = [c.consumer for c in (self.alerts, self.notices) if c is not None]
        if self.transports.partner_kafka is not None:
            consumers.append(self.transports.partner_kafka.consumer)
        for consumer in consumers:
            rewind(consumer)

    def _abort_open(self) -> bool:
        """Abort the open transaction, retrying transport errors; False if it cannot be."""
        assert self.output is not None
        deadline = time.monotonic() + self.settings.commit_timeout
        while True:
            try:
                self.output.abort(self.settings.commit_timeout)
                return True
            except KafkaException as again:
                err = again.args[0]
                if err.fatal() or not err.retriable() or time.monotonic() > deadline:
                    log.warning("abort failed (%s)", err)
                    return False
                if self._wait_backoff(f"abort not acknowledged: {err}"):
                    return False

    def _new_producer(self) -> bool:
        """Replace the producer by a new one with the same transactional id (which aborts or
        completes the old one's transaction) and settle its pending store writes, as at
        start-up. False when stopping."""
        assert self.output is not None
        kw = {"env": self._env, "overrides": self._overrides}
        log.warning("starting a new transactional producer %s", self.output.owner)
        with contextlib.suppress(KafkaException):
            self.output.producer.flush(0)
        self.output.producer = Producer({**producer_config(self.config, **kw),
                                         "error_cb": self._on_error})
        self.output.txn = None
        if not self._init_transactions():
            return False
        self._settle_pending(reader_config(self.config, **kw))
        return True

    def _init_transactions(self) -> bool:
        """``init_transactions``, retried through transport errors; False when stopping."""
        assert self.output is not None
        while True:
            try:
                self.output.init(self.settings.commit_timeout)
                return True
            except KafkaException as exc:
                if exc.args[0].fatal() or not exc.args[0].retriable():
                    raise
                if self._wait_backoff(f"init_transactions: {exc.args[0]}"):
                    return False

    def _apply_notice(self, notice: ReceivedNotice) -> None:
        assert self.engine is not None and self.dead_letters is not None
        if notice.error is not None:
            self.stats.notices_refused += 1
            if isinstance(notice.error, NotAnEventError):
                self.metrics.inc("notices_total", outcome="not_an_event")
                log.info("notice %s is not an event: %s", notice.source, notice.error)
                return
            self.metrics.inc("notices_total", outcome="refused")
            self.metrics.inc("dead_letters_total", error=type(notice.error).__name__)
            self.dead_letters.send(notice.key, notice.value,
                                   SourceRef(notice.topic, notice.partition, notice.offset,
                                             notice.timestamp_ms), notice.error)
            return
        assert notice.event is not None
        self._apply_event(notice.event)

    # -- errors and back-off -----------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka error callback and consumer errors: log, back off on transport ones."""
        self.stats.transport_errors += 1
        self.metrics.inc("transport_errors_total")
        if err.fatal():
            log.error("fatal Kafka error: %s; stopping", err)
            self.stop()
            return
        now = time.monotonic()
        if err.code() in _TRANSPORT:
            s = self.settings
            self._backoff = min(s.backoff_max, max(s.backoff_min, self._backoff * 2))
            if now - self._last_error_log > 10.0:
                self._last_error_log = now
                log.warning("Kafka broker unreachable (%s): retrying, back-off %.1f s", err,
                            self._backoff)
        else:
            log.warning("Kafka error: %s", err)

    def _wait_backoff(self, why: str) -> bool:
        """Sleep the current back-off (doubling it); True if a stop was requested."""
        s = self.settings
        self._backoff = min(s.backoff_max, max(s.backoff_min, self._backoff * 2))
        log.warning("%s: retrying in %.1f s", why, self._backoff)
        return self._stop.wait(self._backoff)

    # -- metrics -----------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        every = self.settings.prune_interval
        if every > 0 and time.monotonic() - self._last_prune >= every:
            self._last_prune = time.monotonic()
            prune_history(self.store, self.config, self._newest)

    def _update_gauges(self, every: float = 1.0) -> None:
        """Refresh the gauges (lag from cached watermarks at most every ``every`` s)."""
        now = time.monotonic()
        self.metrics.set("alerts_per_second", self._rate.rate(now))
        if self.engine is not None:
            self.metrics.set("live_events", len(self.engine.index))
        if now - self._last_gauges >= every and self.alerts is not None:
            self._last_gauges = now
            self.metrics.set("consumer_lag", self.alerts.lag())

    # -- progress ----------------------------------------------------------------------

    def _summary(self) -> str:
        st = self.stats
        dl = self.dead_letters.total if self.dead_letters is not None else 0
        return (f"{st.notices} notices ({st.notices_refused} refused), {st.alerts} alerts, "
                f"{st.reports} reports, {dl} dead letters, {st.commits} commits, "
                f"{st.aborts} aborts")

    def _log_progress(self) -> None:
        elapsed = max(1e-9, time.monotonic() - self.stats.started)
        lag = self.alerts.lag() if self.alerts is not None else -1
        live = len(self.engine.index) if self.engine is not None else 0
        log.info("%s; %.0f alerts/s, lag %d, %d live events", self._summary(),
                 self.stats.alerts / elapsed, lag, live)


def notice_offsets(notices: list[ReceivedNotice]) -> Offsets:
    """``(topic, partition) -> next offset`` past ``notices``."""
    nxt: Offsets = {}
    for n in notices:
        key = (n.topic, n.partition)
        nxt[key] = max(nxt.get(key, 0), n.offset + 1)
    return nxt


def rewind(consumer: Consumer, timeout: float = 30.0) -> None:
    """Seek every assigned partition back to its committed offset (the first one when the
    group never committed), so that uncommitted input is read again."""
    assigned = consumer.assignment()
    if not assigned:
        return
    for tp in consumer.committed(assigned, timeout=timeout):
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

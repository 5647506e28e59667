"""``mmcross listen``: GCN notices and the alert stream from Kafka, match reports to Kafka.

One loop, one thread: poll notices (parse, apply), poll a batch of alerts (decode, match),
send reports and dead letters through one idempotent producer, wait for the broker's
acknowledgement, and only then commit the input offsets. A crash at any point therefore
loses nothing (uncommitted input is read again) and sends nothing twice: matches already in the
store are not emitted again, and stored reports whose delivery was never recorded are
re-sent at start-up after checking the report topic (:meth:`KafkaReportSink.redeliver`).

VOEvent transport (:class:`Transports`, both modes, each piece off unless configured): a VTP
broadcaster of counterpart and retraction VOEvents (an engine sink), GCN Classic over VTP in,
and partner submissions over VTP and (Kafka mode) a Kafka topic. Their threads never call the
engine: they queue parsed events on a :class:`NoticeInbox` that the loop drains each step.

Partner detection streams (both modes, when a ``[partners.<name>.stream]`` rule exists): the
detections (Kafka mode: signed messages with header ``mmcross-kind: detections`` on the partner
topic; embedded mode: files in ``<spool>/in/detections/<partner>/``) are queued like events and
matched by the loop against the engine's alert history, and every alert batch against the
kept detections (:class:`matchers.partner_stream_matcher.PartnerStreamMatcher`). Matches go to
``[submit.kafka] stream_match_topic`` through the acknowledged producer (Kafka mode; the
partner topic's offsets are committed only after that acknowledgement) or to
``<spool>/out/partner_matches.jsonl`` (embedded mode).

Start-up restores the live events, their matches and the alert history from the store.
Transport errors are logged and waited out with an exponential back-off (librdkafka
reconnects by itself); SIGTERM/SIGINT finish the current batch and leave cleanly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from brokers.dead_letters import DeadLetters, SourceRef
from brokers.kafka_alerts import AlertConsumer
from brokers.kafka_config import (
    alert_consumer_config,
    base_properties,
    gcn_consumer_config,
    producer_config,
    reader_config,
)
from brokers.kafka_reports import AckedProducer, KafkaReportSink, PartnerMatchSink
from brokers.kafka_schemas import SchemaResolver
from brokers.vtp import BroadcasterSettings, VTPBroadcaster
from listeners.gcn_kafka import NoticeConsumer, ReceivedNotice
from listeners.partner_detections import PartnerDetections
from listeners.partner_kafka import PartnerKafkaConsumer
from listeners.partners import PartnerRegistry
from listeners.vtp import VTPListener
from listeners.vtp_receiver import VTPReceiver
from matchers.partner_stream_matcher import PartnerMatch, PartnerStreamMatcher
from mmcross.alert import AlertBatch
from mmcross.config import Config, notice_options
from mmcross.engine import Engine
from mmcross.errors import ConfigError, NotAnEventError
from mmcross.event import Event
from mmcross.metrics import Metrics, MetricsServer, RateMeter

if TYPE_CHECKING:
    from catalogs import Store

log = logging.getLogger(__name__)

_TRANSPORT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
              KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT}


@dataclass
class ServiceSettings:
    """Topics and loop parameters (seconds) of the service, from ``[kafka]``/``[service]``."""

    alert_topics: list[str]
    report_topic: str
    voevent_topic: str | None
    dead_letter_topic: str
    notice_topics: list[str]
    batch_size: int = 5000
    poll_timeout: float = 0.5
    ack_timeout: float = 30.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    redeliver_lookback: float = 86400.0
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
            **{name: type(getattr(cls, name))(s[name]) for name in (
                "batch_size", "poll_timeout", "ack_timeout", "backoff_min", "backoff_max",
                "redeliver_lookback", "log_every", "prune_interval") if name in s},
            metrics_port=int((config.get("metrics", {}) or {}).get("port", -1)),
            metrics_host=str((config.get("metrics", {}) or {}).get("host", "127.0.0.1")))


@dataclass
class ServiceStats:
    """Counters of a running service (for the progress log lines)."""

    notices: int = 0
    notices_refused: int = 0
    detections: int = 0
    detections_refused: int = 0
    partner_matches: int = 0
    alerts: int = 0
    reports: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    commits: int = 0
    transport_errors: int = 0
    started: float = field(default_factory=time.monotonic)


def newest_alert_mjd(store: Store) -> float | None:
    """Time of the newest alert in the store's history, MJD TAI (None when empty)."""
    from sqlalchemy import func, select

    from catalogs.models import AlertHistoryRow

    with store.engine.connect() as conn:
        value = conn.execute(select(func.max(AlertHistoryRow.__table__.c.mjd_tai))).scalar()
    return None if value is None else float(value)


def prune_history(store: Store, config: Config, newest_mjd_tai: float | None) -> int:
    """Delete stored alerts older than the longest matching window before the newest alert.

    The reference is the newest alert seen (MJD TAI), not the wall clock, so that a replayed
    or simulated stream keeps its history. Returns the number of alerts deleted.
    """
    if newest_mjd_tai is None:
        return 0
    before = newest_mjd_tai - config.longest_window_days
    n = store.prune_alert_history(before)
    if n:
        log.info("pruned %d stored alerts older than MJD TAI %.5f (%.2f d before the newest)",
                 n, before, config.longest_window_days)
    return n


def declare_metrics(metrics: Metrics) -> Metrics:
    """Declare the service's Prometheus metrics (names without the ``mmcross_`` prefix)."""
    for name, text in (
            ("alerts_total", "Alerts read and decoded."),
            ("matches_total", "New matches reported."),
            ("revocations_total", "Match revocations reported."),
            ("reports_delivered_total", "Match reports acknowledged by the output."),
            ("dead_letters_total", "Refused input messages, by error class."),
            ("notices_total", "GCN notices read, by outcome."),
            ("transport_errors_total", "Kafka transport errors seen."),
            ("commits_total", "Input offset commits."),
            ("partner_detections_total", "Partner stream detections accepted."),
            ("partner_matches_total", "Partner detection / Rubin alert matches reported.")):
        metrics.counter(name, text)
    for name, text in (
            ("alerts_per_second", "Alerts read per second over the last 10 s."),
            ("consumer_lag", "Alert messages behind the end of the assigned partitions "
                             "(-1 unknown)."),
            ("live_events", "Events in the index (matchable)."),
            ("last_alert_mjd_tai", "Time of the newest alert read, MJD TAI."),
            ("last_alert_unixtime", "Wall-clock time the last alert was read, s since 1970."),
            ("start_unixtime", "Wall-clock time the service started, s since 1970.")):
        metrics.gauge(name, text)
    return metrics


# -- VOEvent transport and partner submissions (both modes) -------------------------------

@dataclass
class TransportSettings:
    """Which VOEvent-transport pieces run next to the service, and the partner ack wait (s).

    Each piece is off unless its config says otherwise (the ``listen`` flags turn them on):

    * ``[vtp.broadcast] enabled`` (``--vtp-port``/``--vtp-host``): counterpart and retraction
      VOEvents to VTP subscribers on ``host:port``;
    * ``[vtp.listen] servers`` non-empty (``--gcn-vtp``): GCN Classic over VTP in;
    * ``[submit.vtp] enabled`` (``--submit-port``): the partner VTP submission receiver;
    * ``[submit.kafka] enabled``: the partner Kafka submission topic (Kafka mode only).

    ``submit_wait``: ``[submit.vtp] ack_wait``, seconds a partner's VTP submission waits for the
    service loop to apply it before the ack (a nak after that; resubmitting is harmless).
    ``stream_match_topic``: ``[submit.kafka] stream_match_topic``, where partner stream matches
    go in Kafka mode.
    """

    broadcast: bool = False
    gcn_vtp: tuple[str, ...] = ()
    submit_vtp: bool = False
    submit_kafka: bool = False
    submit_wait: float = 30.0
    stream_match_topic: str = "mmcross.partner-matches"

    @classmethod
    def from_config(cls, config: Config) -> TransportSettings:
        servers = config.get("vtp.listen.servers", []) or []
        if isinstance(servers, str):
            servers = [servers]
        return cls(broadcast=bool(config.get("vtp.broadcast.enabled", False)),
                   gcn_vtp=tuple(str(s) for s in servers),
                   submit_vtp=bool(config.get("submit.vtp.enabled", False)),
                   submit_kafka=bool(config.get("submit.kafka.enabled", False)),
                   submit_wait=float(config.get("submit.vtp.ack_wait", 30.0)),
                   stream_match_topic=str(config.get("submit.kafka.stream_match_topic",
                                                     "mmcross.partner-matches")))


class _Pending:
    """One event handed from a transport thread to the service loop."""

    __slots__ = ("event", "done", "error")

    def __init__(self, event: Event, wait: bool) -> None:
        self.event = event
        self.done = threading.Event() if wait else None
        self.error: BaseException | None = None


class NoticeInbox:
    """Events from the VTP listener/receiver threads to the service loop.

    The engine is not thread-safe, so transport threads never call it: they :meth:`put` the
    parsed event here and the service loop applies it in :meth:`drain`. ``wake`` is set on
    every put so an idle loop can wait on it instead of sleeping its poll interval.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self.wake = threading.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (puts are refused)."""
        return self._closed

    def put(self, event: Event, wait: float | None = None) -> None:
        """Queue ``event``; with ``wait`` (s), block until the loop applied it.

        Raises:
            RuntimeError: the service is stopping, applying the event failed, or it was not
                applied within ``wait`` seconds (the caller then refuses the submission).
        """
        if self._closed:
            raise RuntimeError("the service is stopping")
        item = _Pending(event, wait is not None)
        self._queue.put(item)
        self.wake.set()
        if item.done is None:
            return
        if not item.done.wait(wait):
            raise RuntimeError(f"{event.event_id} not applied within {wait:.0f} s")
        if item.error is not None:
            raise RuntimeError(f"{event.event_id} not applied: {item.error}")

    def drain(self, apply: Callable[[Event], object]) -> int:
        """Apply every queued event in this thread; returns how many."""
        n = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return n
            try:
                apply(item.event)
            except Exception as exc:  # noqa: BLE001 - reported to the submitter, logged
                item.error = exc
                log.exception("applying %s from %s failed", item.event.event_id,
                              item.event.source)
            finally:
                if item.done is not None:
                    item.done.set()
            n += 1

    def close(self) -> None:
        """Refuse further puts; release anyone still waiting."""
        self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            item.error = RuntimeError("the service stopped")
            if item.done is not None:
                item.done.set()


class Transports:
    """The VTP broadcaster (an engine sink), the GCN Classic VTP listener, the partner VTP
    receiver and the partner Kafka consumer of one service; all feed :attr:`inbox`.

    Call :meth:`start` once the engine is restored, :meth:`poll` from the service loop (it
    applies queued events with the given function), and :meth:`stop_inputs` then
    ``inbox.close()`` before closing the engine (which closes the broadcaster, its sink).

    Args:
        config: merged configuration (``[vtp.*]``, ``[submit.*]``, ``[partners.*]``).
        settings: which pieces run (default from ``config``).
    """

    def __init__(self, config: Config, settings: TransportSettings | None = None) -> None:
        self.config = config
        self.settings = settings or TransportSettings.from_config(config)
        self.inbox = NoticeInbox()
        self.registry = PartnerRegistry.from_config(config)
        self.broadcaster: VTPBroadcaster | None = None
        self.listener: VTPListener | None = None
        self.receiver: VTPReceiver | None = None
        self.partner_kafka: PartnerKafkaConsumer | None = None
        self.streams: PartnerStreamMatcher | None = None
        if any(p.stream for p in self.registry.partners.values()):
            self.streams = PartnerStreamMatcher(config, self.registry)
            log.info("partner streams of %s", ", ".join(sorted(self.streams.rules)))
        self._detections: queue.SimpleQueue[tuple[str, PartnerDetections]] = \
            queue.SimpleQueue()

    def start(self, engine: Engine, kafka_props: Mapping[str, Any] | None = None) -> None:
        """Start every configured piece; the broadcaster joins ``engine.sinks``.

        Args:
            engine: the restored engine (its live events re-teach the registry which events
                each partner submitted).
            kafka_props: librdkafka properties for the partner submission consumer (Kafka
                mode); None = no partner topic.

        Raises:
            ConfigError: a port cannot be listened on, or the config is wrong.
        """
        s = self.settings
        restored = self.registry.restore(engine.index.live())
        if restored:
            log.info("%d live partner events restored", restored)
        if s.broadcast:
            section = self.config.get("vtp.broadcast", {}) or {}
            configured = BroadcasterSettings.from_config(self.config).filters
            partner = self.registry.broadcaster_filters()
            clash = set(configured) & set(partner)
            if clash:
                raise ConfigError(f"[vtp.broadcast.filters] and a partner's hosts both name "
                                  f"{sorted(clash)}")
            broadcaster = VTPBroadcaster.from_config(self.config,
                                                     filters={**configured, **partner})
            try:
                host, port = broadcaster.start()
            except OSError as exc:
                raise ConfigError(f"VTP broadcaster cannot listen on {section.get('host')}:"
                                  f"{section.get('port')} ([vtp.broadcast], --vtp-port): "
                                  f"{exc}") from exc
            engine.sinks.append(broadcaster)
            self.broadcaster = broadcaster
            log.info("VTP broadcaster: counterpart VOEvents on %s:%d (%d partner "
                     "subscriptions)", host, port, len(partner))
        if s.gcn_vtp:
            self.listener = VTPListener.from_config(self.config, self.inbox.put,
                                                    servers=list(s.gcn_vtp)).start()
            log.info("GCN Classic over VTP from %s", ", ".join(s.gcn_vtp))
        if s.submit_vtp:
            if not len(self.registry):
                log.warning("partner VTP receiver on, but no [partners.<name>] is configured:"
                            " every submission will be refused")
            receiver = VTPReceiver.from_config(self.config, self._partner_submission_vtp,
                                               registry=self.registry)
            try:
                self.receiver = receiver.start()
            except OSError as exc:
                raise ConfigError(f"partner VTP receiver cannot listen on "
                                  f"{self.config.get('submit.vtp.host')}:"
                                  f"{self.config.get('submit.vtp.port')} ([submit.vtp], "
                                  f"--submit-port): {exc}") from exc
        if s.submit_kafka:
            if kafka_props is None:
                log.warning("[submit.kafka] enabled is ignored without Kafka (embedded mode)")
            else:
                # Offsets are committed by the loop (commit()) once what the submissions
                # caused is acknowledged, not in the background.
                self.partner_kafka = PartnerKafkaConsumer.from_config(
                    self.config, {**dict(kafka_props), "enable.auto.commit": False},
                    self._partner_submission, registry=self.registry,
                    on_detections=self.put_detections if self.streams is not None else None)

    def _partner_submission(self, event: Event) -> None:
        # Record the owner before the engine sees the event, so that counterparts found at
        # once (retro-matching) already pass the partner's subscription filter.
        self.registry.restore([event])
        self.inbox.put(event)

    def _partner_submission_vtp(self, event: Event) -> None:
        self.registry.restore([event])
        self.inbox.put(event, wait=self.settings.submit_wait)

    def put_detections(self, partner: str, detections: PartnerDetections) -> None:
        """Queue accepted detections of ``partner`` for the loop (any thread).

        Raises:
            RuntimeError: the service is stopping or has no partner stream rule.
        """
        if self.streams is None:
            raise RuntimeError("no partner has a stream rule")
        if self.inbox.closed:
            raise RuntimeError("the service is stopping")
        self._detections.put((partner, detections))
        self.inbox.wake.set()

    def poll(self, apply: Callable[[Event], object],
             apply_detections: Callable[[str, PartnerDetections], object] | None = None,
             max_messages: int = 100) -> int:
        """Read the partner topic (if any), apply every queued event, then (when
        ``apply_detections`` is given) every queued detection payload; returns how many
        inputs were handled (partner messages read, refused ones included, plus the queued
        items applied)."""
        read = 0
        if self.partner_kafka is not None:
            before = self.partner_kafka.stats["messages"]
            self.partner_kafka.poll(max_messages, 0.0)
            read = self.partner_kafka.stats["messages"] - before
        n = self.inbox.drain(apply)
        if apply_detections is not None:
            while True:
                try:
                    partner, detections = self._detections.get_nowait()
                except queue.Empty:
                    break
                try:
                    apply_detections(partner, detections)
                except Exception:  # noqa: BLE001 - one bad payload must not stop the loop
                    log.exception("matching %d detections of partner %s failed",
                                  len(detections), partner)
                n += 1
        return max(n, read)

    def match_detections(self, engine: Engine, partner: str,
                         detections: PartnerDetections) -> list[PartnerMatch]:
        """New matches of ``detections`` with the alerts of ``engine.history`` that could
        match them (the partner's time window); the detections are kept for later alerts."""
        assert self.streams is not None
        start, end = self.streams.history_window(partner, detections)
        return self.streams.on_detections(partner, detections,
                                          engine.history.between(start, end))

    def match_alerts(self, batch: AlertBatch) -> list[PartnerMatch]:
        """New matches of an alert batch (already given to the engine) with kept detections."""
        return self.streams.on_alerts(batch) if self.streams is not None else []

    def commit(self) -> None:
        """Commit the partner topic's handled offsets (call after the acknowledgement)."""
        if self.partner_kafka is None:
            return
        try:
            self.partner_kafka.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("partner topic commit failed (%s): those messages will be read "
                            "again", exc)

    def stop_inputs(self) -> None:
        """Stop the listener, the receiver and the partner consumer (not the broadcaster)."""
        for name in ("listener", "receiver"):
            piece = getattr(self, name)
            if piece is not None:
                piece.stop()
                setattr(self, name, None)
        if self.partner_kafka is not None:
            try:
                self.partner_kafka.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the partner submission consumer: %s", exc)
            self.partner_kafka = None

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of the running pieces (for logs and tests)."""
        out = {}
        for name in ("broadcaster", "listener", "receiver", "partner_kafka", "streams"):
            piece = getattr(self, name)
            if piece is not None:
                out[name] = dict(piece.stats)
        return out


class ListenService:
    """The live service. Call :meth:`run` (blocks until :meth:`stop`), or :meth:`start`,
    :meth:`step` and :meth:`close` to drive it by hand.

    Args:
        config: merged configuration (``[kafka]``, ``[kafka.gcn]``, ``[service]``).
        store: the store (events, matches, deliveries, alert history).
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
        self._delivered_seen = 0
        self._newest: float | None = None
        self._last_prune = time.monotonic()
        self._env = env
        self._overrides = dict(kafka_overrides or {})
        self._stop = threading.Event()
        self._backoff = 0.0
        self._last_error_log = 0.0
        self.stats = ServiceStats()
        self.engine: Engine | None = None
        self.alerts: AlertConsumer | None = None
        self.notices: NoticeConsumer | None = None
        self.sink: KafkaReportSink | None = None
        self.dead_letters: DeadLetters | None = None
        self._producer: Producer | None = None
        self.partner_sink: PartnerMatchSink | None = None
        self.transports = Transports(config)

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Restore state, re-send undelivered reports, join the consumer groups."""
        kw = {"env": self._env, "overrides": self._overrides}
        s = self.settings
        self.metrics.set("start_unixtime", time.time())
        if s.metrics_port >= 0 and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, s.metrics_port, s.metrics_host)
        self._producer = Producer({**producer_config(self.config, **kw),
                                   "error_cb": self._on_error})
        acked = AckedProducer(self._producer)
        self.sink = KafkaReportSink(acked, s.report_topic, s.voevent_topic, self.store)
        self.dead_letters = DeadLetters(acked, s.dead_letter_topic)
        if self.transports.streams is not None:
            self.partner_sink = PartnerMatchSink(acked,
                                                 self.transports.settings.stream_match_topic)
        self.engine = Engine(self.config, store=self.store, sinks=[self.sink])
        self._newest = newest_alert_mjd(self.store)
        prune_history(self.store, self.config, self._newest)
        self._last_prune = time.monotonic()
        self.engine.restore()
        self.stats.redelivered = self.sink.redeliver(reader_config(self.config, **kw),
                                                     lookback_s=s.redeliver_lookback)
        while not self.sink.acknowledge(s.ack_timeout):
            if self._wait_backoff("re-sent reports not acknowledged"):
                return
        if s.notice_topics:
            props, creds = gcn_consumer_config(self.config, **kw)
            stable = bool((self.config.get("kafka.gcn", {}) or {}).get("group_id"))
            self.notices = NoticeConsumer(props, s.notice_topics, credentials=creds,
                                          notice_options=notice_options(self.config),
                                          commits=stable, on_error=self._on_error)
        registry = str(self.config.get("kafka.schema_registry_url", "") or "")
        self.alerts = AlertConsumer(alert_consumer_config(self.config, **kw), s.alert_topics,
                                    on_error=self._on_error,
                                    schemas=SchemaResolver(registry or None))
        self.transports.start(self.engine, kafka_props=base_properties(self.config, **kw))
        log.info("listening: alerts %s -> reports %s (VOEvents %s, dead letters %s); "
                 "%d live events", ", ".join(s.alert_topics), s.report_topic, s.voevent_topic,
                 s.dead_letter_topic, len(self.engine.index))

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
        """Stop the VTP inputs, leave the consumer groups, flush the producer, close the
        store."""
        self.transports.stop_inputs()
        if self.engine is not None:  # events already acknowledged upstream
            self.transports.poll(self._apply_event, self._apply_detections)
        self.transports.inbox.close()
        for consumer in (self.notices, self.alerts):
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("closing a consumer: %s", exc)
        self.notices = self.alerts = None
        if self.engine is not None:
            self.engine.close()  # closes the sink (final acknowledgement) and the store
            self._count_delivered()
            self.engine = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        log.info("stopped: %s", self._summary())

    # -- one step ----------------------------------------------------------------------

    def step(self) -> int:
        """Poll notices and one batch of alerts, report, acknowledge, commit.

        Returns:
            the number of input messages handled.
        """
        assert self.engine is not None and self.alerts is not None and self.sink is not None
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
            self._maybe_prune()
        self.stats.alerts += len(polled.batch)
        self._rate.add(len(polled.batch), time.monotonic())
        self._update_gauges()
        if not notices and not polled.messages and not pushed:
            if self._backoff > 0:  # transport errors seen: wait instead of spinning
                self._stop.wait(self._backoff)
            return 0
        self._backoff = 0.0
        while not self.sink.acknowledge(self.settings.ack_timeout):
            if self._wait_backoff("reports not acknowledged by the broker"):
                log.warning("stopping with unacknowledged reports: input offsets not committed"
                            " (the input will be read again)")
                return 0
        self._count_delivered()
        try:
            self.alerts.commit(polled.offsets)
            if self.notices is not None:
                self.notices.commit(notices)
            self.transports.commit()
            self.stats.commits += 1
            self.metrics.inc("commits_total")
        except KafkaException as exc:
            log.warning("commit failed (%s): these messages will be read again", exc)
        return len(notices) + polled.messages + pushed

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

    def _apply_event(self, event: Event) -> None:
        """Apply one parsed notice (Kafka, GCN VTP or a partner) in the loop's thread."""
        assert self.engine is not None
        before = {k: v for k, v in self.engine.stats.items() if k.startswith("notices_")}
        reports = self.engine.on_notice(event)
        for key, value in self.engine.stats.items():
            if key.startswith("notices_") and value > before.get(key, 0):
                self.metrics.inc("notices_total", outcome=key[len("notices_"):])
        self.stats.notices += 1
        self._count_reports(reports)
        log.info("notice %s: %s revision %d -> %d reports", event.source, event.event_id,
                 event.revision, len(reports))

    def _apply_detections(self, partner: str, detections: PartnerDetections) -> None:
        """Match accepted partner detections against the alert history (loop thread)."""
        assert self.engine is not None
        self.stats.detections += len(detections)
        self.metrics.inc("partner_detections_total", len(detections))
        self._report_partner_matches(
            self.transports.match_detections(self.engine, partner, detections))

    def _report_partner_matches(self, matches: list[PartnerMatch]) -> None:
        if not matches:
            return
        assert self.partner_sink is not None
        self.partner_sink.write(matches)
        self.stats.partner_matches += len(matches)
        self.metrics.inc("partner_matches_total", len(matches))
        log.info("%d partner stream matches to %s", len(matches), self.partner_sink.topic)

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

    def _count_reports(self, reports: list) -> None:
        self.stats.reports += len(reports)
        revoked = sum(1 for m in reports if m.retracted)
        self.metrics.inc("matches_total", len(reports) - revoked)
        self.metrics.inc("revocations_total", revoked)

    def _maybe_prune(self) -> None:
        every = self.settings.prune_interval
        if every > 0 and time.monotonic() - self._last_prune >= every:
            self._last_prune = time.monotonic()
            prune_history(self.store, self.config, self._newest)

    def _count_delivered(self) -> None:
        delivered = self.sink.delivered if self.sink is not None else 0
        if delivered > self._delivered_seen:
            self.metrics.inc("reports_delivered_total", delivered - self._delivered_seen)
            self._delivered_seen = delivered

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
                f"{st.reports} reports, {st.redelivered} re-sent, {dl} dead letters, "
                f"{st.commits} commits")

    def _log_progress(self) -> None:
        elapsed = max(1e-9, time.monotonic() - self.stats.started)
        lag = self.alerts.lag() if self.alerts is not None else -1
        live = len(self.engine.index) if self.engine is not None else 0
        log.info("%s; %.0f alerts/s, lag %d, %d live events", self._summary(),
                 self.stats.alerts / elapsed, lag, live)



# -- embedded mode: no Kafka ---------------------------------------------------------------

@dataclass
class SpoolSettings:
    """``[spool]``: the spool directory (in/, done/, failed/, out/) and its timing (s)."""

    directory: str = "mmcross-spool"
    settle: float = 0.5
    poll_interval: float = 1.0
    chunk: int = 20_000

    @classmethod
    def from_config(cls, config: Config) -> SpoolSettings:
        sp = config.get("spool", {}) or {}
        return cls(**{name: type(getattr(cls, name))(sp[name]) for name in (
            "directory", "settle", "poll_interval", "chunk") if name in sp})


class EmbeddedService:
    """``mmcross listen`` without Kafka: a file spool in, JSON Lines and VOEvent files out.

    Notice files and alert files (wire streams, wire-format messages, Avro containers) dropped
    into ``<spool>/in`` are handled once each, oldest first, then moved to ``<spool>/done``
    (refused files to ``<spool>/failed`` with the reason). Reports go to
    ``<spool>/out/matches.jsonl`` and ``<spool>/out/voevents/``; refused alert packets to
    ``<spool>/out/dead-letters.jsonl``. Events, matches and alert history are in the store,
    so a restart goes on where it stopped (a file read twice adds no report).

    Args:
        config: merged configuration (``[spool]``, ``[service]``, ``[metrics]``).
        store: the store.
        spool_dir: overrides ``[spool] directory``.
        metrics_port: overrides ``[metrics] port`` (-1 off, 0 any free port).
    """

    def __init__(self, config: Config, store: Store, *, spool_dir: str | None = None,
                 metrics_port: int | None = None) -> None:
        self.config = config
        self.store = store
        self.spool_settings = SpoolSettings.from_config(config)
        if spool_dir:
            self.spool_settings.directory = str(spool_dir)
        m = config.get("metrics", {}) or {}
        self.metrics_port = int(m.get("port", -1)) if metrics_port is None else metrics_port
        self.metrics_host = str(m.get("host", "127.0.0.1"))
        self.prune_interval = float((config.get("service", {}) or {}).get(
            "prune_interval", 3600.0))
        self.metrics = declare_metrics(Metrics())
        self.metrics_server: MetricsServer | None = None
        self.stats = ServiceStats()
        self.engine: Engine | None = None
        self.spool = None
        self._stop = threading.Event()
        self._rate = RateMeter(10.0)
        self._newest: float | None = None
        self._last_prune = time.monotonic()
        self._dead_path = None
        self.partner_matches = None
        self.transports = Transports(config)

    def start(self) -> None:
        from brokers.sinks import JsonLinesSink, VOEventDirectorySink
        from brokers.spool import PARTNER_MATCHES, FileSpool, PartnerMatchFile

        sp = self.spool_settings
        self.metrics.set("start_unixtime", time.time())
        if self.metrics_port >= 0 and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, self.metrics_port,
                                                self.metrics_host)
        self.spool = FileSpool(sp.directory, settle=sp.settle)
        self._dead_path = self.spool.out / "dead-letters.jsonl"
        if self.transports.streams is not None and self.partner_matches is None:
            self.partner_matches = PartnerMatchFile(self.spool.out / PARTNER_MATCHES)
        sinks = [JsonLinesSink(self.spool.out / "matches.jsonl"),
                 VOEventDirectorySink(self.spool.out / "voevents")]
        self.engine = Engine(self.config, store=self.store, sinks=sinks)
        self._newest = newest_alert_mjd(self.store)
        prune_history(self.store, self.config, self._newest)
        self.engine.restore()
        self.transports.start(self.engine)
        log.info("embedded mode (no Kafka configured): watching %s, reports to %s; "
                 "%d live events", self.spool.inbox, self.spool.out, len(self.engine.index))

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current file (signal-handler safe)."""
        self._stop.set()
        self.transports.inbox.wake.set()

    def run(self) -> ServiceStats:
        wake = self.transports.inbox.wake
        try:
            self.start()
            while not self._stop.is_set():
                wake.clear()  # a put after this wakes the wait below at once
                if self.step() == 0:
                    wake.wait(self.spool_settings.poll_interval)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self.transports.stop_inputs()
        if self.engine is not None:
            self.transports.poll(self._apply_event, self._apply_detections)
        self.transports.inbox.close()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.partner_matches is not None:
            self.partner_matches.close()
            self.partner_matches = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        log.info("stopped: %d notices (%d refused), %d alerts, %d reports",
                 self.stats.notices, self.stats.notices_refused, self.stats.alerts,
                 self.stats.reports)

    def step(self) -> int:
        """Apply the events pushed over VTP, then handle every settled file of the spool;
        returns how many inputs were handled."""
        assert self.spool is not None
        n = self.transports.poll(self._apply_event, self._apply_detections)
        for item in self.spool.ready():
            if self._stop.is_set():
                break
            if item.kind == "notice":
                self._notice_file(item)
            elif item.kind == "detections":
                self._detections_file(item)
            else:
                self._alert_file(item)
            n += 1
        self.metrics.set("alerts_per_second", self._rate.rate(time.monotonic()))
        if self.engine is not None:
            self.metrics.set("live_events", len(self.engine.index))
        self.metrics.set("consumer_lag", self.spool.pending())
        if self.prune_interval > 0 and time.monotonic() - self._last_prune >= self.prune_interval:
            self._last_prune = time.monotonic()
            prune_history(self.store, self.config, self._newest)
        return n

    def _count(self, reports: list) -> None:
        self.stats.reports += len(reports)
        revoked = sum(1 for m in reports if m.retracted)
        self.metrics.inc("matches_total", len(reports) - revoked)
        self.metrics.inc("revocations_total", revoked)
        self.metrics.inc("reports_delivered_total", len(reports))  # file sinks are synchronous

    def _notice_file(self, item) -> None:
        from listeners import parse_notice
        from mmcross.errors import MmcrossError

        assert self.engine is not None and self.spool is not None
        try:
            event = parse_notice(item.path.read_bytes(), source=str(item.path),
                                 **notice_options(self.config))
        except NotAnEventError as exc:
            self.stats.notices_refused += 1
            self.metrics.inc("notices_total", outcome="not_an_event")
            log.info("notice file %s is not an event: %s", item.path, exc)
            self.spool.complete(item)
            return
        except (MmcrossError, OSError) as exc:
            self.stats.notices_refused += 1
            self.metrics.inc("notices_total", outcome="refused")
            self.metrics.inc("dead_letters_total", error=type(exc).__name__)
            log.warning("notice file %s refused: %s", item.path, exc)
            self.spool.fail(item, f"{type(exc).__name__}: {exc}")
            return
        self._apply_event(event)
        self.spool.complete(item)

    def _apply_event(self, event: Event) -> None:
        """Apply one parsed notice (a spool file, GCN VTP or a partner)."""
        assert self.engine is not None
        before = {k: v for k, v in self.engine.stats.items() if k.startswith("notices_")}
        reports = self.engine.on_notice(event)
        for key, value in self.engine.stats.items():
            if key.startswith("notices_") and value > before.get(key, 0):
                self.metrics.inc("notices_total", outcome=key[len("notices_"):])
        self.stats.notices += 1
        self._count(reports)
        log.info("notice %s: %s revision %d -> %d reports", event.source, event.event_id,
                 event.revision, len(reports))

    def _alert_file(self, item) -> None:
        import json

        import numpy as np

        from brokers.alert_files import iter_alert_batches

        assert self.engine is not None and self.spool is not None
        errors: list[Exception] = []
        n = 0
        for batch in iter_alert_batches([item.path], chunk=self.spool_settings.chunk,
                                        on_error=errors.append):
            if len(batch) > 1:
                order = np.argsort(batch.mjd_tai, kind="stable")
                if np.any(np.diff(order) != 1):
                    batch = batch.take(order)
            self._count(self.engine.on_alerts(batch))
            self._report_partner_matches(self.transports.match_alerts(batch))
            n += len(batch)
            newest = float(batch.mjd_tai.max())
            self._newest = newest if self._newest is None else max(self._newest, newest)
            self.metrics.inc("alerts_total", len(batch))
            self.metrics.set("last_alert_mjd_tai", self._newest)
            self.metrics.set("last_alert_unixtime", time.time())
            self._rate.add(len(batch), time.monotonic())
        self.stats.alerts += n
        if errors:
            with open(self._dead_path, "a", encoding="utf-8") as f:
                for exc in errors:
                    f.write(json.dumps({"file": str(item.path.name), "error": type(exc).__name__,
                                        "reason": str(exc)}) + "\n")
            for exc in errors:
                self.metrics.inc("dead_letters_total", error=type(exc).__name__)
        if n == 0 and errors:
            self.spool.fail(item, "; ".join(str(e) for e in errors[:10]))
            log.warning("alert file %s refused: %s", item.path, errors[0])
            return
        log.info("alert file %s: %d alerts (%d refused)", item.path.name, n, len(errors))
        self.spool.complete(item)

    def _detections_file(self, item) -> None:
        """A partner's detections dropped in ``in/detections/<partner>/`` (operator input:
        no signature, no rate limit; the partner must exist and have a stream rule, and the
        file is within its ``max_bytes``)."""
        from brokers.spool import detections_partner
        from listeners.partner_detections import parse_detections
        from listeners.partners import SubmissionRefusedError

        assert self.spool is not None
        partner = detections_partner(item, self.spool.inbox)
        try:
            p = self.transports.registry.partners.get(partner)
            if p is None:
                raise SubmissionRefusedError("unknown_partner",
                                             f"no [partners.{partner}] is configured")
            if not p.stream or self.transports.streams is None:
                raise SubmissionRefusedError("no_stream_rule",
                                             f"partner {partner!r} has no [partners.{partner}"
                                             ".stream] rule")
            if item.size > p.max_bytes:
                raise SubmissionRefusedError("oversized", f"{item.size} bytes exceed partner "
                                             f"{partner!r}'s max_bytes of {p.max_bytes}")
            detections = parse_detections(item.path.read_bytes(), partner,
                                          where=str(item.path))
        except (SubmissionRefusedError, OSError) as exc:
            self.stats.detections_refused += 1
            self.metrics.inc("dead_letters_total", error=type(exc).__name__)
            log.warning("detections file %s refused: %s", item.path, exc)
            self.spool.fail(item, f"{getattr(exc, 'reason', type(exc).__name__)}: {exc}")
            return
        self._apply_detections(partner, detections)
        self.spool.complete(item)

    def _apply_detections(self, partner: str, detections: PartnerDetections) -> None:
        """Match accepted partner detections against the alert history."""
        assert self.engine is not None
        self.stats.detections += len(detections)
        self.metrics.inc("partner_detections_total", len(detections))
        self._report_partner_matches(
            self.transports.match_detections(self.engine, partner, detections))

    def _report_partner_matches(self, matches: list[PartnerMatch]) -> None:
        if not matches:
            return
        assert self.partner_matches is not None
        self.partner_matches.write(matches)
        self.stats.partner_matches += len(matches)
        self.metrics.inc("partner_matches_total", len(matches))
        log.info("%d partner stream matches to %s", len(matches), self.partner_matches.path)

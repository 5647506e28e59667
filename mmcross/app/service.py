"""``mmcross listen``: GCN notices and the alert stream from Kafka, match reports to Kafka.

One loop, one thread: poll notices (parse, apply), poll a batch of alerts (decode, match),
send reports and dead letters through one idempotent producer, wait for the broker's
acknowledgement, and only then commit the input offsets. A crash at any point therefore
loses nothing (uncommitted input is read again) and sends nothing twice: matches already in the
store are not emitted again, and stored reports whose delivery was never recorded are
re-sent at start-up after checking the report topic (:meth:`KafkaReportSink.redeliver`).

VOEvent transport and partner inputs (:mod:`mmcross.app.transports`, each piece off unless
configured) queue their events and detections for this loop; partner stream matches go to
``[submit.kafka] stream_match_topic`` through the acknowledged producer, so the partner
topic's offsets are committed only after that acknowledgement. Without Kafka,
:mod:`mmcross.app.embedded` runs the same engine on a file spool.

Start-up restores the live events, their matches and the alert history from the store.
Transport errors are logged and waited out with an exponential back-off (librdkafka
reconnects by itself); SIGTERM/SIGINT finish the current batch and leave cleanly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from mmcross.app.engine import Engine
from mmcross.app.metrics import Metrics, MetricsServer, RateMeter
from mmcross.app.service_state import (
    EngineLoop,
    ServiceStats,
    declare_metrics,
    newest_alert_mjd,
    prune_history,
)
from mmcross.app.transports import Transports
from mmcross.brokers.dead_letters import DeadLetters, SourceRef
from mmcross.brokers.kafka_alerts import AlertConsumer
from mmcross.brokers.kafka_config import (
    alert_consumer_config,
    base_properties,
    gcn_consumer_config,
    producer_config,
    reader_config,
)
from mmcross.brokers.kafka_reports import AckedProducer, KafkaReportSink, PartnerMatchSink
from mmcross.brokers.kafka_schemas import SchemaResolver
from mmcross.listeners.gcn_kafka import NoticeConsumer, ReceivedNotice
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError, NotAnEventError

if TYPE_CHECKING:
    from mmcross.catalogs import Store


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


class ListenService(EngineLoop):
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
        self.partner_out: PartnerMatchSink | None = None
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
            self.partner_out = PartnerMatchSink(acked,
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

"""VOEvent transport and partner inputs of the live services, off unless configured.

A VTP broadcaster of counterpart and retraction VOEvents (an engine sink), GCN Classic over
VTP in, partner submissions over VTP and (Kafka mode) a Kafka topic, and partner detection
streams. Their threads never call the engine: they queue parsed events and detections on a
:class:`NoticeInbox` that the service loop drains each step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException

from mmcross.app.engine import Engine, ReportSink
from mmcross.brokers.hop import HopReportSink
from mmcross.brokers.vtp import BroadcasterSettings, VTPBroadcaster
from mmcross.listeners.hop import HopListener
from mmcross.listeners.partner_kafka import PartnerKafkaConsumer
from mmcross.listeners.partners import PartnerRegistry
from mmcross.listeners.vtp import VTPListener
from mmcross.listeners.vtp_receiver import VTPReceiver
from mmcross.matchers.partner_stream_matcher import PartnerMatch, PartnerStreamMatcher
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.detections import Detections
from mmcross.model.errors import ConfigError
from mmcross.model.event import Event

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)



@dataclass
class TransportSettings:
    """Which VOEvent-transport pieces run next to the service, and the partner ack wait (s).

    Each piece is off unless its config says otherwise (the ``listen`` flags turn them on):

    * ``[vtp.broadcast] enabled`` (``--vtp-port``/``--vtp-host``): counterpart and retraction
      VOEvents to VTP subscribers on ``host:port``;
    * ``[vtp.listen] servers`` non-empty (``--gcn-vtp``): GCN Classic over VTP in;
    * ``[submit.vtp] enabled`` (``--submit-port``): the partner VTP submission receiver;
    * ``[submit.kafka] enabled``: the partner Kafka submission topic (Kafka mode only);
    * ``[hop.listen] urls`` non-empty: GCN notices from Hopskotch (hop-client) in;
    * ``[hop.publish] url`` set: counterparts and retractions to a Hopskotch topic.

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
    hop_listen: tuple[str, ...] = ()
    hop_publish: str = ""

    @classmethod
    def from_config(cls, config: Config) -> TransportSettings:
        servers = config.get("vtp.listen.servers", []) or []
        if isinstance(servers, str):
            servers = [servers]
        hop_urls = config.get("hop.listen.urls", []) or []
        if isinstance(hop_urls, str):
            hop_urls = [hop_urls]
        return cls(broadcast=bool(config.get("vtp.broadcast.enabled", False)),
                   gcn_vtp=tuple(str(s) for s in servers),
                   submit_vtp=bool(config.get("submit.vtp.enabled", False)),
                   submit_kafka=bool(config.get("submit.kafka.enabled", False)),
                   submit_wait=float(config.get("submit.vtp.ack_wait", 30.0)),
                   stream_match_topic=str(config.get("submit.kafka.stream_match_topic",
                                                     "mmcross.partner-matches")),
                   hop_listen=tuple(str(u) for u in hop_urls),
                   hop_publish=str(config.get("hop.publish.url", "") or ""))


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
        self.hop_listener: HopListener | None = None
        self.hop_sink: HopReportSink | None = None
        self.streams: PartnerStreamMatcher | None = None
        if any(p.stream for p in self.registry.partners.values()):
            self.streams = PartnerStreamMatcher(config, self.registry)
            log.info("partner streams of %s", ", ".join(sorted(self.streams.rules)))
        self._detections: queue.SimpleQueue[tuple[str, Detections]] = \
            queue.SimpleQueue()

    def start(self, engine: Engine, kafka_props: Mapping[str, Any] | None = None,
              output_sinks: list[ReportSink] | None = None) -> None:
        """Start every configured piece; the outputs outside Kafka (VTP broadcaster,
        Hopskotch producer) join ``output_sinks`` (default ``engine.sinks``).

        Args:
            engine: the restored engine (its live events re-teach the registry which events
                each partner submitted).
            kafka_props: librdkafka properties for the partner submission consumer (Kafka
                mode); None = no partner topic.
            output_sinks: where the VTP broadcaster and the Hopskotch sink go (Kafka mode:
                the :class:`~mmcross.app.relay.CommittedRelay`'s sinks).

        Raises:
            ConfigError: a port cannot be listened on, or the config is wrong.
        """
        s = self.settings
        outputs = engine.sinks if output_sinks is None else output_sinks
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
            outputs.append(broadcaster)
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

        if s.hop_publish:
            self.hop_sink = HopReportSink.from_config(self.config)
            outputs.append(self.hop_sink)
        if s.hop_listen:
            self.hop_listener = HopListener.from_config(self.config, self.inbox.put).start()

    def _partner_submission(self, event: Event) -> None:
        # Record the owner before the engine sees the event, so that counterparts found at
        # once (retro-matching) already pass the partner's subscription filter.
        self.registry.restore([event])
        self.inbox.put(event)

    def _partner_submission_vtp(self, event: Event) -> None:
        self.registry.restore([event])
        self.inbox.put(event, wait=self.settings.submit_wait)

    def put_detections(self, partner: str, detections: Detections) -> None:
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
             apply_detections: Callable[[str, Detections], object] | None = None,
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
                         detections: Detections) -> list[PartnerMatch]:
        """New matches of ``detections`` with the alerts of ``engine.history`` that could
        match them (the partner's time window); the detections are kept for later alerts."""
        assert self.streams is not None
        start, end = self.streams.history_window(partner, detections)
        history = engine.history.between(start, end)
        return self.streams.on_detections(partner, detections, history,
                                          alert_properties={"mag": history.mag})

    def match_alerts(self, batch: AlertBatch) -> list[PartnerMatch]:
        """New matches of an alert batch (already given to the engine) with kept detections."""
        if self.streams is None:
            return []
        return self.streams.on_alerts(batch, alert_properties={"mag": batch.mag})

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
        for name in ("listener", "receiver", "hop_listener"):
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
        for name in ("broadcaster", "listener", "receiver", "partner_kafka", "streams",
                     "hop_listener", "hop_sink"):
            piece = getattr(self, name)
            if piece is not None:
                out[name] = dict(piece.stats)
        return out

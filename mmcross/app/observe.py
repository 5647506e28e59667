"""The observer's side of counterpart notices: receive, filter, print or store them.

Two sources give the same :class:`Received` items:

- :class:`VTPSubscriber`: the VTP subscriber role (:mod:`mmcross.vtp.subscriber`: iamalive
  answered, every VOEvent acknowledged, reconnect with back-off) on mmcross's broadcaster
  (:mod:`mmcross.brokers.vtp`), each counterpart or retraction VOEvent turned back into a
  :class:`~mmcross.model.match.Match` from its ``What`` Params (:func:`match_from_voevent`).
- :class:`KafkaSubscriber`: Avro match reports (``mmcross.match_report``) from a Kafka topic,
  decoded by :func:`mmcross.brokers.reports.match_from_avro`.

:func:`subscribe` applies a :class:`mmcross.brokers.vtp.SubscriptionFilter` client-side (the same
filter the broadcaster applies server-side), hands each accepted counterpart to handlers
(:class:`CounterpartStorer` writes VOEvent files and/or the catalog store) and stops after a
count, a timeout or a stop request. Printing is the CLI's job (:func:`format_counterpart`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lxml import etree

from mmcross.brokers.reports import match_from_avro
from mmcross.brokers.sinks import VOEventDirectorySink, write_atomically
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.brokers.vtp import SubscriptionFilter
from mmcross.model.errors import BadNoticeError
from mmcross.model.match import Match
from mmcross.vtp.base import Packet, safe_xml
from mmcross.vtp.subscriber import Subscriber

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/observer"
_POLL_S = 0.5  # socket / consumer poll granularity, seconds (stop and deadline checks)

_INT_FIELDS = {"event_revision", "alert_id", "supersedes_revision"}
_BOOL_FIELDS = {"retracted"}
_FLOAT_FIELDS = {"ra", "dec", "time_offset", "credible_level", "searched_area", "prob_density",
                 "distance_mean", "distance_std", "p_chance"}
_OPTIONAL_FIELDS = {"distance_mean", "distance_std", "retracted", "notice_ivorn",
                    "supersedes_revision"}
_MATCH_FIELDS = tuple(f.name for f in fields(Match))


@dataclass(frozen=True)
class Received:
    """One counterpart notice as received.

    Attributes:
        match: the match (``retracted=True`` for a retraction).
        voevent: the VOEvent packet (UTF-8 XML) when it came as one (VTP), else ``None``.
        source: where it came from (``vtp://host:port``, ``kafka://topic/partition/offset``).
    """

    match: Match
    voevent: bytes | None
    source: str


# -- VOEvent -> Match ------------------------------------------------------------------------


def match_from_voevent(payload: bytes | Any, where: str = "VOEvent") -> Match:
    """The :class:`Match` carried by an mmcross counterpart or retraction VOEvent.

    The match fields are the ``What/Param`` elements (``mmcross.brokers.voevent_out``); positions in
    degrees ICRS, times ISO 8601 UTC. A packet citing an IVORN with ``cite="retraction"`` is a
    retraction even without a ``retracted`` Param.

    Args:
        payload: the VOEvent bytes, or an already parsed lxml root.
        where: where it came from, for error messages.

    Raises:
        BadNoticeError: not a VOEvent, or a Param of the match is missing or malformed.
    """
    root = safe_xml(payload) if isinstance(payload, bytes | bytearray) else payload
    if etree.QName(root).localname != "VOEvent":
        raise BadNoticeError(f"{where}: root element is {root.tag}, not VOEvent")
    params: dict[str, str] = {}
    for what in root.findall("What"):
        for param in what.iter("Param"):
            name = param.get("name")
            if name in _MATCH_FIELDS and name not in params:
                params[name] = param.get("value", "")
    missing = [n for n in _MATCH_FIELDS if n not in params and n not in _OPTIONAL_FIELDS]
    if missing:
        raise BadNoticeError(f"{where} ({root.get('ivorn')}): not an mmcross counterpart "
                             f"VOEvent, Params missing: {missing}")
    values: dict[str, Any] = {}
    for name in _MATCH_FIELDS:
        text = params.get(name)
        try:
            if text is None:
                values[name] = (False if name in _BOOL_FIELDS
                                else "" if name == "notice_ivorn" else None)
            elif name in _INT_FIELDS:
                values[name] = int(text)
            elif name in _FLOAT_FIELDS:
                values[name] = float(text)
            elif name in _BOOL_FIELDS:
                values[name] = text.strip().lower() in ("true", "1", "yes")
            else:
                values[name] = text
        except ValueError as exc:
            raise BadNoticeError(f"{where} ({root.get('ivorn')}): Param {name}={text!r} is not "
                                 f"a valid value: {exc}") from exc
    if any(c.get("cite") == "retraction" for c in root.iter("EventIVORN")):
        values["retracted"] = True
    return Match(**values)


def format_counterpart(match: Match) -> str:
    """One human-readable line: event, alert, position (deg ICRS), credible level, p_chance."""
    state = "RETRACTED" if match.retracted else "counterpart"
    return (f"{state:<11} {match.event_id} rev {match.event_revision} "
            f"({match.event_kind}/{match.instrument})  alert {match.alert_id} "
            f"obj {match.object_id}  ra {match.ra:9.5f} dec {match.dec:+9.5f}  "
            f"cl {match.credible_level:.3f}  p_chance {match.p_chance:.3g}  "
            f"dt {match.time_offset:+.3f} d")


# -- VTP -------------------------------------------------------------------------------------


class VTPSubscriber:
    """A VTP subscriber of counterpart notices (mmcross's broadcaster, or any VTP broker).

    The subscriber role of :mod:`mmcross.vtp.subscriber` (iamalive answered, every VOEvent
    acknowledged, reconnect with back-off) whose handler turns each VOEvent into a
    :class:`Received` with :func:`match_from_voevent`.

    Args:
        host, port: the broadcaster's address.
        ivorn: our IVORN in ``ack``/``iamalive`` replies.
        max_packet_bytes: larger announced packets drop the connection.
        iamalive_timeout: seconds without any packet before reconnecting (the broadcaster
            sends iamalive every 60 s).
        connect_timeout: seconds per connection attempt.
        backoff_min, backoff_max: reconnect delay bounds, seconds (doubling).

    ``stats`` holds the role's counters (``connections``, ``connect_failures``, ``packets``,
    ``iamalive``, ``voevents`` (acknowledged), ``unparsable``, ``oversized_frames``...) and
    this handler's ``counterparts`` and ``not_counterparts``.
    """

    BACKOFF_MIN = 0.5  # s: an observer reconnects sooner than a GCN listener
    BACKOFF_MAX = 60.0  # s

    def __init__(self, host: str, port: int, *, ivorn: str = DEFAULT_IVORN,
                 max_packet_bytes: int = Subscriber.MAX_FRAME_BYTES,
                 iamalive_timeout: float = Subscriber.IAMALIVE_TIMEOUT,
                 connect_timeout: float = Subscriber.CONNECT_TIMEOUT,
                 backoff_min: float = BACKOFF_MIN, backoff_max: float = BACKOFF_MAX) -> None:
        self.host, self.port = host, int(port)
        self.role = Subscriber([(host, self.port)], self._on_voevent, ivorn=ivorn,
                               iamalive_timeout=iamalive_timeout,
                               connect_timeout=connect_timeout, backoff_min=backoff_min,
                               backoff_max=backoff_max, max_frame_bytes=max_packet_bytes)
        self.stats = self.role.stats
        self._received: queue.SimpleQueue[Received] = queue.SimpleQueue()

    def receive(self, stop: threading.Event,
                deadline: float | None = None) -> Iterator[Received]:
        """Counterpart notices until ``stop`` is set or ``time.monotonic()`` passes
        ``deadline``; each VOEvent is acknowledged before it is yielded."""
        self.role.start("mmcross-observer-vtp")
        try:
            while not _done(stop, deadline):
                wait = _POLL_S if deadline is None else min(
                    _POLL_S, max(0.0, deadline - time.monotonic()))
                try:
                    yield self._received.get(timeout=wait)
                except queue.Empty:
                    continue
        finally:
            self.role.stop()

    def _on_voevent(self, packet: Packet, peer: str) -> None:
        where = f"vtp://{peer} {packet.ivorn}"
        try:
            match = match_from_voevent(packet.root, where=where)
        except BadNoticeError as exc:
            self.stats["not_counterparts"] += 1
            log.info("%s", exc)
            return
        self.stats["counterparts"] += 1
        self._received.put(Received(match, packet.payload, where))


# -- Kafka -----------------------------------------------------------------------------------


def kafka_subscriber_config(properties: Mapping[str, Any], *, group_id: str | None = None,
                            from_beginning: bool = False) -> dict[str, Any]:
    """Consumer properties of an observer: ``properties`` (with ``bootstrap.servers``) plus,
    unless given, a group id (a fresh ``mmcross-observer-<uuid>`` by default), offset reset
    ``earliest`` when ``from_beginning`` else ``latest``, and auto-commit."""
    props = dict(properties)
    if group_id:
        props["group.id"] = group_id
    props.setdefault("group.id", f"mmcross-observer-{uuid.uuid4().hex}")
    props.setdefault("auto.offset.reset", "earliest" if from_beginning else "latest")
    props.setdefault("enable.auto.commit", True)
    return props


class KafkaSubscriber:
    """Avro match reports (``mmcross.match_report``) from Kafka topics.

    ``stats`` counts ``messages``, ``counterparts``, ``undecodable``, ``kafka_errors``.
    """

    def __init__(self, properties: Mapping[str, Any], topics: Sequence[str]) -> None:
        from confluent_kafka import Consumer

        self.topics = list(topics)
        self.stats: Counter[str] = Counter()
        self.consumer = Consumer(dict(properties))

    def receive(self, stop: threading.Event,
                deadline: float | None = None) -> Iterator[Received]:
        """Match reports until ``stop`` is set or ``deadline`` (``time.monotonic()``) passes."""
        self.consumer.subscribe(self.topics)
        try:
            while not _done(stop, deadline):
                msg = self.consumer.poll(_POLL_S)
                if msg is None:
                    continue
                where = f"kafka://{msg.topic()}/{msg.partition()}/{msg.offset()}"
                if msg.error() is not None:
                    self.stats["kafka_errors"] += 1
                    log.warning("Kafka error on %s: %s", self.topics, msg.error())
                    continue
                self.stats["messages"] += 1
                try:
                    match = match_from_avro(msg.value() or b"")
                except Exception as exc:  # noqa: BLE001 - any decoding failure: skip it
                    self.stats["undecodable"] += 1
                    log.warning("%s: not an mmcross match report: %s", where, exc)
                    continue
                self.stats["counterparts"] += 1
                yield Received(match, None, where)
        finally:
            self.consumer.close()


# -- handling --------------------------------------------------------------------------------


class CounterpartStorer:
    """Keeps received counterparts: VOEvent files in ``out`` and/or matches in ``store``.

    VOEvent files are named as :class:`mmcross.brokers.sinks.VOEventDirectorySink` names them
    (``<event>_<alert>.xml``, ``...retraction.xml``); a VOEvent received over VTP is written
    as received, a Kafka report as the VOEvent mmcross would have sent. In the store a
    counterpart is saved with :meth:`catalogs.Store.save_matches`, a retraction revokes it
    (:meth:`~catalogs.Store.revoke_matches`) or, when it was never stored, is saved as a
    retracted match.
    """

    def __init__(self, out: str | Path | None = None, store: Any | None = None) -> None:
        self.files = VOEventDirectorySink(out) if out is not None else None
        self.store = store

    def __call__(self, item: Received) -> None:
        match = item.match
        if self.files is not None:
            xml = item.voevent or (retraction_voevent(match) if match.retracted
                                   else counterpart_voevent(match))
            write_atomically(self.files.path_for(match), xml)
        if self.store is not None:
            revoked = match.retracted and self.store.revoke_matches(match.event_id,
                                                                    [match.alert_id])
            if not revoked:  # a counterpart, or the retraction of one never stored
                self.store.save_matches([match])


@dataclass
class SubscriptionSummary:
    """What :func:`subscribe` saw: ``received`` notices, ``accepted`` by the filter,
    ``filtered_out``, and ``handler_errors``."""

    received: int = 0
    accepted: int = 0
    filtered_out: int = 0
    handler_errors: int = 0


def subscribe(source: VTPSubscriber | KafkaSubscriber,
              handlers: Iterable[Callable[[Received], object]], *,
              filter_: SubscriptionFilter | None = None, count: int | None = None,
              timeout: float | None = None,
              stop: threading.Event | None = None) -> SubscriptionSummary:
    """Receive counterpart notices from ``source``, keep those ``filter_`` accepts and hand
    each to every handler, until ``count`` were accepted, ``timeout`` seconds passed or
    ``stop`` is set. A failing handler is logged and counted, never fatal."""
    filter_ = filter_ or SubscriptionFilter()
    stop = stop or threading.Event()
    handlers = list(handlers)
    deadline = None if timeout is None else time.monotonic() + timeout
    summary = SubscriptionSummary()
    if count is not None and count <= 0:
        return summary
    items = source.receive(stop, deadline)
    try:
        for item in items:
            summary.received += 1
            if not filter_.accepts(item.match):
                summary.filtered_out += 1
                log.debug("filtered out %s from %s", item.match.key, item.source)
                continue
            summary.accepted += 1
            for handler in handlers:
                try:
                    handler(item)
                except Exception:  # noqa: BLE001 - one failing output must not stop the rest
                    summary.handler_errors += 1
                    log.exception("handling %s from %s failed", item.match.key, item.source)
            if count is not None and summary.accepted >= count:
                break
    finally:
        items.close()
    return summary


def _done(stop: threading.Event, deadline: float | None) -> bool:
    return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

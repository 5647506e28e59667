"""The observer's side of counterpart notices: receive, filter, print or store them.

Two sources give the same :class:`Received` items:

- :class:`VTPSubscriber`: a VOEvent Transport Protocol subscriber of mmcross's broadcaster
  (:mod:`mmcross.brokers.vtp`): 4-byte big-endian length-framed XML, ``iamalive`` answered with an
  ``iamalive``, every VOEvent acknowledged with an ``ack`` (as Comet's subscriber does), the
  counterpart or retraction VOEvent turned back into a :class:`~mmcross.model.match.Match` from its
  ``What`` Params (:func:`match_from_voevent`); reconnects with back-off.
- :class:`KafkaSubscriber`: Avro match reports (``mmcross.match_report``) from a Kafka topic,
  decoded by :func:`mmcross.brokers.reports.match_from_avro`.

:func:`subscribe` applies a :class:`mmcross.brokers.vtp.SubscriptionFilter` client-side (the same
filter the broadcaster applies server-side), hands each accepted counterpart to handlers
(:class:`CounterpartStorer` writes VOEvent files and/or the catalog store) and stops after a
count, a timeout or a stop request. Printing is the CLI's job (:func:`format_counterpart`).
"""

from __future__ import annotations

import logging
import os
import socket
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
from mmcross.brokers.sinks import VOEventDirectorySink
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.brokers.vtp import SubscriptionFilter
from mmcross.model.errors import BadNoticeError
from mmcross.model.match import Match
from mmcross.vtp.base import LENGTH, frame, safe_xml, transport_message

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/observer"
_POLL_S = 0.5  # socket / consumer poll granularity, seconds (stop and deadline checks)

_INT_FIELDS = {"event_revision", "alert_id"}
_BOOL_FIELDS = {"retracted"}
_FLOAT_FIELDS = {"ra", "dec", "time_offset", "credible_level", "searched_area", "prob_density",
                 "distance_mean", "distance_std", "p_chance"}
_OPTIONAL_FIELDS = {"distance_mean", "distance_std", "retracted"}
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
                values[name] = False if name in _BOOL_FIELDS else None
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


class _ClosedError(Exception):
    """The peer closed the connection."""


class _StopError(Exception):
    """Stop requested or deadline passed."""


class VTPSubscriber:
    """A VTP subscriber of counterpart notices (mmcross's broadcaster, or any VTP broker).

    Args:
        host, port: the broadcaster's address.
        ivorn: our IVORN in ``ack``/``iamalive`` replies.
        max_packet_bytes: larger announced packets drop the connection.
        iamalive_timeout: seconds without any packet before reconnecting (the broadcaster
            sends iamalive every 60 s).
        connect_timeout: seconds per connection attempt.
        backoff_min, backoff_max: reconnect delay bounds, seconds (doubling).

    ``stats`` counts ``connections``, ``connect_failures``, ``packets``, ``iamalive``,
    ``acks_sent``, ``counterparts``, ``not_counterparts``, ``unparsable``, ``oversized``.
    """

    def __init__(self, host: str, port: int, *, ivorn: str = DEFAULT_IVORN,
                 max_packet_bytes: int = 1 << 20, iamalive_timeout: float = 150.0,
                 connect_timeout: float = 10.0, backoff_min: float = 0.5,
                 backoff_max: float = 60.0) -> None:
        self.host, self.port = host, int(port)
        self.ivorn = ivorn
        self.max_packet_bytes = max_packet_bytes
        self.iamalive_timeout = iamalive_timeout
        self.connect_timeout = connect_timeout
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.stats: Counter[str] = Counter()
        self._peer = f"{host}:{port}"

    def receive(self, stop: threading.Event,
                deadline: float | None = None) -> Iterator[Received]:
        """Counterpart notices until ``stop`` is set or ``time.monotonic()`` passes
        ``deadline``; each VOEvent is acknowledged before it is yielded."""
        backoff = self.backoff_min
        while not _done(stop, deadline):
            try:
                sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            except OSError as exc:
                self.stats["connect_failures"] += 1
                log.warning("cannot connect to VTP broadcaster %s (%s); retry in %.1f s",
                            self._peer, exc, backoff)
                if _wait(stop, deadline, backoff):
                    return
                backoff = min(2 * backoff, self.backoff_max)
                continue
            self.stats["connections"] += 1
            log.info("subscribed to VTP broadcaster %s", self._peer)
            packets_before = self.stats["packets"]
            try:
                yield from self._session(sock, stop, deadline)
            finally:
                sock.close()
            if self.stats["packets"] > packets_before:
                backoff = self.backoff_min
            if _wait(stop, deadline, backoff):
                return
            backoff = min(2 * backoff, self.backoff_max)

    def _session(self, sock: socket.socket, stop: threading.Event,
                 deadline: float | None) -> Iterator[Received]:
        sock.settimeout(_POLL_S)
        last_rx = [time.monotonic()]
        try:
            while True:
                (length,) = LENGTH.unpack(self._recv(sock, LENGTH.size, stop, deadline, last_rx))
                if length > self.max_packet_bytes:
                    self.stats["oversized"] += 1
                    log.warning("VTP broadcaster %s announced a %d-byte packet (limit %d): "
                                "reconnecting", self._peer, length, self.max_packet_bytes)
                    return
                payload = self._recv(sock, length, stop, deadline, last_rx)
                self.stats["packets"] += 1
                item = self._handle(sock, payload)
                if item is not None:
                    yield item
        except _ClosedError:
            log.warning("VTP broadcaster %s closed the connection", self._peer)
        except _StopError:
            pass
        except OSError as exc:
            log.warning("VTP connection to %s failed: %s", self._peer, exc)

    def _recv(self, sock: socket.socket, n: int, stop: threading.Event,
              deadline: float | None, last_rx: list[float]) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if _done(stop, deadline):
                raise _StopError
            try:
                chunk = sock.recv(min(n - len(buf), 1 << 16))
            except TimeoutError:
                if time.monotonic() - last_rx[0] > self.iamalive_timeout:
                    log.warning("no packet from %s for %.0f s: reconnecting", self._peer,
                                self.iamalive_timeout)
                    raise _ClosedError from None
                continue
            if not chunk:
                raise _ClosedError
            buf += chunk
            last_rx[0] = time.monotonic()
        return bytes(buf)

    def _handle(self, sock: socket.socket, payload: bytes) -> Received | None:
        try:
            root = safe_xml(payload)
        except (etree.XMLSyntaxError, ValueError) as exc:
            self.stats["unparsable"] += 1
            log.warning("unparsable VTP packet (%d bytes) from %s: %s", len(payload),
                        self._peer, exc)
            return None
        name, role = etree.QName(root).localname, root.get("role", "")
        if name == "Transport":
            if role == "iamalive":
                self.stats["iamalive"] += 1
                sock.sendall(frame(transport_message("iamalive", root.findtext("Origin") or "",
                                                     self.ivorn)))
            else:
                log.warning("unexpected VTP Transport role %r from %s", role, self._peer)
            return None
        ivorn = root.get("ivorn")
        if name != "VOEvent" or not ivorn:
            self.stats["unparsable"] += 1
            log.warning("VTP packet from %s is neither a Transport nor a VOEvent with an "
                        "ivorn (root %s)", self._peer, root.tag)
            return None
        sock.sendall(frame(transport_message("ack", ivorn, self.ivorn)))
        self.stats["acks_sent"] += 1
        try:
            match = match_from_voevent(root, where=f"vtp://{self._peer} {ivorn}")
        except BadNoticeError as exc:
            self.stats["not_counterparts"] += 1
            log.info("%s", exc)
            return None
        self.stats["counterparts"] += 1
        return Received(match, payload, f"vtp://{self._peer} {ivorn}")


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
            path = self.files.path_for(match)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(xml)
            os.replace(tmp, path)
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


def _wait(stop: threading.Event, deadline: float | None, seconds: float) -> bool:
    """Sleep up to ``seconds`` (less if the deadline is nearer); True when we should stop."""
    if deadline is not None:
        seconds = min(seconds, max(0.0, deadline - time.monotonic()))
    return stop.wait(seconds) or _done(stop, deadline)

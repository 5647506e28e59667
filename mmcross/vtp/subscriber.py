"""The VTP subscriber role: connect to a broker, answer iamalive, ack and hand on each VOEvent.

As Comet's ``VOEventSubscriber``: every ``iamalive`` Transport is answered with an iamalive,
every VOEvent with an ``ack`` (never a ``nak``, so an upstream broker keeps us on its list,
VTP note 6.4), and then handed to a :class:`VOEventHandler`. The servers are tried in turn,
reconnecting with a doubling back-off (reset after a connection that brought packets); a
connection silent for ``iamalive_timeout`` seconds is re-opened. The loop runs in its own
thread (:meth:`Subscriber.start`) or the caller's (:meth:`Subscriber.run`) until
:meth:`Subscriber.stop`.

``stats`` counts ``connections``, ``connect_failures``, ``packets``, ``iamalive``,
``authenticate`` (a broker's optional request for filters, left unanswered as Comet's
broadcaster allows), ``voevents`` (acknowledged), ``unexpected_transport``, ``unparsable``,
``refused_doctype``, ``oversized_frames``, ``truncated_frames``, ``timeouts``,
``socket_errors``, ``handler_errors``; a handler may count in the same
:class:`~collections.Counter`.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from mmcross.model.errors import ConfigError
from mmcross.vtp.base import (
    MAX_FRAME_BYTES,
    BadPacketError,
    ConnectionClosedError,
    FramedSocket,
    FrameTooLargeError,
    Packet,
    ack,
    iamalive_reply,
    read_packet,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 8099  # the customary VTP broker port


class VOEventHandler(Protocol):
    """Called with each acknowledged VOEvent and the ``host:port`` it came from."""

    def __call__(self, packet: Packet, peer: str) -> object: ...


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host:port"`` (or ``"host"``, ``"[::1]:port"``) -> ``(host, port)``.

    Raises:
        ConfigError: not ``HOST[:PORT]`` with ``0 < PORT < 65536``.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError as exc:
        raise ConfigError(f"VTP server {text!r}: port is not an integer") from exc
    if not host or not 0 < port < 65536:
        raise ConfigError(f"VTP server {text!r} is not HOST[:PORT] with 0 < PORT < 65536")
    return host, port


class Subscriber:
    """A VTP subscriber of one or more brokers.

    Args:
        servers: ``(host, port)`` pairs tried in turn until one connects.
        handler: receives each VOEvent after its ack (a failing handler is logged and
            counted as ``handler_errors``, never fatal).
        ivorn: our IVORN in ``ack`` and ``iamalive`` replies.
        iamalive_timeout, connect_timeout, backoff_min, backoff_max, max_frame_bytes:
            override the class constants of the same name (upper case) when given.
    """

    IAMALIVE_TIMEOUT = 150.0  # s without any byte before reconnecting (brokers: every 60 s)
    CONNECT_TIMEOUT = 10.0  # s per connection attempt
    BACKOFF_MIN = 1.0  # s, first reconnect delay
    BACKOFF_MAX = 1024.0  # s, reconnect delay cap (doubling)
    MAX_FRAME_BYTES = MAX_FRAME_BYTES  # larger announced frames drop the connection
    POLL = 0.5  # s, how often a blocked read checks the stop event

    def __init__(self, servers: Sequence[tuple[str, int]], handler: VOEventHandler, *,
                 ivorn: str, iamalive_timeout: float | None = None,
                 connect_timeout: float | None = None, backoff_min: float | None = None,
                 backoff_max: float | None = None, max_frame_bytes: int | None = None) -> None:
        if not servers:
            raise ConfigError("a VTP subscriber needs at least one HOST:PORT server")
        self.servers = tuple(servers)
        self.handler = handler
        self.ivorn = ivorn
        self.iamalive_timeout = _given(iamalive_timeout, self.IAMALIVE_TIMEOUT)
        self.connect_timeout = _given(connect_timeout, self.CONNECT_TIMEOUT)
        self.backoff_min = _given(backoff_min, self.BACKOFF_MIN)
        self.backoff_max = _given(backoff_max, self.BACKOFF_MAX)
        self.max_frame_bytes = int(_given(max_frame_bytes, self.MAX_FRAME_BYTES))
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------

    def start(self, name: str = "mmcross-vtp-subscriber") -> Subscriber:
        """Run :meth:`run` in a daemon thread."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop and wait up to ``timeout`` seconds for its thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Connect, serve, reconnect with back-off, until stopped (this thread)."""
        backoff = self.backoff_min
        for host, port in itertools.cycle(self.servers):
            if self._stop.is_set():
                return
            peer = f"{host}:{port}"
            try:
                sock = socket.create_connection((host, port), self.connect_timeout)
            except OSError as exc:
                self.stats["connect_failures"] += 1
                log.warning("cannot connect to VTP server %s (%s); retry in %.1f s", peer,
                            exc, backoff)
            else:
                self.stats["connections"] += 1
                log.info("connected to VTP server %s", peer)
                packets_before = self.stats["packets"]
                with sock:
                    self._session(FramedSocket(sock, peer,
                                               max_frame_bytes=self.max_frame_bytes,
                                               idle_timeout=self.iamalive_timeout,
                                               stop=self._stop, poll=self.POLL))
                if self.stats["packets"] > packets_before:
                    backoff = self.backoff_min
                if self._stop.is_set():
                    return
                log.info("reconnecting to VTP in %.1f s", backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(2 * backoff, self.backoff_max)

    # -- one connection ----------------------------------------------------------------

    def _session(self, conn: FramedSocket) -> None:
        try:
            while True:
                payload = conn.read_frame()
                self.stats["packets"] += 1
                self._on_packet(conn, payload)
        except ConnectionClosedError as exc:
            if exc.partial and exc.reason != "stopped":
                self.stats["truncated_frames"] += 1
                log.warning("VTP peer %s: %s inside a frame", conn.peer, exc.reason)
            elif exc.reason == "silent":
                self.stats["timeouts"] += 1
                log.warning("no packet from VTP peer %s for %.0f s: reconnecting", conn.peer,
                            self.iamalive_timeout)
            elif exc.reason == "closed":
                log.info("VTP peer %s closed the connection", conn.peer)
        except FrameTooLargeError as exc:
            self.stats["oversized_frames"] += 1
            log.warning("%s: dropping the connection", exc)
        except OSError as exc:
            self.stats["socket_errors"] += 1
            log.warning("VTP connection to %s failed: %s", conn.peer, exc)

    def _on_packet(self, conn: FramedSocket, payload: bytes) -> None:
        try:
            packet = read_packet(payload, conn.peer)
        except BadPacketError as exc:
            self.stats["unparsable" if exc.reason == "not_voevent" else exc.reason] += 1
            log.warning("%s (%d bytes)", exc, len(payload))
            return
        if packet.kind == "Transport":
            if packet.role == "iamalive":
                self.stats["iamalive"] += 1
                conn.send(iamalive_reply(packet, self.ivorn))
            elif packet.role == "authenticate":  # Comet's broker asks for filters: none
                self.stats["authenticate"] += 1
                log.debug("VTP peer %s asked to authenticate; no filters to declare",
                          conn.peer)
            else:
                self.stats["unexpected_transport"] += 1
                log.warning("unexpected VTP Transport role %r from %s", packet.role, conn.peer)
            return
        conn.send(ack(packet.ivorn, self.ivorn))
        self.stats["voevents"] += 1
        try:
            self.handler(packet, conn.peer)
        except Exception:  # noqa: BLE001 - a failing handler must not stop the subscriber
            self.stats["handler_errors"] += 1
            log.exception("handler of VOEvent %s from %s failed", packet.ivorn, conn.peer)


def _given(value: float | None, default: float) -> float:
    return float(default if value is None else value)

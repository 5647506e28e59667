"""GCN Classic over the VOEvent Transport Protocol (VTP): a subscriber feeding ``parse_notice``.

The wire protocol is the one of ``gcn.voeventclient.listen`` (pygcn), the client GCN Classic
documents: 4-byte big-endian length-prefixed XML packets; a ``Transport`` packet of role
``iamalive`` is answered with an ``iamalive`` Transport, a VOEvent with an ``ack`` (as Comet's
subscriber does, never a ``nak``, so an upstream broker keeps us on its list). pygcn's
``listen`` itself is not used because it cannot be stopped, allocates the length announced by
the peer before reading it (a 4 GB prefix allocates 4 GB), parses with entity resolution on and
gives no hook for counting refusals; this client keeps its behaviour and adds those.

Each VOEvent received is parsed by :func:`mmcross.listeners.parse_notice` and the resulting
:class:`~mmcross.model.event.Event` is handed to a callback from the listener's own thread, holding
``lock`` when one is given (share it with whatever calls the engine's ``on_alerts``), or pass
``queue.Queue.put`` as the callback and drain the queue in the engine's thread. Parse errors
are logged and counted in :attr:`VTPListener.stats`, never fatal.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from lxml import etree

from mmcross.listeners.dispatch import parse_notice
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError, MmcrossError, NotAnEventError
from mmcross.model.event import Event
from mmcross.vtp.base import LENGTH, frame, safe_xml, transport_message

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/vtp-listener"
DEFAULT_PORT = 8099


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host:port"`` (or ``"host"``, ``"[::1]:port"``) -> ``(host, port)``."""
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


@dataclass(frozen=True)
class VTPListenerSettings:
    """How to reach GCN Classic over VTP.

    Attributes:
        servers: ``(host, port)`` pairs tried in turn until one connects.
        ivorn: our IVORN in ``ack``/``iamalive`` replies.
        iamalive_timeout: seconds without any packet after which the connection is
            assumed dead and re-opened (GCN sends iamalive every 60 s).
        backoff_min, backoff_max: reconnect delay, seconds, doubling after each failure,
            reset after a connection that received packets.
        max_packet_bytes: larger announced packets are refused and the connection dropped.
        connect_timeout: seconds per connection attempt.
    """

    servers: tuple[tuple[str, int], ...]
    ivorn: str = DEFAULT_IVORN
    iamalive_timeout: float = 150.0
    backoff_min: float = 1.0
    backoff_max: float = 1024.0
    max_packet_bytes: int = 1 << 20
    connect_timeout: float = 10.0

    @classmethod
    def from_config(cls, config: Config, servers: Iterable[str] | None = None,
                    **overrides: Any) -> VTPListenerSettings:
        """From ``[vtp.listen]``; ``servers`` (``"HOST:PORT"`` strings) replace the config's."""
        texts = list(servers) if servers is not None else list(
            config.get("vtp.listen.servers", []))
        values: dict[str, Any] = {
            "servers": tuple(parse_host_port(s) for s in texts),
            "ivorn": str(config.get("vtp.listen.ivorn", DEFAULT_IVORN)),
            "iamalive_timeout": float(config.get("vtp.listen.iamalive_timeout", 150.0)),
            "backoff_min": float(config.get("vtp.listen.backoff_min", 1.0)),
            "backoff_max": float(config.get("vtp.listen.backoff_max", 1024.0)),
            "max_packet_bytes": int(config.get("vtp.listen.max_packet_bytes", 1 << 20)),
        }
        values.update(overrides)
        return cls(**values)


class _ClosedError(Exception):
    """The peer closed the connection; ``partial`` when it did so inside a frame."""

    def __init__(self, partial: bool) -> None:
        super().__init__("connection closed by peer" + (" mid-frame" if partial else ""))
        self.partial = partial


class _SilentError(Exception):
    """No packet for longer than the iamalive timeout."""


class _StoppedError(Exception):
    """stop() was called."""


class VTPListener:
    """A VTP subscriber: connects, answers iamalive, acks VOEvents, parses them.

    Args:
        settings: servers and timeouts.
        callback: called with each parsed :class:`Event` (e.g. ``engine.on_notice``).
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`
            (:func:`mmcross.model.config.notice_options`).
        lock: held around each ``callback`` call when given.

    ``stats`` counts ``connections``, ``packets``, ``iamalive``, ``events``, ``not_events``
    (test role, GCN iamalive notices...), ``bad_notices``, ``callback_errors``,
    ``unparsable``, ``refused_doctype``, ``oversized_frames``, ``truncated_frames``,
    ``timeouts``, ``connect_failures``.
    """

    def __init__(self, settings: VTPListenerSettings, callback: Callable[[Event], object],
                 *, options: dict[str, Any] | None = None,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        if not settings.servers:
            raise ConfigError("VTP listener needs at least one HOST:PORT server "
                              "(vtp.listen.servers or --gcn-vtp)")
        self.settings = settings
        self.callback = callback
        self.options = dict(options or {})
        self.lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._last_rx = 0.0

    @classmethod
    def from_config(cls, config: Config, callback: Callable[[Event], object], *,
                    servers: Sequence[str] | None = None,
                    lock: AbstractContextManager[Any] | None = None,
                    **overrides: Any) -> VTPListener:
        """Settings from ``[vtp.listen]``, parse options from :func:`notice_options`."""
        return cls(VTPListenerSettings.from_config(config, servers, **overrides), callback,
                   options=notice_options(config), lock=lock)

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> VTPListener:
        """Run :meth:`run` in a daemon thread."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="mmcross-vtp-listener",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    close = stop

    def run(self) -> None:
        """Connect, serve, reconnect with back-off, until :meth:`stop`."""
        backoff = self.settings.backoff_min
        for host, port in itertools.cycle(self.settings.servers):
            if self._stop.is_set():
                return
            try:
                sock = socket.create_connection((host, port), self.settings.connect_timeout)
            except OSError as exc:
                self.stats["connect_failures"] += 1
                log.warning("cannot connect to VTP server %s:%d (%s); retry in %.1f s",
                            host, port, exc, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(2 * backoff, self.settings.backoff_max)
                continue
            self.stats["connections"] += 1
            log.info("connected to VTP server %s:%d", host, port)
            packets_before = self.stats["packets"]
            try:
                self._session(sock, f"{host}:{port}")
            finally:
                sock.close()
            if self.stats["packets"] > packets_before:
                backoff = self.settings.backoff_min
            if self._stop.is_set():
                return
            log.info("reconnecting to VTP in %.1f s", backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(2 * backoff, self.settings.backoff_max)

    # -- one connection ----------------------------------------------------------------

    def _session(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(min(0.5, self.settings.iamalive_timeout))
        self._last_rx = time.monotonic()
        try:
            while True:
                (length,) = LENGTH.unpack(self._recv_exact(sock, LENGTH.size, False))
                if length > self.settings.max_packet_bytes:
                    self.stats["oversized_frames"] += 1
                    log.warning("VTP peer %s announced a %d-byte packet (limit %d): "
                                "dropping the connection", peer, length,
                                self.settings.max_packet_bytes)
                    return
                payload = self._recv_exact(sock, length, True)
                self.stats["packets"] += 1
                self._handle(sock, peer, payload)
        except _ClosedError as exc:
            if exc.partial:
                self.stats["truncated_frames"] += 1
                log.warning("VTP peer %s closed the connection inside a frame", peer)
            else:
                log.info("VTP peer %s closed the connection", peer)
        except _SilentError:
            self.stats["timeouts"] += 1
            log.warning("no packet from VTP peer %s for %.0f s: reconnecting", peer,
                        self.settings.iamalive_timeout)
        except _StoppedError:
            pass
        except OSError as exc:
            self.stats["socket_errors"] += 1
            log.warning("VTP connection to %s failed: %s", peer, exc)

    def _recv_exact(self, sock: socket.socket, n: int, in_frame: bool) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if self._stop.is_set():
                raise _StoppedError
            try:
                chunk = sock.recv(min(n - len(buf), 1 << 16))
            except TimeoutError:
                if time.monotonic() - self._last_rx > self.settings.iamalive_timeout:
                    raise _SilentError from None
                continue
            if not chunk:
                raise _ClosedError(in_frame or bool(buf))
            buf += chunk
            self._last_rx = time.monotonic()
        return bytes(buf)

    def _handle(self, sock: socket.socket, peer: str, payload: bytes) -> None:
        try:
            root = safe_xml(payload)
        except ValueError:
            self.stats["refused_doctype"] += 1
            log.warning("refused a VTP packet with a DOCTYPE from %s", peer)
            return
        except etree.XMLSyntaxError as exc:
            self.stats["unparsable"] += 1
            log.warning("unparsable VTP packet (%d bytes) from %s: %s", len(payload), peer, exc)
            return
        name = etree.QName(root).localname
        role = root.get("role", "")
        if name == "Transport":
            if role == "iamalive":
                self.stats["iamalive"] += 1
                origin = root.findtext("Origin") or ""
                sock.sendall(frame(transport_message("iamalive", origin,
                                                      self.settings.ivorn)))
            else:
                self.stats["unexpected_transport"] += 1
                log.warning("unexpected VTP Transport role %r from %s", role, peer)
            return
        if name != "VOEvent" or not root.get("ivorn"):
            self.stats["unparsable"] += 1
            log.warning("VTP packet from %s is neither a Transport nor a VOEvent with an "
                        "ivorn (root %s)", peer, root.tag)
            return
        ivorn = root.get("ivorn")
        sock.sendall(frame(transport_message("ack", ivorn, self.settings.ivorn)))
        try:
            event = parse_notice(payload, source=f"vtp://{peer} {ivorn}", **self.options)
        except NotAnEventError as exc:
            self.stats["not_events"] += 1
            log.debug("VTP packet is not an event: %s", exc)
            return
        except MmcrossError as exc:
            self.stats["bad_notices"] += 1
            log.warning("refused VTP notice: %s", exc)
            return
        self.stats["events"] += 1
        try:
            with self.lock:
                self.callback(event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the listener
            self.stats["callback_errors"] += 1
            log.exception("VTP notice callback failed on %s", event.event_id)



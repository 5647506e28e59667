"""The VTP receiver role: authors submit VOEvents, each answered with an ack or a nak.

As Comet's ``VOEventReceiver``: an author connects and sends length-framed VOEvents; each one
goes through a pluggable :class:`SubmissionHandler` (the validator: authentication, schema,
whatever the application needs) and is answered with a ``Transport`` ``ack``, or a ``nak``
whose ``Meta/Result`` is ``"<reason>: <text>"``. Unlike Comet's one-shot receiver a connection
may carry several submissions (a one-shot sender such as ``comet-sendvo`` simply closes after
its answer); it is closed after ``idle_timeout`` seconds of silence.

The receiver's own limits, checked before the handler, each refusal logged with the peer and
counted in :attr:`Receiver.stats` under its reason:

1. a frame above ``max_frame_bytes``: nak ``oversized_frames``, connection closed (the
   announced payload is never waited for nor allocated);
2. a per-connection token bucket over all frames, before any parsing: nak ``rate_limited``;
   ``max_refusals`` refusals in a row close the connection;
3. an XML frame goes through :func:`~mmcross.vtp.base.read_packet` (no entities, no DTD, no
   network): nak ``refused_doctype``, ``unparsable`` or ``not_voevent``; an ``iamalive``
   Transport is answered in kind. A frame that is not XML at all goes to the handler as is
   (``packet`` None), which may accept another format or refuse it;
4. at most ``max_connections`` connections, ``max_connections_per_host`` per address, one
   thread each, so that one flooding peer cannot starve another.

``stats`` also counts ``connections``, ``refused_connections``, ``frames``, ``accepted``,
``refused`` (every refusal), ``truncated_frames``, ``handler_errors``, ``socket_errors``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mmcross.model.errors import ConfigError, RefusedSubmissionError
from mmcross.vtp.base import (
    MAX_FRAME_BYTES,
    BadPacketError,
    ConnectionClosedError,
    FramedSocket,
    FrameTooLargeError,
    Packet,
    ack,
    iamalive_reply,
    looks_like_xml,
    nak,
    read_packet,
)

log = logging.getLogger(__name__)


class SubmissionRefusedError(RefusedSubmissionError):
    """A refused submission, answered with a nak.

    Attributes:
        reason: short machine-readable reason, also the stats counter name.
        origin: the IVORN (or other id) being refused, ``""`` when unknown.
        reply: the text the submitter reads after ``"<reason>: "`` in the nak (by default the
            message; shorter when the message would tell an attacker too much).
    """

    def __init__(self, reason: str, message: str, origin: str = "",
                 reply: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.origin = reason, origin
        self.reply = message if reply is None else reply


class TokenBucket:
    """A token bucket: ``rate`` tokens per second up to ``burst``; thread-safe.

    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1:
            raise ConfigError(f"token bucket needs rate >= 0 /s and burst >= 1, got "
                              f"{rate!r}, {burst!r}")
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available; False (nothing taken) otherwise."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False


@dataclass(frozen=True)
class Submission:
    """One submitted frame.

    Attributes:
        payload: the frame as received.
        packet: the parsed VOEvent, or None when the frame is not XML.
        peer: ``host:port`` of the submitter.
        host: the submitter's IP address.
    """

    payload: bytes
    packet: Packet | None
    peer: str
    host: str


class SubmissionHandler(Protocol):
    """Validates and takes one submission (any thread); returns the ``Origin`` to ack.

    Raises :class:`SubmissionRefusedError` to nak it; any other exception naks it as an
    internal error (the submitter may retry).
    """

    def __call__(self, submission: Submission) -> str: ...


class Receiver:
    """A VTP submission receiver in background threads.

    Args:
        handler: validates and takes each submission.
        host, port: listening address (port 0 = any free port; see :attr:`port`).
        ivorn: our IVORN in ack/nak replies.
        idle_timeout, max_frame_bytes, rate, burst, max_refusals, max_connections,
        max_connections_per_host: limits, defaults the class constants (upper case).
    """

    IDLE_TIMEOUT = 20.0  # s of silence (also inside a frame) before a connection is closed
    MAX_FRAME_BYTES = MAX_FRAME_BYTES  # bytes, largest frame read at all
    RATE = 5.0  # frames per second per connection
    BURST = 20.0  # frames, per-connection burst
    MAX_REFUSALS = 50  # consecutive refusals that close a connection
    MAX_CONNECTIONS = 64
    MAX_CONNECTIONS_PER_HOST = 8
    ACCEPT_POLL = 0.2  # s, how often the accept loop checks for stop

    def __init__(self, handler: SubmissionHandler, *, host: str = "127.0.0.1",
                 port: int = 8098, ivorn: str, idle_timeout: float = IDLE_TIMEOUT,
                 max_frame_bytes: int = MAX_FRAME_BYTES, rate: float = RATE,
                 burst: float = BURST, max_refusals: int = MAX_REFUSALS,
                 max_connections: int = MAX_CONNECTIONS,
                 max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST) -> None:
        self.handler = handler
        self.host, self.requested_port, self.ivorn = host, port, ivorn
        self.idle_timeout, self.max_frame_bytes = idle_timeout, max_frame_bytes
        self.rate, self.burst, self.max_refusals = rate, burst, max_refusals
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, str] = {}
        self._conns_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        return self._server.getsockname()[1] if self._server else self.requested_port

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key`` (any thread)."""
        with self._stats_lock:
            self.stats[key] += n

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Receiver:
        """Bind, listen and accept in a daemon thread.

        Raises:
            OSError: the address cannot be listened on.
        """
        server = socket.create_server((self.host, self.requested_port), backlog=64)
        server.settimeout(self.ACCEPT_POLL)
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="mmcross-vtp-receiver")
        self._thread.start()
        log.info("VTP receiver on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, wait for the accept thread."""
        self._stop.set()
        with self._conns_lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._server is not None:
            self._server.close()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            host = str(addr[0])
            with self._conns_lock:
                per_host = sum(1 for h in self._conns.values() if h == host)
                full = (len(self._conns) >= self.max_connections
                        or per_host >= self.max_connections_per_host)
                if not full:
                    self._conns[conn] = host
            if full:
                self.count("refused_connections")
                log.warning("refused connection from %s: too many connections", host)
                conn.close()
                continue
            self.count("connections")
            peer = f"{host}:{addr[1]}"
            threading.Thread(target=self._serve, args=(conn, peer, host), daemon=True,
                             name=f"mmcross-vtp-receiver-{peer}").start()

    # -- one connection ----------------------------------------------------------------

    def _serve(self, sock: socket.socket, peer: str, host: str) -> None:
        conn = FramedSocket(sock, peer, max_frame_bytes=self.max_frame_bytes,
                            idle_timeout=self.idle_timeout)
        bucket = TokenBucket(self.rate, self.burst)
        refusals = 0
        try:
            while not self._stop.is_set():
                try:
                    payload = conn.read_frame()
                except FrameTooLargeError as exc:
                    self.count("frames")
                    self._refuse(conn, SubmissionRefusedError(
                        "oversized_frames", f"frame of {exc.length} bytes exceeds the "
                        f"receiver's limit of {exc.limit}"))
                    return
                self.count("frames")
                if not bucket.take():
                    self._refuse(conn, SubmissionRefusedError(
                        "rate_limited", "rate limit exceeded on this connection"))
                    refusals += 1
                else:
                    refusals = 0 if self._handle(conn, host, payload) else refusals + 1
                if refusals >= self.max_refusals:
                    log.warning("closing submission connection from %s after %d refusals in "
                                "a row", peer, refusals)
                    return
        except ConnectionClosedError as exc:
            if exc.partial:
                self.count("truncated_frames")
                self.count("refused")
                log.warning("submission from %s truncated (peer %s inside a frame)", peer,
                            exc.reason)
            else:
                log.debug("submission connection from %s ended (%s)", peer, exc.reason)
        except OSError as exc:
            self.count("socket_errors")
            log.warning("submission connection from %s failed: %s", peer, exc)
        finally:
            with self._conns_lock:
                self._conns.pop(sock, None)
            sock.close()

    def _handle(self, conn: FramedSocket, host: str, payload: bytes) -> bool:
        """Check one frame and pass it to the handler; True when accepted."""
        origin = ""
        try:
            packet = None
            if looks_like_xml(payload):
                packet = read_packet(payload, conn.peer)
                if packet.kind == "Transport":
                    if packet.role != "iamalive":
                        raise SubmissionRefusedError(
                            "not_voevent", f"unexpected Transport role {packet.role!r}")
                    conn.send(iamalive_reply(packet, self.ivorn))
                    return True
                origin = packet.ivorn
            origin = self.handler(Submission(payload, packet, conn.peer, host))
        except BadPacketError as exc:
            self._refuse(conn, SubmissionRefusedError(exc.reason, exc.detail, origin))
            return False
        except SubmissionRefusedError as exc:
            exc.origin = exc.origin or origin
            self._refuse(conn, exc)
            return False
        except Exception:  # noqa: BLE001 - a failing handler must not stop the receiver
            self.count("handler_errors")
            log.exception("handling a submission from %s failed", conn.peer)
            with contextlib.suppress(OSError):
                conn.send(nak(origin, self.ivorn, "internal error: not accepted, retry later"))
            return False
        self.count("accepted")
        conn.send(ack(origin, self.ivorn))
        return True

    def _refuse(self, conn: FramedSocket, exc: SubmissionRefusedError) -> None:
        self.count(exc.reason)
        self.count("refused")
        log.warning("refused submission %sfrom %s: %s",
                    f"{exc.origin} " if exc.origin else "", conn.peer, exc)
        with contextlib.suppress(OSError):  # the peer may already be gone
            conn.send(nak(exc.origin or "unknown", self.ivorn, f"{exc.reason}: {exc.reply}"))

"""VTP submission receiver: partners push VOEvents in, each answered with ack or nak.

The receiver role of the VOEvent Transport Protocol (as Comet's ``VOEventReceiver``): a partner
connects and sends 4-byte big-endian length-framed VOEvents; each is answered with a
``Transport`` ``ack``, or a ``nak`` whose ``Meta/Result`` says why. Unlike Comet's one-shot
receiver the connection may carry several submissions (a one-shot sender such as
``comet-sendvo`` simply closes after its answer); it is closed after ``idle_timeout`` seconds of
silence.

VTP has no authentication; the scheme (see :mod:`mmcross.listeners.partners`) is: the VOEvent's
IVORN authority must be registered by a partner AND the packet carries that partner's token in
``<Param name="mmcross_token" value="..."/>``. A per-packet credential (rather than a first
"authenticate" frame) works with every stock VTP sender, survives relays, and lets one
connection never be half-trusted. The Param is stripped before the notice is parsed, stored
or re-broadcast. A frame may also hold a GCN-unified-schema JSON notice (a mmcross extension
of VTP) carrying ``"mmcross_partner": NAME`` and ``"mmcross_token": TOKEN`` at its top level
(both removed before parsing); its ack/nak ``Origin`` is ``json:<partner>:<id>``.

Checks, in order, each refusal logged with the peer and counted in :attr:`stats`:

1. frame length above ``max_frame_bytes``: nak, connection closed (payload never read);
2. per-connection token bucket (all frames, before any parsing): nak ``rate_limited``;
   ``max_refusals`` refusals in a row close the connection;
3. XML parsed by :func:`mmcross.vtp.base.safe_xml` (no entities, no DTD, no network;
   a DOCTYPE is refused): nak;
4. credential (authority + token): nak ``authentication failed`` (the same text for unknown
   authority and wrong token), nothing reaches the callback;
5. the partner's own size cap, formats and token bucket;
6. :func:`mmcross.listeners.parse_notice` (the schema check): nak with the parser's message.

Accepted events get ``source = "partner:<name> vtp://<host:port> <ivorn>"``, are recorded in
the :class:`~mmcross.listeners.partners.PartnerRegistry` (for the partner's counterpart
subscription)
and handed to ``callback`` (e.g. ``engine.on_notice``) under ``lock``; the ack is sent once the
callback returned. Connections are handled by one thread each, at most ``max_connections`` in
all and ``max_connections_per_host`` per address, so one flooding peer cannot starve another.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from lxml import etree

from mmcross.listeners.dispatch import parse_notice
from mmcross.listeners.partners import (
    PARTNER_KEY,
    TOKEN_PARAM,
    Partner,
    PartnerRegistry,
    SubmissionRefusedError,
    TokenBucket,
    sniff_format,
)
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import MmcrossError, NotAnEventError
from mmcross.model.event import Event
from mmcross.vtp.base import LENGTH, frame, safe_xml, transport_message

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/receiver"


def nak_message(origin: str, response: str, result: str) -> bytes:
    """A ``Transport`` nak with ``Meta/Result`` = ``result`` (as Comet's ``Nak``)."""
    root = etree.fromstring(transport_message("nak", origin, response))
    meta = etree.SubElement(root, "Meta")
    etree.SubElement(meta, "Result").text = result
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def ack_message(origin: str, response: str) -> bytes:
    """A ``Transport`` ack of the VOEvent ``origin``."""
    return transport_message("ack", origin, response)


@dataclass(frozen=True)
class ReceiverSettings:
    """Where and how to receive partner submissions.

    Attributes:
        host, port: listening address (port 0 = any free port; see :attr:`VTPReceiver.port`).
        ivorn: our IVORN in ack/nak replies.
        max_frame_bytes: largest frame read at all (bytes); partners have smaller caps.
        idle_timeout: seconds of silence (also inside a frame) before a connection is closed.
        rate, burst: per-connection token bucket of frames (per second, burst size).
        max_refusals: consecutive refused frames after which the connection is closed.
        max_connections, max_connections_per_host: concurrent connection limits.
    """

    host: str = "127.0.0.1"
    port: int = 8098
    ivorn: str = DEFAULT_IVORN
    max_frame_bytes: int = 1 << 20
    idle_timeout: float = 20.0
    rate: float = 5.0
    burst: float = 20.0
    max_refusals: int = 50
    max_connections: int = 64
    max_connections_per_host: int = 8

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> ReceiverSettings:
        """From ``[submit.vtp]``; keyword overrides (e.g. CLI ``port``) win."""
        section = config.get("submit.vtp", {}) or {}
        values = {k: section[k] for k in cls.__dataclass_fields__ if k in section}
        values.update(overrides)
        return cls(**values)


class _TruncatedError(Exception):
    """The peer closed or went silent inside a frame."""


class _ClosedError(Exception):
    """The peer closed between frames."""


class VTPReceiver:
    """A VTP submission receiver in background threads.

    Args:
        settings: address and limits.
        registry: the partners.
        callback: called with each accepted :class:`Event` (e.g. ``engine.on_notice``).
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`.
        lock: held around each ``callback`` call when given.

    ``stats`` counts ``connections``, ``refused_connections``, ``frames``, ``accepted``,
    ``refused`` (all refusals) and one counter per refusal reason: ``oversized_frames``,
    ``truncated_frames``, ``rate_limited``, ``refused_doctype``, ``unparsable``,
    ``not_voevent``, ``unknown_partner``, ``bad_credential``, ``host_not_allowed``,
    ``oversized``, ``format_not_allowed``, ``bad_notice``, ``not_an_event``,
    ``callback_errors``.
    """

    def __init__(self, settings: ReceiverSettings, registry: PartnerRegistry,
                 callback: Callable[[Event], object], *, options: dict[str, Any] | None = None,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.callback = callback
        self.options = dict(options or {})
        self.lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, str] = {}
        self._conns_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, callback: Callable[[Event], object], *,
                    registry: PartnerRegistry | None = None,
                    lock: AbstractContextManager[Any] | None = None,
                    **overrides: Any) -> VTPReceiver:
        return cls(ReceiverSettings.from_config(config, **overrides),
                   registry if registry is not None else PartnerRegistry.from_config(config),
                   callback, options=notice_options(config), lock=lock)

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        return self._server.getsockname()[1] if self._server else self.settings.port

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> VTPReceiver:
        """Bind, listen and accept in a daemon thread."""
        server = socket.create_server((self.settings.host, self.settings.port), backlog=64)
        server.settimeout(0.2)
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="mmcross-vtp-receiver")
        self._thread.start()
        log.info("VTP submission receiver on %s:%d", self.settings.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, wait for the accept thread."""
        self._stop.set()
        with self._conns_lock:
            for conn in list(self._conns):
                with _suppress_os():
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._server is not None:
            self._server.close()

    close = stop

    def __enter__(self) -> VTPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
                full = (len(self._conns) >= self.settings.max_connections
                        or per_host >= self.settings.max_connections_per_host)
                if not full:
                    self._conns[conn] = host
            if full:
                self.count("refused_connections")
                log.warning("refused connection from %s: too many connections", host)
                conn.close()
                continue
            self.count("connections")
            threading.Thread(target=self._serve, args=(conn, f"{host}:{addr[1]}", host),
                             daemon=True, name=f"mmcross-vtp-submit-{host}:{addr[1]}").start()

    # -- one connection ----------------------------------------------------------------

    def _serve(self, conn: socket.socket, peer: str, host: str) -> None:
        conn.settimeout(self.settings.idle_timeout)
        bucket = TokenBucket(self.settings.rate, self.settings.burst)
        refusals = 0
        try:
            while not self._stop.is_set():
                (length,) = LENGTH.unpack(self._recv_exact(conn, LENGTH.size, False))
                self.count("frames")
                if length > self.settings.max_frame_bytes:
                    self._refuse(conn, peer, "", SubmissionRefusedError(
                        "oversized_frames", f"frame of {length} bytes exceeds the receiver's "
                        f"limit of {self.settings.max_frame_bytes}"))
                    return
                payload = self._recv_exact(conn, length, True)
                if not bucket.take():
                    self._refuse(conn, peer, "", SubmissionRefusedError(
                        "rate_limited", "rate limit exceeded on this connection"))
                    refusals += 1
                else:
                    refusals = 0 if self._handle(conn, peer, host, payload) else refusals + 1
                if refusals >= self.settings.max_refusals:
                    log.warning("closing submission connection from %s after %d refusals in "
                                "a row", peer, refusals)
                    return
        except _TruncatedError:
            self.count("truncated_frames")
            self.count("refused")
            log.warning("submission from %s truncated (peer closed or silent inside a frame)",
                        peer)
        except _ClosedError:
            log.debug("submission connection from %s closed", peer)
        except OSError as exc:
            self.count("socket_errors")
            log.warning("submission connection from %s failed: %s", peer, exc)
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
            conn.close()

    def _recv_exact(self, conn: socket.socket, n: int, in_frame: bool) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = conn.recv(min(n - len(buf), 1 << 16))
            except TimeoutError:
                if in_frame or buf:
                    raise _TruncatedError from None
                raise _ClosedError from None
            if not chunk:
                if in_frame or buf:
                    raise _TruncatedError
                raise _ClosedError
            buf += chunk
        return bytes(buf)

    def _refuse(self, conn: socket.socket, peer: str, ivorn: str,
                exc: SubmissionRefusedError) -> None:
        self.count(exc.reason)
        self.count("refused")
        log.warning("refused submission %sfrom %s: %s", f"{ivorn} " if ivorn else "", peer, exc)
        public = "authentication failed" if exc.reason in (
            "unknown_partner", "bad_credential", "host_not_allowed") else str(exc)
        with _suppress_os():
            conn.sendall(frame(nak_message(ivorn or "unknown", self.settings.ivorn,
                                           f"{exc.reason}: {public}")))

    def _handle(self, conn: socket.socket, peer: str, host: str, payload: bytes) -> bool:
        """Check, parse and pass on one frame; True when accepted."""
        origin = ""
        try:
            if sniff_format(payload) == "json":
                partner, clean, origin = self._check_json(payload, host)
            else:
                root = _parse(payload)
                name = etree.QName(root).localname
                if name == "Transport":
                    if root.get("role") == "iamalive":
                        conn.sendall(frame(transport_message(
                            "iamalive", root.findtext("Origin") or "", self.settings.ivorn)))
                        return True
                    raise SubmissionRefusedError(
                        "not_voevent", f"unexpected Transport role {root.get('role')!r}")
                origin = root.get("ivorn") or ""
                if name != "VOEvent" or not origin:
                    raise SubmissionRefusedError(
                        "not_voevent", f"root <{name}> is not a VOEvent with an ivorn")
                partner = self.registry.authenticate_ivorn(origin, _pop_token(root), host)
                clean = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
            partner.check_payload(payload)
            if not partner.bucket.take():
                raise SubmissionRefusedError(
                    "rate_limited", f"rate limit of partner {partner.name!r} exceeded")
            source = f"partner:{partner.name} vtp://{peer} {origin}"
            try:
                event = parse_notice(clean, source=source, **self.options)
            except NotAnEventError as exc:
                raise SubmissionRefusedError("not_an_event", str(exc)) from exc
            except MmcrossError as exc:
                raise SubmissionRefusedError("bad_notice", str(exc)) from exc
        except SubmissionRefusedError as exc:
            self._refuse(conn, peer, origin, exc)
            return False
        try:
            with self.lock:
                self.callback(event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the receiver
            self.count("callback_errors")
            log.exception("submission callback failed on %s from %s", event.event_id, peer)
            conn.sendall(frame(nak_message(origin, self.settings.ivorn,
                                           "internal error: not accepted, retry later")))
            return False
        self.registry.record_event(partner.name, event.event_id)
        self.count("accepted")
        log.info("accepted %s (%s) from partner %s at %s", event.event_id, origin, partner.name,
                 peer)
        conn.sendall(frame(ack_message(origin, self.settings.ivorn)))
        return True


    def _check_json(self, payload: bytes, host: str) -> tuple[Partner, bytes, str]:
        """Authenticate a JSON submission; (partner, JSON without credentials, origin)."""
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SubmissionRefusedError("unparsable", f"malformed JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise SubmissionRefusedError("unparsable", "JSON submission is not an object")
        name, token = doc.pop(PARTNER_KEY, None), doc.pop(TOKEN_PARAM, None)
        partner = self.registry.authenticate_token(str(name or ""), token, host)
        origin = f"json:{partner.name}:{doc.get('id', doc.get('trigger_time', ''))}"
        return partner, json.dumps(doc).encode(), origin


def _parse(payload: bytes) -> Any:
    try:
        return safe_xml(payload)
    except ValueError as exc:
        raise SubmissionRefusedError("refused_doctype", "XML with a DOCTYPE (entity "
                                "declarations) is refused") from exc
    except etree.XMLSyntaxError as exc:
        if b"<!DOCTYPE" in payload:  # e.g. an undeclared (external) entity in an attribute
            raise SubmissionRefusedError("refused_doctype", "XML with a DOCTYPE (entity "
                                         f"declarations) is refused: {exc}") from exc
        raise SubmissionRefusedError("unparsable", f"not well-formed XML: {exc}") from exc


def _pop_token(root: Any) -> str | None:
    """Remove every ``mmcross_token`` Param from the tree; the first one's value."""
    params = [p for p in root.iter("{*}Param") if p.get("name") == TOKEN_PARAM]
    for param in params:
        param.getparent().remove(param)
    return params[0].get("value") if params else None


def _suppress_os() -> contextlib.suppress:
    """Ignore OSError (the peer may already be gone when we answer)."""
    return contextlib.suppress(OSError)

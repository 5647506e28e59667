"""The VOEvent Transport Protocol wire format and connection handling, shared by every role.

VTP (Swinbank 2012; Comet is the reference implementation) sends XML documents framed by a
4-byte big-endian length. Besides VOEvents, peers exchange ``Transport`` documents of role
``iamalive``, ``ack`` and ``nak``. Here, once each:

* framing: :func:`frame` and :class:`FrameDecoder`, a sans-IO decoder (as Twisted's
  ``Int32StringReceiver`` under Comet) that refuses a length prefix above its cap before
  allocating or reading the payload; the blocking roles read through :class:`FramedSocket`,
  the asyncio broadcaster feeds the decoder directly;
* close handling: :class:`ConnectionClosedError` (peer closed, went silent, or we stopped),
  :class:`FrameTooLargeError`;
* safe XML: :func:`safe_xml` parses with no entity expansion, no DTD and no network access
  and refuses a document that declares a DOCTYPE; :func:`read_packet` classifies a packet or
  raises :class:`BadPacketError` with a reason;
* Transport messages: :func:`transport_message`, :func:`ack`, :func:`nak` (with a reason in
  ``Meta/Result``), :func:`iamalive` and :func:`iamalive_reply`.
"""

from __future__ import annotations

import datetime as dt
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from lxml import etree

from mmcross.model.errors import MmcrossError

TRANSPORT_NS = "http://telescope-networks.org/schema/Transport/v1.1"
LENGTH = struct.Struct("!I")
MAX_FRAME_BYTES = 1 << 20  # default cap of one frame, bytes
RECV_BYTES = 1 << 16  # largest single socket read, bytes


# -- errors --------------------------------------------------------------------------------


class ConnectionClosedError(MmcrossError):
    """The connection to ``peer`` ended.

    Attributes:
        peer: ``host:port`` of the other side.
        reason: ``"closed"`` (the peer closed), ``"silent"`` (nothing received for the
            role's timeout) or ``"stopped"`` (our side was asked to stop).
        partial: True when it happened inside a frame (a truncated frame).
    """

    def __init__(self, peer: str, reason: str = "closed", partial: bool = False) -> None:
        where = " inside a frame" if partial else ""
        super().__init__(f"VTP connection with {peer}: {reason}{where}")
        self.peer, self.reason, self.partial = peer, reason, partial


class FrameTooLargeError(MmcrossError):
    """``peer`` announced a ``length``-byte frame, above ``limit``; nothing of it was read."""

    def __init__(self, peer: str, length: int, limit: int) -> None:
        super().__init__(f"VTP peer {peer} announced a {length}-byte frame (limit {limit})")
        self.peer, self.length, self.limit = peer, length, limit


class BadPacketError(MmcrossError):
    """A frame from ``peer`` that is not a usable VTP packet.

    ``reason``: ``"refused_doctype"`` (a DOCTYPE, i.e. entity or DTD tricks),
    ``"unparsable"`` (not well-formed XML) or ``"not_voevent"`` (neither a ``Transport`` nor a
    ``VOEvent`` with an ``ivorn``).
    """

    def __init__(self, peer: str, reason: str, detail: str) -> None:
        super().__init__(f"VTP packet from {peer or 'peer'} refused ({reason}): {detail}")
        self.peer, self.reason, self.detail = peer, reason, detail


# -- framing -------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """``payload`` with its 4-byte big-endian length prefix."""
    return LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Cuts a byte stream into frames; a prefix above ``max_bytes`` is refused at once.

    Feed it whatever the socket gave (any split across TCP segments); it returns the frames
    completed so far. It holds at most one partial frame plus one read, never the announced
    length of a refused prefix. Frames completed before a refused prefix in the same read are
    still returned; the refusal is then raised by the next :meth:`feed` or :meth:`check`.
    """

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES, peer: str = "") -> None:
        self.max_bytes, self.peer = max_bytes, peer
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the current frame, once known
        self._error: FrameTooLargeError | None = None  # a refused prefix, raised next

    @property
    def partial(self) -> bool:
        """True when bytes of an unfinished frame are buffered."""
        return bool(self._buf) or self._need is not None

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; the payloads completed by it, in order.

        Raises:
            FrameTooLargeError: a length prefix above ``max_bytes`` (in this read, when it
                completed no frame before it, or in an earlier one).
        """
        self.check()
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < LENGTH.size:
                    return out
                (length,) = LENGTH.unpack_from(self._buf)
                if length > self.max_bytes:
                    self._buf.clear()
                    self._error = FrameTooLargeError(self.peer, length, self.max_bytes)
                    if out:
                        return out
                    self.check()
                del self._buf[:LENGTH.size]
                self._need = length
            if len(self._buf) < self._need:
                return out
            out.append(bytes(self._buf[:self._need]))
            del self._buf[:self._need]
            self._need = None

    def check(self) -> None:
        """Raise the refusal of a length prefix met by an earlier :meth:`feed`, if any.

        Raises:
            FrameTooLargeError: such a prefix was met; the decoder stays failed.
        """
        if self._error is not None:
            raise self._error


class FramedSocket:
    """A connected blocking socket read and written in frames.

    Args:
        sock: the connected socket (its timeout is set here).
        peer: ``host:port``, for errors and logs.
        max_frame_bytes: cap of one received frame, bytes.
        idle_timeout: seconds without any byte after which the connection counts as
            ``silent``.
        stop: when given, checked every ``poll`` seconds; once set, reads raise
            :class:`ConnectionClosedError` with reason ``"stopped"``.
        poll: socket timeout, seconds, when ``stop`` is given.
    """

    def __init__(self, sock: socket.socket, peer: str, *, max_frame_bytes: int,
                 idle_timeout: float, stop: threading.Event | None = None,
                 poll: float = 0.5) -> None:
        self.sock, self.peer, self.stop = sock, peer, stop
        self.idle_timeout = idle_timeout
        self.decoder = FrameDecoder(max_frame_bytes, peer)
        self._ready: list[bytes] = []
        sock.settimeout(min(poll, idle_timeout) if stop is not None else idle_timeout)

    def read_frame(self) -> bytes:
        """The next frame's payload.

        Raises:
            ConnectionClosedError: closed, silent for ``idle_timeout`` or stopped.
            FrameTooLargeError: the prefix announced more than ``max_frame_bytes``.
            OSError: a socket error.
        """
        last_rx = time.monotonic()
        while not self._ready:
            self.decoder.check()
            if self.stop is not None and self.stop.is_set():
                raise ConnectionClosedError(self.peer, "stopped", self.decoder.partial)
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except TimeoutError:
                if time.monotonic() - last_rx >= self.idle_timeout:
                    raise ConnectionClosedError(self.peer, "silent",
                                                self.decoder.partial) from None
                continue
            if not chunk:
                raise ConnectionClosedError(self.peer, "closed", self.decoder.partial)
            last_rx = time.monotonic()
            self._ready.extend(self.decoder.feed(chunk))
        return self._ready.pop(0)

    def send(self, payload: bytes) -> None:
        """Send ``payload`` as one frame."""
        self.sock.sendall(frame(payload))


# -- XML -----------------------------------------------------------------------------------


def safe_xml(payload: bytes) -> Any:
    """Parse one VTP packet with lxml: no entities, no DTD, no network; DOCTYPE refused.

    Raises:
        etree.XMLSyntaxError: malformed XML.
        ValueError: the document declares a DOCTYPE (entity tricks are refused outright).
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                             load_dtd=False, dtd_validation=False, remove_pis=True)
    root = etree.fromstring(payload, parser=parser)
    if root.getroottree().docinfo.doctype:
        raise ValueError("packet declares a DOCTYPE")
    return root


def looks_like_xml(payload: bytes) -> bool:
    """True when the first character after a BOM and white space is ``<``."""
    return payload.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


@dataclass(frozen=True)
class Packet:
    """One parsed VTP packet: a ``Transport`` (with its ``role``) or a ``VOEvent``.

    Attributes:
        payload: the bytes as received.
        root: the lxml root element.
        kind: ``"Transport"`` or ``"VOEvent"``.
        role: the root's ``role`` attribute (``iamalive``, ``ack``, ``nak``,
            ``observation``, ``test``...).
        ivorn: the VOEvent's IVORN (``""`` for a Transport).
    """

    payload: bytes
    root: Any
    kind: str
    role: str
    ivorn: str

    @property
    def origin(self) -> str:
        """A Transport's ``Origin`` (``""`` when absent)."""
        return self.root.findtext("Origin") or ""

    @property
    def result(self) -> str:
        """A nak's ``Meta/Result`` (``""`` when absent)."""
        return self.root.findtext("Meta/Result") or ""


def read_packet(payload: bytes, peer: str = "") -> Packet:
    """Parse and classify one frame with :func:`safe_xml`.

    Raises:
        BadPacketError: a DOCTYPE (``refused_doctype``, also when the syntax error comes from
            an undeclared entity of a DOCTYPE), malformed XML (``unparsable``), or a root that
            is neither ``Transport`` nor ``VOEvent`` with an ``ivorn`` (``not_voevent``).
    """
    try:
        root = safe_xml(payload)
    except ValueError as exc:
        raise BadPacketError(peer, "refused_doctype", "XML with a DOCTYPE (entity "
                             "declarations) is refused") from exc
    except etree.XMLSyntaxError as exc:
        if b"<!DOCTYPE" in payload:
            raise BadPacketError(peer, "refused_doctype", "XML with a DOCTYPE (entity "
                                 f"declarations) is refused: {exc}") from exc
        raise BadPacketError(peer, "unparsable", f"not well-formed XML: {exc}") from exc
    kind = etree.QName(root).localname
    ivorn = root.get("ivorn") or ""
    if kind != "Transport" and (kind != "VOEvent" or not ivorn):
        raise BadPacketError(peer, "not_voevent",
                             f"root <{kind}> is not a Transport nor a VOEvent with an ivorn")
    return Packet(payload, root, kind, root.get("role", ""), ivorn if kind == "VOEvent" else "")


# -- Transport messages --------------------------------------------------------------------


def transport_message(role: str, origin: str, response: str | None = None,
                      result: str | None = None) -> bytes:
    """A VTP ``Transport`` packet (UTF-8 XML): ``iamalive``, ``ack`` or ``nak``.

    ``origin`` is the IVORN being answered (the broker's for iamalive, the event's for ack),
    ``response`` the IVORN of whoever answers, ``result`` the ``Meta/Result`` text (a nak's
    reason); the time stamp is now, UTC.
    """
    root = etree.Element(f"{{{TRANSPORT_NS}}}Transport", nsmap={"trn": TRANSPORT_NS},
                         role=role, version="1.0")
    etree.SubElement(root, "Origin").text = origin
    if response:
        etree.SubElement(root, "Response").text = response
    etree.SubElement(root, "TimeStamp").text = dt.datetime.now(dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    if result is not None:
        etree.SubElement(etree.SubElement(root, "Meta"), "Result").text = result
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def ack(origin: str, response: str) -> bytes:
    """The ``ack`` of the VOEvent ``origin`` by ``response``."""
    return transport_message("ack", origin, response)


def nak(origin: str, response: str, reason: str) -> bytes:
    """The ``nak`` of the VOEvent ``origin`` by ``response``, ``reason`` in ``Meta/Result``."""
    return transport_message("nak", origin, response, reason)


def iamalive(ivorn: str) -> bytes:
    """A broker's ``iamalive`` (``Origin`` = its IVORN)."""
    return transport_message("iamalive", ivorn)


def iamalive_reply(packet: Packet, ivorn: str) -> bytes:
    """The answer to an ``iamalive`` Transport: same ``Origin``, ``Response`` = ``ivorn``."""
    return transport_message("iamalive", packet.origin, ivorn)

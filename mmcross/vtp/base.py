"""The VOEvent Transport Protocol wire format, shared by every VTP role.

VTP (Swinbank 2012; Comet is the reference implementation) sends XML documents framed by a
4-byte big-endian length. Besides VOEvents, peers exchange ``Transport`` documents of role
``iamalive``, ``ack`` and ``nak``. Packets are parsed with no entity expansion, no DTD and no
network access; a document that declares a DOCTYPE is refused outright.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from lxml import etree

TRANSPORT_NS = "http://telescope-networks.org/schema/Transport/v1.1"
LENGTH = struct.Struct("!I")


def frame(payload: bytes) -> bytes:
    """``payload`` with its 4-byte big-endian length prefix."""
    return LENGTH.pack(len(payload)) + payload


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


def transport_message(role: str, origin: str, response: str | None = None) -> bytes:
    """A VTP ``Transport`` packet (UTF-8 XML): ``iamalive``, ``ack`` or ``nak``.

    ``origin`` is the IVORN being answered (the broker's for iamalive, the event's for ack),
    ``response`` the IVORN of whoever answers; the time stamp is now, UTC.
    """
    root = etree.Element(f"{{{TRANSPORT_NS}}}Transport", nsmap={"trn": TRANSPORT_NS},
                         role=role, version="1.0")
    etree.SubElement(root, "Origin").text = origin
    if response:
        etree.SubElement(root, "Response").text = response
    etree.SubElement(root, "TimeStamp").text = dt.datetime.now(dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

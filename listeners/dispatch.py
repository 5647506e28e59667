"""Format sniffing and routing: bytes in, :class:`mmcross.model.event.Event` out.

The payload's format is sniffed (XML VOEvent, JSON, Avro container) and refined by the GCN
Kafka topic when given; the mission is then taken from the VOEvent IVORN / Packet_Type, the
JSON ``$schema`` path, ``mission`` field or LVK fields. Every failure on bad input surfaces
as an :mod:`mmcross.model.errors` exception (BadNoticeError and its subclasses
NotAnEventError / UnsupportedMissionError, or BadSkymapError for a broken embedded map).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmcross.listeners import einstein_probe, fermi, icecube, integral, lvk, svom, swift
from mmcross.listeners.common import NoticeContext
from mmcross.listeners.gcn_unified import parse_unified, slug
from mmcross.listeners.voevent import VOEventDoc, parse_voevent
from mmcross.model.errors import (
    BadNoticeError,
    MmcrossError,
    NotAnEventError,
    UnsupportedMissionError,
)
from mmcross.model.event import Event
from mmcross.model.plausibility import (
    implausible_int64,
    implausible_json,
    implausible_mjd,
    implausible_probability,
    implausible_radec,
    implausible_radius,
    implausible_text,
)

logger = logging.getLogger(__name__)

AVRO_MAGIC = b"Obj\x01"
#: GCN Classic packet types that are transport, not events: 2 TEST, 3 IMALIVE, 4 KILL_SOCKET.
TRANSPORT_PACKETS = {2: "TEST_COORDS", 3: "IMALIVE", 4: "KILL_SOCKET"}
_SCHEMA_PATH = re.compile(r"/gcn/notices/([^?#]+?)(?:\.schema)?\.json")


def parse_notice(payload: bytes, *, topic: str | None = None, source: str = "",
                 roles: tuple[str, ...] | list[str] = ("observation",),
                 tolerance: float = 1e-3, max_order: int | None = None,
                 max_skymap_bytes: int = 64 * 1024 * 1024) -> Event:
    """Parse one GCN notice into an :class:`Event`.

    Args:
        payload: the notice bytes (VOEvent XML, JSON, or Avro container).
        topic: GCN Kafka topic, e.g. ``"igwn.gwalert"`` or
            ``"gcn.classic.voevent.FERMI_GBM_FLT_POS"``; refines the sniffing.
        source: provenance recorded in the Event and in error messages.
        roles: notice roles to keep (VOEvent ``role``; JSON tense ``test`` -> "test").
        tolerance: credible-level accuracy of rasterised circles/ellipses.
        max_order: finest HEALPix order of rasterised circles/ellipses/boxes.
        max_skymap_bytes: largest embedded sky map accepted (bytes after decoding).

    Raises:
        BadNoticeError: malformed payload or missing required fields.
        NotAnEventError: a recognised notice that is not an event to index (test role,
            transport packet, acknowledgement, no position).
        UnsupportedMissionError: a well-formed notice of an unknown mission/packet type.
        BadSkymapError: an embedded sky map that cannot be read.
    """
    ctx = NoticeContext(payload=bytes(payload) if isinstance(payload, bytearray | memoryview)
                        else payload, topic=topic, source=source, roles=tuple(roles),
                        tolerance=tolerance, max_order=max_order,
                        max_skymap_bytes=max_skymap_bytes)
    if not isinstance(ctx.payload, bytes):
        raise ctx.bad(f"payload is {type(payload).__name__}, not bytes")
    try:
        event = _parse(ctx)
        _check_plausible(event, ctx)
        return event
    except MmcrossError:
        raise
    except RecursionError as exc:
        raise ctx.bad("notice nested too deeply") from exc
    except Exception as exc:  # noqa: BLE001 - the API promises mmcross errors only
        logger.exception("unexpected error parsing notice from %s", ctx.where)
        raise ctx.bad(f"cannot parse notice: {type(exc).__name__}: {exc}") from exc


def _check_plausible(event: Event, ctx: NoticeContext) -> None:
    """Refuse an event that parsed but makes no sense (:mod:`mmcross.model.plausibility`):
    times outside the survey era, positions or radii out of range, values the store cannot
    hold. Every notice path (files, GCN Kafka, VTP, partners) comes through here."""
    checks = [
        implausible_mjd(float(event.trigger_time.utc.mjd), "trigger time"),
        implausible_text(event.event_id, "event id", 200),
        implausible_text(event.instrument, "instrument", 100),
        implausible_text(event.notice_type, "notice type", 100),
        implausible_text(event.role, "role", 32),
        implausible_int64(event.serial, "serial number"),
        implausible_json(event.significance, "significance"),
    ]
    if event.notice_time is not None:
        checks.append(implausible_mjd(float(event.notice_time.utc.mjd), "notice time"))
    if event.ra is not None and event.dec is not None:
        checks.append(implausible_radec(event.ra, event.dec, "position"))
    if event.error_radius is not None:
        checks.append(implausible_radius(event.error_radius, "error radius"))
    if event.containment is not None:
        checks.append(implausible_probability(event.containment, "containment"))
    for why in checks:
        if why is not None:
            raise ctx.bad(why)


def read_notice_file(path: str | Path, **kwargs: Any) -> Event:
    """Parse a notice file (any supported format); ``source`` is the path. A file larger than
    twice ``max_skymap_bytes`` (base64 of the largest map plus the notice) is refused unread."""
    p = Path(path)
    limit = 2 * int(kwargs.get("max_skymap_bytes", 64 * 1024 * 1024))
    try:
        if (size := p.stat().st_size) > limit:
            raise BadNoticeError(f"notice file {p} is {size} bytes, over the {limit} byte limit")
        payload = p.read_bytes()
    except OSError as exc:
        raise BadNoticeError(f"cannot read notice file {p}: {exc}") from exc
    kwargs.setdefault("source", str(p))
    return parse_notice(payload, **kwargs)


def _parse(ctx: NoticeContext) -> Event:
    head = ctx.payload.lstrip(b"\xef\xbb\xbf \t\r\n")[:16]
    topic = ctx.topic or ""
    if head.startswith(AVRO_MAGIC):
        ctx.notice_format = "avro"
        return lvk.parse_avro(ctx)
    if head.startswith(b"<"):
        ctx.notice_format = "voevent"
        return _parse_voevent(ctx)
    if head.startswith((b"{", b"[")):
        ctx.notice_format = "json"
        return _parse_json(ctx, topic)
    if not head:
        raise ctx.bad("empty notice")
    raise ctx.bad(f"unrecognised notice format (starts with {head[:8]!r})")


def _parse_voevent(ctx: NoticeContext) -> Event:
    doc = parse_voevent(ctx)
    return replace(_parse_voevent_doc(doc, ctx), ivorn=doc.ivorn)


def _parse_voevent_doc(doc: VOEventDoc, ctx: NoticeContext) -> Event:
    ptype = doc.packet_type(ctx)
    if ptype in TRANSPORT_PACKETS:
        raise NotAnEventError(f"GCN {TRANSPORT_PACKETS[ptype]} packet (Packet_Type {ptype}) is "
                              f"transport, not an event (in {ctx.where})")
    stream = doc.stream.lower()
    if stream.startswith("ivo://gwnet/") or doc.param("GraceID"):
        return lvk.parse_voevent(doc, ctx, ptype)
    if stream.startswith("ivo://org.svom/"):
        return svom.parse(doc, ctx, ptype)
    if ptype is None:
        raise UnsupportedMissionError(f"VOEvent {doc.ivorn!r} without Packet_Type "
                                      f"(in {ctx.where})")
    if stream.endswith("/fermi"):
        return fermi.parse(doc, ctx, ptype)
    if stream.endswith("/swift"):
        return swift.parse(doc, ctx, ptype)
    if stream.endswith("/integral"):
        return integral.parse(doc, ctx, ptype)
    if stream.endswith("/amon"):
        return icecube.parse(doc, ctx, ptype)
    raise UnsupportedMissionError(f"VOEvent stream {doc.stream!r} (Packet_Type {ptype}) not "
                                  f"supported (in {ctx.where})")


def _load_json(ctx: NoticeContext) -> Any:
    try:
        return json.loads(ctx.payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ctx.bad(f"malformed JSON: {exc}") from exc


def _parse_json(ctx: NoticeContext, topic: str) -> Event:
    d = _load_json(ctx)
    if not isinstance(d, dict):
        raise ctx.bad(f"JSON notice is a {type(d).__name__}, not an object")
    if topic.startswith("igwn.gwalert") or ("superevent_id" in d and "alert_type" in d):
        return lvk.parse_json(d, ctx)
    schema = d.get("$schema") if isinstance(d.get("$schema"), str) else ""
    if schema.startswith(("https://json-schema.org", "http://json-schema.org")) or \
            d.get("type") == "record":
        raise UnsupportedMissionError(f"a JSON/Avro schema document, not a notice "
                                      f"(in {ctx.where})")
    path = ""
    if topic.startswith("gcn.notices."):
        path = topic[len("gcn.notices."):].replace(".", "/")
    elif (m := _SCHEMA_PATH.search(schema)):
        path = m.group(1)
    parts = [p for p in path.split("/") if p]
    family = slug(parts[0]) if parts else slug(str(d.get("mission") or ""))
    rest = "/".join(parts[1:]).lower()
    if family in ("icecube",) and rest.startswith("lvk_nu_track_search"):
        return icecube.parse_lvk_nu_track_search(d, ctx)
    if family in ("einstein-probe",) or str(d.get("instrument", "")).upper() == "WXT":
        return einstein_probe.parse(d, ctx)
    if family == "svom":
        return svom.parse_json(d, ctx)
    if family == "swift" and ("guano" in rest or "GUANO" in str(d.get("instrument", ""))):
        return swift.parse_guano(d, ctx)
    if family == "fermi" and rest.startswith("lat"):
        raise NotAnEventError(f"Fermi LAT flare report (known source, no trigger or error "
                              f"region) (in {ctx.where})")
    if family in ("boom",) or rest.startswith("archive"):
        raise UnsupportedMissionError(f"{family} notices (optical alerts / archive alerts) "
                                      f"are not events (in {ctx.where})")
    if family == "heasarc":
        raise UnsupportedMissionError(f"HEASARC archive alerts are not supported "
                                      f"(in {ctx.where})")
    if family == "core" or not family or "trigger_time" not in d and "id" not in d:
        raise UnsupportedMissionError(f"JSON without a recognisable mission (family "
                                      f"{family!r}) (in {ctx.where})")
    mission = str(d.get("mission") or (parts[0] if parts else family))
    return parse_unified(d, ctx, mission=mission)

"""LVK gravitational-wave notices: igwn.gwalert JSON, IGWN Avro and GCN VOEvents.

Event id ``lvk:<superevent_id>`` (VOEvents: ``GraceID``). JSON/Avro notices embed the
multi-order sky map (base64 in JSON, bytes in Avro) which becomes the localization.
VOEvents carry only a sky-map URL: mmcross never fetches it (no network in listeners), so
LVK VOEvents give ``localization=None`` with ``significance["skymap_url"]`` set; the engine
treats such events as not matchable. ``MS``/``TS`` superevents (mock/test) have role "test".
Retractions (JSON ``alert_type`` RETRACTION, VOEvent Packet_Type 164) give ``action=RETRACT``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import Any

import fastavro

from mmcross.listeners import localize
from mmcross.listeners.common import NoticeContext, jsonable, optional_float, parse_time, pick
from mmcross.listeners.voevent import VOEventDoc
from mmcross.model.errors import UnsupportedMissionError
from mmcross.model.event import Event, EventKind, NoticeAction

logger = logging.getLogger(__name__)

ALERT_TYPES = ("EARLYWARNING", "PRELIMINARY", "INITIAL", "UPDATE", "RETRACTION")
VOEVENT_TYPES = {150: "PRELIMINARY", 151: "INITIAL", 152: "UPDATE", 163: "EARLYWARNING",
                 164: "RETRACTION"}


def _role(superevent_id: str) -> str:
    return "test" if superevent_id[:1] in ("M", "T") else "observation"


def parse_json(d: dict[str, Any], ctx: NoticeContext) -> Event:
    """An igwn.gwalert JSON notice (already decoded) -> :class:`Event`."""
    return _parse_alert(d, ctx, skymap_is_base64=True)


def parse_avro(ctx: NoticeContext) -> Event:
    """An IGWN Avro container (schema igwn.alerts.v1_0.Alert) -> :class:`Event`."""
    try:
        reader = fastavro.reader(io.BytesIO(ctx.payload))
        records = list(reader)
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad input
        raise ctx.bad(f"malformed Avro container: {type(exc).__name__}: {exc}") from exc
    if len(records) != 1 or not isinstance(records[0], dict):
        raise ctx.bad(f"Avro container holds {len(records)} records, expected 1 LVK alert")
    rec = records[0]
    if "superevent_id" not in rec or "alert_type" not in rec:
        raise UnsupportedMissionError(f"Avro record is not an IGWN alert (in {ctx.where})")
    return _parse_alert(rec, ctx, skymap_is_base64=False)


def _parse_alert(d: dict[str, Any], ctx: NoticeContext, *, skymap_is_base64: bool) -> Event:
    sid = d.get("superevent_id")
    if not isinstance(sid, str) or not sid:
        raise ctx.bad("LVK alert without superevent_id")
    alert_type = str(d.get("alert_type", "")).upper()
    if alert_type not in ALERT_TYPES:
        raise ctx.bad(f"LVK alert_type {d.get('alert_type')!r} not one of {ALERT_TYPES}")
    role = _role(sid)
    ctx.check_role(role, f"LVK {alert_type} {sid}")
    notice_time = parse_time(d.get("time_created"), ctx, "time_created") \
        if d.get("time_created") else None
    urls = d.get("urls") if isinstance(d.get("urls"), dict) else {}
    event = d.get("event")
    if alert_type == "RETRACTION":
        trigger_time = (parse_time(event["time"], ctx, "event.time")
                        if isinstance(event, dict) and event.get("time") else notice_time)
        if trigger_time is None:
            raise ctx.bad("LVK RETRACTION without time_created")
        return ctx.make_event(
            event_id=f"lvk:{sid}", kind=EventKind.GW, instrument="LVK",
            trigger_time=trigger_time, localization=None, action=NoticeAction.RETRACT,
            notice_type=alert_type, notice_time=notice_time, role=role,
            significance={"urls": jsonable(urls)})
    if not isinstance(event, dict):
        raise ctx.bad(f"LVK {alert_type} without an event object")
    trigger_time = parse_time(event.get("time"), ctx, "event.time")
    sig = pick(event, ("far", "significant", "instruments", "group", "pipeline", "search",
                       "classification", "properties", "duration", "central_frequency"))
    if isinstance(sig.get("far"), (int, float)):
        sig["far"] = float(sig["far"])  # Hz
    ext = d.get("external_coinc")
    if isinstance(ext, dict):
        sig["external_coinc"] = _external_coinc(ext, ctx, sid, skymap_is_base64)
    sig["urls"] = jsonable(urls)
    raw_map = event.get("skymap")
    if skymap_is_base64:
        if not isinstance(raw_map, str) or not raw_map:
            raise ctx.bad(f"LVK {alert_type} {sid}: event.skymap missing or not base64 text")
        if len(raw_map) // 4 * 3 > ctx.max_skymap_bytes:  # checked before decoding
            raise ctx.bad(f"LVK {alert_type} {sid}: event.skymap of {len(raw_map)} base64 "
                          f"characters is over the {ctx.max_skymap_bytes} byte limit")
        try:
            fits_bytes = base64.b64decode(raw_map, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ctx.bad(f"LVK {alert_type} {sid}: event.skymap is not valid base64") from exc
    else:
        if not isinstance(raw_map, bytes | bytearray) or not raw_map:
            raise ctx.bad(f"LVK {alert_type} {sid}: event.skymap missing or not bytes")
        fits_bytes = bytes(raw_map)
    return ctx.make_event(
        event_id=f"lvk:{sid}", kind=EventKind.GW, instrument="LVK", trigger_time=trigger_time,
        localization=localize.skymap(ctx, fits_bytes, f"LVK {sid} sky map"),
        notice_type=alert_type, notice_time=notice_time, role=role, significance=sig)


def _external_coinc(ext: dict[str, Any], ctx: NoticeContext, sid: str,
                    skymap_is_base64: bool) -> dict[str, Any]:
    """RAVEN's own coincidence result an LVK notice carries (``external_coinc``): its fields as
    they come (``time_coincidence_far`` and ``time_sky_position_coincidence_far`` in Hz,
    ``time_difference`` in s, the external notice's ``ivorn``...) and the 90 % credible area
    (deg^2) of its combined sky map, which is checked to be a valid map; the map itself stays
    in the raw notice (``Event.raw``)."""
    info = jsonable({k: v for k, v in ext.items() if k != "combined_skymap"})
    combined = ext.get("combined_skymap")
    if combined:
        what = f"LVK {sid} external_coinc combined sky map"
        if skymap_is_base64:
            if not isinstance(combined, str):
                raise ctx.bad(f"{what} is not base64 text")
            try:
                combined = base64.b64decode(combined, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ctx.bad(f"{what} is not valid base64") from exc
        info["combined_skymap_area90"] = localize.skymap(ctx, combined, what).area(0.9)
    return info


def parse_voevent(doc: VOEventDoc, ctx: NoticeContext, packet_type: int | None) -> Event:
    """An LVK GCN VOEvent -> :class:`Event` with ``localization=None`` (sky map by URL)."""
    sid = doc.param("GraceID")
    if not sid:
        raise ctx.bad("LVK VOEvent without GraceID")
    alert = (doc.param("AlertType") or VOEVENT_TYPES.get(packet_type or -1, "")).upper()
    if packet_type not in VOEVENT_TYPES and alert not in ALERT_TYPES:
        raise UnsupportedMissionError(f"LVK VOEvent Packet_Type {packet_type} not supported "
                                      f"(in {ctx.where})")
    role = doc.role
    if role == "observation" and _role(sid) == "test":
        role = "test"
    ctx.check_role(role, f"LVK {alert} {sid}")
    notice_time = doc.notice_time(ctx)
    trigger_time = doc.event_time(ctx) or notice_time
    if trigger_time is None:
        raise ctx.bad(f"LVK VOEvent {sid} without ISOTime or Date")
    sig: dict[str, Any] = {}
    far = optional_float(doc.param("FAR"))
    if far is not None:
        sig["far"] = far  # Hz (unit="Hz" in the Param)
    for k in ("Group", "Pipeline", "Search", "Instruments"):
        if doc.param(k):
            sig[k.lower()] = doc.param(k)
    for k in ("Significant", "HardwareInj", "OpenAlert"):
        if doc.param(k) is not None:
            sig[k.lower()] = doc.param(k)
    cls = {k: v for k, v in ((k, optional_float(v)) for k, v in
                             doc.groups.get("Classification", {}).items()) if v is not None}
    if cls:
        sig["classification"] = cls
    props = {k: v for k, v in ((k, optional_float(v)) for k, v in
                               doc.groups.get("Properties", {}).items()) if v is not None}
    for k in ("ProbHasNS", "ProbHasRemnant"):  # O2-era top-level Params
        if (v := optional_float(doc.param(k))) is not None:
            props[k.replace("Prob", "")] = v
    if props:
        sig["properties"] = props
    url = None
    for name, group in doc.groups.items():
        if name == "GW_SKYMAP" or name.startswith("bayestar") or "skymap" in name.lower():
            url = group.get("skymap_fits") or group.get("skymap_fits_basic") or url
    if url:
        sig["skymap_url"] = url
    retract = packet_type == 164 or alert == "RETRACTION" or doc.flag("Retraction")
    return ctx.make_event(
        event_id=f"lvk:{sid}", kind=EventKind.GW, instrument="LVK", trigger_time=trigger_time,
        localization=None, serial=doc.serial(ctx),
        action=NoticeAction.RETRACT if retract else NoticeAction.ADD,
        notice_type=alert or str(packet_type), notice_time=notice_time, role=role,
        significance=sig)

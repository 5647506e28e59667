"""Swift notices: BAT/XRT/UVOT GCN Classic VOEvents and BAT-GUANO unified JSON.

Event ids: ``swift:<TrigID>`` for every VOEvent of one BAT trigger (BAT_GRB_POS, QuickLook,
XRT, UVOT, BAT_Trans), so the arcsecond XRT/UVOT positions update the arcminute BAT one;
``swift-bat-guano:<id>`` for GUANO (its id is the external trigger's, not a Swift TrigID).
"""

from __future__ import annotations

import logging
from typing import Any

from mmcross.listeners import localize
from mmcross.listeners.common import (
    NoticeContext,
    check_radec,
    first_id,
    optional_float,
    parse_time,
    pick,
    retraction_event,
    to_float,
    to_int,
)
from mmcross.listeners.radii import circle_spec
from mmcross.listeners.voevent import VOEventDoc
from mmcross.model.errors import NotAnEventError, UnsupportedMissionError
from mmcross.model.event import Event, EventKind

logger = logging.getLogger(__name__)

#: Packet_Type -> (notice name, instrument, radius convention key, kind).
POSITION_TYPES: dict[int, tuple[str, str, str, EventKind]] = {
    61: ("BAT_GRB_POS", "Swift-BAT", "swift-bat", EventKind.GRB),
    97: ("BAT_QL_POS", "Swift-BAT", "swift-bat", EventKind.GRB),
    84: ("BAT_TRANS", "Swift-BAT", "swift-bat", EventKind.GAMMA),
    67: ("XRT_POSITION", "Swift-XRT", "swift-xrt", EventKind.GRB),
    81: ("UVOT_POSITION", "Swift-UVOT", "swift-uvot", EventKind.GRB),
}
#: Recognised Swift packets that carry no new position (acknowledgements, light curves,
#: spacecraft planning, spectra, images): not events.
NON_EVENT_TYPES = {
    60: "BAT_GRB_ALERT", 62: "BAT_GRB_NACK", 63: "BAT_GRB_LC", 64: "BAT_SCALEDMAP",
    65: "FOM_OBS", 66: "SC_SLEW", 68: "XRT_SPECTRUM", 69: "XRT_IMAGE", 70: "XRT_LC",
    71: "XRT_NACK_POS", 72: "UVOT_IMAGE", 73: "UVOT_SRC_LIST", 76: "BAT_TRANS_NACK",
    77: "XRT_PROC_SPEC", 78: "XRT_PROC_IMAGE", 79: "UVOT_DBURST_PROC",
    80: "UVOT_FCHART_PROC", 82: "BAT_GRB_POS_TEST", 83: "POINTDIR", 85: "XRT_THRESHPIX",
    86: "XRT_THRESHPIX_PROC", 87: "XRT_SPER", 88: "XRT_SPER_PROC", 89: "UVOT_NACK_POS",
    98: "BAT_SUB_THRESHOLD", 99: "BAT_SLEW_POS", 103: "BAT_MONITOR",
}


def parse(doc: VOEventDoc, ctx: NoticeContext, packet_type: int) -> Event:
    """A Swift VOEvent -> :class:`Event` (``swift:<TrigID>``)."""
    if packet_type in NON_EVENT_TYPES:
        raise NotAnEventError(f"Swift {NON_EVENT_TYPES[packet_type]} (Packet_Type "
                              f"{packet_type}) is not a new position (in {ctx.where})")
    if packet_type not in POSITION_TYPES:
        raise UnsupportedMissionError(f"Swift Packet_Type {packet_type} not supported "
                                      f"(in {ctx.where})")
    name, instrument, key, kind = POSITION_TYPES[packet_type]
    ctx.check_role(doc.role, f"Swift {name}")
    role = "test" if doc.flag("Test_Submission") else doc.role
    ctx.check_role(role, f"Swift {name} (Test_Submission flag)")
    trig = doc.param("TrigID")
    if trig is None:
        raise ctx.bad(f"Swift {name} without TrigID")
    trigger_time = doc.event_time(ctx)
    if trigger_time is None:
        raise ctx.bad(f"Swift {name} without WhereWhen ISOTime")
    pos = doc.position(ctx)
    if pos is None or pos[2] is None or pos[2] <= 0.0:
        raise NotAnEventError(f"Swift {name} without an error radius (in {ctx.where})")
    ra, dec, err = pos
    ra = check_radec(ra, dec, ctx)
    sig: dict[str, Any] = {}
    for src, dst in (("Rate_Signif", "rate_snr"), ("Image_Signif", "image_snr"),
                     ("Det_Signif", "snr")):
        v = optional_float(doc.param(src))
        if v is not None:
            sig[dst] = v
    sig["grb_identified"] = doc.flag("GRB_Identified")
    sig["def_not_a_grb"] = doc.flag("Def_NOT_a_GRB")
    if doc.flag("Target_in_Flt_Catalog") or doc.flag("Target_in_Gnd_Catalog"):
        sig["known_source"] = True
        kind = EventKind.GAMMA if kind is EventKind.GRB else kind
    spec = circle_spec(key, err)
    return ctx.make_event(
        event_id=f"swift:{to_int(trig, ctx, 'TrigID')}", kind=kind, instrument=instrument,
        trigger_time=trigger_time, localization=localize.circle(ctx, ra, dec, spec),
        serial=doc.serial(ctx), notice_type=name, notice_time=doc.notice_time(ctx),
        role=role, significance=sig, ra=ra, dec=dec, error_radius=err,
        containment=spec.containment)


def parse_guano(d: dict[str, Any], ctx: NoticeContext) -> Event:
    """Swift BAT-GUANO unified JSON (``gcn.notices.swift.bat.guano``).

    ``ra_dec_error`` is at ``containment_probability`` (schema default 0.9); initial GUANO
    notices without a position are not events; ``alert_type == "retraction"`` retracts.
    """
    gid = first_id(d.get("id"))
    if gid is None:
        raise ctx.bad("Swift BAT-GUANO notice without id")
    role = "test" if d.get("alert_tense") in ("test", "injection") else "observation"
    ctx.check_role(role, "Swift BAT-GUANO notice")
    event_id = f"swift-bat-guano:{gid}"
    trigger_time = parse_time(d.get("trigger_time"), ctx, "trigger_time")
    notice_time = (parse_time(d["alert_datetime"], ctx, "alert_datetime")
                   if d.get("alert_datetime") else None)
    serial = d.get("record_number") if isinstance(d.get("record_number"), int) else None
    sig = pick(d, ("rate_snr", "image_snr", "far", "classification", "follow_up_event",
                   "follow_up_type", "rate_duration", "data_archive_page"))
    alert_type = str(d.get("alert_type", "")).lower()
    if alert_type == "retraction":
        return retraction_event(ctx, event_id=event_id, kind=EventKind.GRB,
                                instrument="Swift-BAT-GUANO", trigger_time=trigger_time,
                                notice_type="GUANO_RETRACTION", notice_time=notice_time,
                                serial=serial, role=role, significance=sig)
    if d.get("ra") is None or d.get("dec") is None or d.get("ra_dec_error") is None:
        raise NotAnEventError(f"Swift BAT-GUANO {alert_type or 'notice'} without a position "
                              f"(in {ctx.where})")
    ra = to_float(d["ra"], ctx, "ra")
    dec = to_float(d["dec"], ctx, "dec")
    ra = check_radec(ra, dec, ctx)
    err_raw = d["ra_dec_error"]
    err = to_float(err_raw[0] if isinstance(err_raw, list) and err_raw else err_raw, ctx,
                   "ra_dec_error")
    cont = to_float(d.get("containment_probability", 0.9), ctx, "containment_probability")
    spec = circle_spec("gcn-unified", err, containment=cont,
                       systematic_included=bool(d.get("systematic_included", False)))
    return ctx.make_event(
        event_id=event_id, kind=EventKind.GRB, instrument="Swift-BAT-GUANO",
        trigger_time=trigger_time, localization=localize.circle(ctx, ra, dec, spec),
        serial=serial, notice_type=f"GUANO_{alert_type.upper() or 'NOTICE'}",
        notice_time=notice_time, role=role, significance=sig, ra=ra, dec=dec,
        error_radius=err, containment=cont)

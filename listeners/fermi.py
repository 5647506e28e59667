"""Fermi GBM and LAT notices (GCN Classic VOEvents; GBM unified JSON goes via gcn_unified).

Event ids: ``fermi-gbm:<TrigID>`` for every GBM notice of one trigger (Alert, FLT_POS,
GND_POS, FIN_POS), ``fermi-gbm-subthresh:<Trans_Num>`` for sub-threshold candidates and
``fermi-lat:<TrigID>`` for LAT. Radii follow :mod:`mmcross.listeners.radii`.
"""

from __future__ import annotations

import logging

from astropy.time import Time

from mmcross.listeners import localize
from mmcross.listeners.common import NoticeContext, check_radec, optional_float, to_int
from mmcross.listeners.radii import CONVENTIONS, circle_spec
from mmcross.listeners.voevent import VOEventDoc
from mmcross.model.errors import NotAnEventError, UnsupportedMissionError
from mmcross.model.event import Event, EventKind, NoticeAction

logger = logging.getLogger(__name__)

GBM_POSITION_TYPES = {111: "GBM_FLT_POS", 112: "GBM_GND_POS", 115: "GBM_FIN_POS",
                      131: "GBM_SUBTHRESH"}
GBM_NO_POSITION_TYPES = {110: "GBM_ALERT", 113: "GBM_LC", 114: "GBM_TRANS", 119: "GBM_TEST"}
LAT_POSITION_TYPES = {120: "LAT_POS_INI", 121: "LAT_POS_UPD", 127: "LAT_GND",
                      128: "LAT_OFFLINE"}
LAT_OTHER_TYPES = {122: "LAT_POS_DIAG", 123: "LAT_TRANS", 124: "LAT_POS_TEST",
                   125: "LAT_MONITOR"}

#: GBM flight-software classification (``Most_Likely_Index``), GCN Fermi GBM notices docs.
GBM_FLIGHT_CLASSES = {
    0: "ERROR", 1: "UNRELIABLE_LOCATION", 2: "LOCAL_PARTICLES", 3: "BELOW_HORIZON",
    4: "GRB", 5: "GENERIC_SGR", 6: "GENERIC_TRANSIENT", 7: "DISTANT_PARTICLES",
    8: "SOLAR_FLARE", 9: "CYG_X1", 10: "SGR_1806_20", 11: "GROJ_0422_32", 19: "TGF",
}

#: The GBM team's improved RoboBA final positions (GCN Circular 25726) start here.
ROBOBA_2019 = Time("2019-09-11T00:00:00", scale="utc")


def parse(doc: VOEventDoc, ctx: NoticeContext, packet_type: int) -> Event:
    """A Fermi GBM/LAT VOEvent -> :class:`Event` (see module docstring for the ids)."""
    if packet_type in GBM_POSITION_TYPES:
        return _gbm(doc, ctx, packet_type)
    if packet_type in LAT_POSITION_TYPES:
        return _lat(doc, ctx, packet_type)
    if packet_type in GBM_NO_POSITION_TYPES or packet_type in LAT_OTHER_TYPES:
        name = GBM_NO_POSITION_TYPES.get(packet_type) or LAT_OTHER_TYPES[packet_type]
        raise NotAnEventError(
            f"Fermi {name} (Packet_Type {packet_type}) carries no usable position "
            f"(in {ctx.where})")
    raise UnsupportedMissionError(f"Fermi Packet_Type {packet_type} not supported "
                                  f"(in {ctx.where})")


def _position(doc: VOEventDoc, ctx: NoticeContext, name: str) -> tuple[float, float, float]:
    pos = doc.position(ctx)
    if pos is None or pos[2] is None or pos[2] <= 0.0:
        raise NotAnEventError(f"{name} notice without a position/error radius (in {ctx.where})")
    ra, dec, err = pos
    return check_radec(ra, dec, ctx), dec, err


def _retracted(doc: VOEventDoc) -> bool:
    return doc.flag("Retraction")


def _gbm(doc: VOEventDoc, ctx: NoticeContext, packet_type: int) -> Event:
    name = GBM_POSITION_TYPES[packet_type]
    ctx.check_role(doc.role, f"Fermi {name}")
    role = "test" if doc.flag("Test_Submission") else doc.role
    ctx.check_role(role, f"Fermi {name} (Test_Submission flag)")
    trigger_time = doc.event_time(ctx)
    if trigger_time is None:
        raise ctx.bad(f"Fermi {name} without WhereWhen ISOTime")
    if packet_type == 131:
        trans = doc.param("Trans_Num")
        if trans is None:
            raise ctx.bad("Fermi GBM_SUBTHRESH without Trans_Num")
        event_id = f"fermi-gbm-subthresh:{to_int(trans, ctx, 'Trans_Num')}"
        key = "fermi-gbm-subthresh"
    else:
        trig = doc.param("TrigID")
        if trig is None:
            raise ctx.bad(f"Fermi {name} without TrigID")
        event_id = f"fermi-gbm:{to_int(trig, ctx, 'TrigID')}"
        key = {111: "fermi-gbm-flt", 112: "fermi-gbm-gnd"}.get(packet_type, "fermi-gbm-fin")
        if key == "fermi-gbm-fin" and trigger_time >= ROBOBA_2019:
            key = "fermi-gbm-fin-2019"
    significance = _gbm_significance(doc, ctx)
    kind = EventKind.GRB
    flight_class = significance.get("flight_class")
    if doc.flag("Def_NOT_a_GRB") or (flight_class not in (None, "GRB")):
        kind = EventKind.GAMMA
    notice_time = doc.notice_time(ctx)
    serial = doc.serial(ctx)
    if _retracted(doc):
        return ctx.make_event(
            event_id=event_id, kind=kind, instrument="Fermi-GBM", trigger_time=trigger_time,
            localization=None, serial=serial, action=NoticeAction.RETRACT, notice_type=name,
            notice_time=notice_time, role=role, significance=significance)
    ra, dec, err = _position(doc, ctx, f"Fermi {name}")
    spec = circle_spec(key, err)
    significance.update(radius_convention=key, localization_radius=spec.radius,
                        localization_containment=spec.containment)
    return ctx.make_event(
        event_id=event_id, kind=kind, instrument="Fermi-GBM", trigger_time=trigger_time,
        localization=localize.circle(ctx, ra, dec, spec), serial=serial, notice_type=name,
        notice_time=notice_time, role=role, significance=significance, ra=ra, dec=dec,
        error_radius=err, containment=CONVENTIONS[key].containment)


def _gbm_significance(doc: VOEventDoc, ctx: NoticeContext) -> dict:
    sig: dict = {}
    for src, dst in (("Burst_Signif", "snr"), ("Data_Signif", "snr"),
                     ("Hardness_Ratio", "hardness_ratio"), ("Reliability", "reliability"),
                     ("Trans_Duration", "duration"), ("Most_Likely_Prob", "flight_class_prob")):
        v = optional_float(doc.param(src))
        if v is not None and dst not in sig:
            sig[dst] = v
    idx = doc.param("Most_Likely_Index")
    if idx is not None:
        try:
            i = to_int(idx, ctx, "Most_Likely_Index")
            sig["flight_class_index"] = i
            sig["flight_class"] = GBM_FLIGHT_CLASSES.get(i, f"UNKNOWN_{i}")
        except Exception:  # noqa: BLE001 - informative only
            pass
    sig["def_not_a_grb"] = doc.flag("Def_NOT_a_GRB")
    for url in ("LocationMap_URL", "HealPix_URL", "LightCurve_URL"):
        if doc.param(url):
            sig[url.lower()] = doc.param(url)
    for cls in ("Spectral_class", "Duration_class", "Long_short"):
        if doc.param(cls):
            sig[cls.lower()] = doc.param(cls)
    return sig


def _lat(doc: VOEventDoc, ctx: NoticeContext, packet_type: int) -> Event:
    name = LAT_POSITION_TYPES[packet_type]
    ctx.check_role(doc.role, f"Fermi {name}")
    trigger_time = doc.event_time(ctx)
    if trigger_time is None:
        raise ctx.bad(f"Fermi {name} without WhereWhen ISOTime")
    trig = doc.param("TrigID")
    if trig is None:
        raise ctx.bad(f"Fermi {name} without TrigID")
    event_id = f"fermi-lat:{to_int(trig, ctx, 'TrigID')}"
    sig = {k.lower(): v for k in ("Burst_Signif", "Temp_Test_Stat", "Image_Test_Stat")
           if (v := optional_float(doc.param(k))) is not None}
    if _retracted(doc):
        return ctx.make_event(
            event_id=event_id, kind=EventKind.GRB, instrument="Fermi-LAT",
            trigger_time=trigger_time, localization=None, serial=doc.serial(ctx),
            action=NoticeAction.RETRACT, notice_type=name, notice_time=doc.notice_time(ctx),
            role=doc.role, significance=sig)
    ra, dec, err = _position(doc, ctx, f"Fermi {name}")
    spec = circle_spec("fermi-lat", err)
    return ctx.make_event(
        event_id=event_id, kind=EventKind.GRB, instrument="Fermi-LAT",
        trigger_time=trigger_time, localization=localize.circle(ctx, ra, dec, spec),
        serial=doc.serial(ctx), notice_type=name, notice_time=doc.notice_time(ctx),
        role=doc.role, significance=sig, ra=ra, dec=dec, error_radius=err,
        containment=spec.containment)

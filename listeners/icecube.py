"""IceCube notices: AMON VOEvents (gold/bronze tracks, cascades) and unified JSON.

Event id ``icecube:<run>_<event>`` (leading zeros dropped) for VOEvents and the
``gcn.notices.icecube.*`` gold/bronze JSON (whose ``id`` is ``"<run>_<event>"``), so both
formats of one alert update the same event; ``icecube-lvk:<superevent>`` for the
``gcn.notices.icecube.lvk_nu_track_search`` results.
"""

from __future__ import annotations

import logging
from typing import Any

from mmcross.listeners import localize
from mmcross.listeners.common import (
    NoticeContext,
    check_radec,
    first_id,
    jsonable,
    optional_float,
    parse_time,
    to_float,
    to_int,
)
from mmcross.listeners.radii import circle_spec
from mmcross.listeners.voevent import VOEventDoc
from mmcross.model.errors import NotAnEventError, UnsupportedMissionError
from mmcross.model.event import Event, EventKind, NoticeAction

logger = logging.getLogger(__name__)

#: AMON Packet_Type -> (notice name, radius convention).
AMON_TYPES = {173: ("ICECUBE_ASTROTRACK_GOLD", "icecube-track"),
              174: ("ICECUBE_ASTROTRACK_BRONZE", "icecube-track"),
              176: ("ICECUBE_CASCADE", "icecube-cascade")}
AMON_OTHER = {158: "AMON_ICECUBE_COINC", 159: "AMON_ICECUBE_HESE", 169: "AMON_ICECUBE_EHE",
              171: "AMON_HAWC_ICECUBE", 172: "AMON_NU_EM_COINC"}


def event_id(run: Any, event: Any, ctx: NoticeContext) -> str:
    return f"icecube:{to_int(run, ctx, 'run_id')}_{to_int(event, ctx, 'event_id')}"


def parse(doc: VOEventDoc, ctx: NoticeContext, packet_type: int) -> Event:
    """An AMON IceCube VOEvent -> :class:`Event` (90 % radius, see radii)."""
    if packet_type not in AMON_TYPES:
        name = AMON_OTHER.get(packet_type, f"AMON Packet_Type {packet_type}")
        raise UnsupportedMissionError(f"{name} not supported (in {ctx.where})")
    name, key = AMON_TYPES[packet_type]
    ctx.check_role(doc.role, name)
    role = "test" if doc.flag("Test") or doc.flag("InternalTest") else doc.role
    ctx.check_role(role, f"{name} (Test flag)")
    run, evt = doc.param("run_id"), doc.param("event_id")
    if run is None or evt is None:
        raise ctx.bad(f"{name} without run_id/event_id")
    eid = event_id(run, evt, ctx)
    trigger_time = doc.event_time(ctx)
    if trigger_time is None:
        raise ctx.bad(f"{name} without WhereWhen ISOTime")
    sig: dict[str, Any] = {}
    for src, dst in (("signalness", "signalness"), ("FAR", "far_per_year"),
                     ("energy", "energy_tev"), ("src_error_50", "error_radius_50"),
                     ("src_error_90", "error_radius_90")):
        v = optional_float(doc.param(src))
        if v is not None:
            sig[dst] = v
    if doc.param("skymap_fits"):
        sig["skymap_url"] = doc.param("skymap_fits")
    if doc.param("event_name"):
        sig["event_name"] = doc.param("event_name")
    kind = EventKind.NEUTRINO
    if doc.flag("Retraction"):
        return ctx.make_event(
            event_id=eid, kind=kind, instrument="IceCube", trigger_time=trigger_time,
            localization=None, serial=doc.serial(ctx), action=NoticeAction.RETRACT,
            notice_type=name, notice_time=doc.notice_time(ctx), role=role,
            significance=sig)
    pos = doc.position(ctx)
    if pos is None or pos[2] is None or pos[2] <= 0.0:
        raise NotAnEventError(f"{name} without an error radius (in {ctx.where})")
    ra, dec, err = pos
    ra = check_radec(ra, dec, ctx)
    spec = circle_spec(key, err)
    return ctx.make_event(
        event_id=eid, kind=kind, instrument="IceCube", trigger_time=trigger_time,
        localization=localize.circle(ctx, ra, dec, spec), serial=doc.serial(ctx),
        notice_type=name, notice_time=doc.notice_time(ctx), role=role, significance=sig,
        ra=ra, dec=dec, error_radius=err, containment=spec.containment)


def parse_lvk_nu_track_search(d: dict[str, Any], ctx: NoticeContext) -> Event:
    """``gcn.notices.icecube.lvk_nu_track_search`` -> neutrino :class:`Event`.

    Without coincident events the notice is an upper-limit report, not an event
    (:class:`NotAnEventError`). Otherwise the localization is ``most_probable_direction``
    when given, else the coincident track with the smallest p-value, each a circle of
    ``ra_dec_error`` at ``containment_probability`` (schema default 0.9).
    """
    ref = d.get("ref_ID") or d.get("ref_id")
    if not isinstance(ref, str) or not ref:
        raise ctx.bad("IceCube LVK track search without ref_ID (the LVK superevent)")
    role = "test" if d.get("alert_tense") in ("test", "injection") or ref[:1] in "MT" \
        else "observation"
    ctx.check_role(role, "IceCube LVK track search")
    eid = f"icecube-lvk:{ref}"
    sig = {k: jsonable(d[k]) for k in ("pval_generic", "pval_bayesian", "n_events_coincident",
                                       "neutrino_flux_sensitivity_range") if k in d}
    notice_time = (parse_time(d["alert_datetime"], ctx, "alert_datetime")
                   if d.get("alert_datetime") else None)
    if str(d.get("alert_type", "")).lower() == "retraction":
        trigger_time = parse_time(d.get("trigger_time") or d.get("alert_datetime"), ctx,
                                  "trigger_time")
        return ctx.make_event(
            event_id=eid, kind=EventKind.NEUTRINO, instrument="IceCube",
            trigger_time=trigger_time, localization=None, action=NoticeAction.RETRACT,
            notice_type="LVK_NU_TRACK_SEARCH_RETRACTION", notice_time=notice_time, role=role,
            significance=sig)
    events = d.get("coincident_events") or []
    if not isinstance(events, list):
        raise ctx.bad("coincident_events is not a list")
    if not events:
        raise NotAnEventError(f"IceCube LVK track search for {ref}: no coincident neutrino "
                              f"(in {ctx.where})")
    good = [e for e in events if isinstance(e, dict)]
    if not good:
        raise ctx.bad("coincident_events entries are not objects")
    best = min(good, key=lambda e: optional_float(e.get("event_pval_generic")) or 1.0)
    loc_src = d.get("most_probable_direction") if isinstance(
        d.get("most_probable_direction"), dict) else best
    ra = to_float(loc_src.get("ra"), ctx, "ra")
    dec = to_float(loc_src.get("dec"), ctx, "dec")
    ra = check_radec(ra, dec, ctx)
    err_raw = loc_src.get("ra_dec_error")
    err = to_float(err_raw[0] if isinstance(err_raw, list) and err_raw else err_raw, ctx,
                   "ra_dec_error")
    cont = to_float(loc_src.get("containment_probability", 0.9), ctx,
                    "containment_probability")
    spec = circle_spec("gcn-unified", err, containment=cont,
                       systematic_included=bool(loc_src.get("systematic_included", False)))
    t_src = best.get("event_dt")
    trigger_time = parse_time(best.get("trigger_time") or d.get("trigger_time")
                              or d.get("alert_datetime"), ctx, "trigger_time")
    if t_src is not None:
        sig["event_dt"] = optional_float(t_src)
    if first_id(best.get("id")):
        sig["neutrino_id"] = first_id(best.get("id"))
    return ctx.make_event(
        event_id=eid, kind=EventKind.NEUTRINO, instrument="IceCube",
        trigger_time=trigger_time, localization=localize.circle(ctx, ra, dec, spec),
        notice_type="LVK_NU_TRACK_SEARCH", notice_time=notice_time, role=role,
        significance=sig, ra=ra, dec=dec, error_radius=err, containment=cont)

"""Generic GCN unified-schema JSON notices (nasa-gcn/gcn-schema ``gcn/notices/*``).

Fields used: ``id`` (string or list: the first is the trigger id), ``trigger_time``,
``alert_datetime`` (issue time), ``alert_type`` (``retraction`` retracts), ``alert_tense``
(``test``/``injection`` -> role test; ``planned`` is not an event), ``ra``, ``dec``,
``ra_dec_error`` (deg: a circle radius, or ``[semi_major, semi_minor, position_angle]``),
``containment_probability`` (default 0.9, core/Localization.schema.json),
``systematic_included`` and ``rectangular_error_corners`` (MAXI; replaced by the smallest
circle about (ra, dec) enclosing the corners, at the same containment: conservative).
Event id ``<mission slug>:<id>``; Fermi GBM and IceCube JSON ids match their VOEvent ids.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from astropy.coordinates import angular_separation

from mmcross.listeners import localize
from mmcross.listeners.common import (
    NoticeContext,
    check_radec,
    first_id,
    parse_time,
    pick,
    retraction_event,
    to_float,
)
from mmcross.listeners.fermi import ROBOBA_2019
from mmcross.listeners.radii import CircleSpec, circle_spec
from mmcross.model.errors import NotAnEventError
from mmcross.model.event import Event, EventKind

logger = logging.getLogger(__name__)

#: mission slug -> (event-id prefix, kind)
MISSIONS: dict[str, tuple[str, EventKind]] = {
    "fermi": ("fermi-gbm", EventKind.GRB), "burstcube": ("burstcube", EventKind.GRB),
    "glowbug": ("glowbug", EventKind.GRB), "swift": ("swift", EventKind.GRB),
    "svom": ("svom", EventKind.GRB), "maxi": ("maxi", EventKind.XRAY),
    "einstein-probe": ("einstein-probe", EventKind.XRAY),
    "icecube": ("icecube", EventKind.NEUTRINO), "km3net": ("km3net", EventKind.NEUTRINO),
    "super-kamiokande": ("superk", EventKind.NEUTRINO), "superk": ("superk", EventKind.NEUTRINO),
    "chime": ("chime", EventKind.OTHER), "dsa110": ("dsa110", EventKind.OTHER),
}

SIGNIFICANCE_KEYS = (
    "far", "p_astro", "classification", "properties", "rate_snr", "image_snr", "snr",
    "rate_duration", "image_duration", "nu_energy", "energy", "signalness", "reliability",
    "flux", "flux_error", "dm", "importance", "t90", "pipeline", "event_name",
    "healpix_url", "subtype", "alert_topology", "n_events", "luminosity_distance",
    "slew_status",
)


def slug(name: str) -> str:
    """``"Super-Kamiokande"`` -> ``"super-kamiokande"``, ``"Einstein Probe"`` ->
    ``"einstein-probe"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_unified(d: dict[str, Any], ctx: NoticeContext, *, mission: str,
                  event_id: str | None = None, instrument: str | None = None,
                  kind: EventKind | None = None, radius_key: str = "gcn-unified") -> Event:
    """A unified-schema notice of ``mission`` -> :class:`Event` (see module docstring)."""
    mslug = slug(mission)
    prefix, default_kind = MISSIONS.get(mslug, (mslug, EventKind.OTHER))
    messenger = str(d.get("messenger", "")).lower()
    if kind is None:
        kind = {"neutrino": EventKind.NEUTRINO, "gw": EventKind.GW}.get(messenger, default_kind)
    tense = str(d.get("alert_tense", "current")).lower()
    if tense == "planned":
        raise NotAnEventError(f"{mission} notice about a planned observation (in {ctx.where})")
    role = "test" if tense in ("test", "injection") else "observation"
    ctx.check_role(role, f"{mission} notice")
    tid = first_id(d.get("id"))
    if event_id is None:
        if tid is None:
            raise ctx.bad(f"{mission} notice without id")
        if mslug == "icecube" and "_" in tid:
            run, _, evt = tid.partition("_")
            tid = f"{int(run)}_{int(evt)}" if run.isdigit() and evt.isdigit() else tid
        event_id = f"{prefix}:{tid}"
    instrument = instrument or "-".join(
        x for x in (mission, str(d.get("instrument") or "")) if x)
    if not d.get("trigger_time"):
        raise ctx.bad(f"{mission} notice without trigger_time")
    trigger_time = parse_time(d.get("trigger_time"), ctx, "trigger_time")
    notice_time = (parse_time(d["alert_datetime"], ctx, "alert_datetime")
                   if d.get("alert_datetime") else None)
    serial = d["record_number"] if isinstance(d.get("record_number"), int) else None
    alert_type = str(d.get("alert_type", "")).lower()
    notice_type = str(d.get("subtype") or alert_type or "notice").upper()
    sig = pick(d, SIGNIFICANCE_KEYS)
    if alert_type == "retraction":
        return retraction_event(ctx, event_id=event_id, kind=kind, instrument=instrument,
                                trigger_time=trigger_time, notice_type=notice_type,
                                notice_time=notice_time, serial=serial, role=role,
                                significance=sig)
    if d.get("ra") is None or d.get("dec") is None:
        raise NotAnEventError(f"{mission} {alert_type or 'notice'} without a position "
                              f"(in {ctx.where})")
    ra = to_float(d["ra"], ctx, "ra")
    dec = to_float(d["dec"], ctx, "dec")
    ra = check_radec(ra, dec, ctx)
    cont = to_float(d.get("containment_probability", 0.9), ctx, "containment_probability")
    included = d.get("systematic_included")
    included = bool(included) if included is not None else None
    common = dict(event_id=event_id, kind=kind, instrument=instrument,
                  trigger_time=trigger_time, serial=serial, notice_type=notice_type,
                  notice_time=notice_time, role=role, significance=sig, ra=ra, dec=dec,
                  containment=cont)
    err = d.get("ra_dec_error")
    if isinstance(err, list):
        vals = [to_float(v, ctx, "ra_dec_error item") for v in err]
        if not vals:
            raise ctx.bad("ra_dec_error is an empty list")
        a = vals[0]
        b = vals[1] if len(vals) > 1 else a
        pa = vals[2] if len(vals) > 2 else 0.0
        if not math.isclose(a, b):
            loc = localize.ellipse(ctx, ra, dec, a, b, pa, cont)
            sig["ra_dec_error"] = vals
            return ctx.make_event(localization=loc, error_radius=max(a, b), **common)
        err = a
    if err is not None:
        radius = to_float(err, ctx, "ra_dec_error")
        key = _radius_key(d, mslug, radius_key, trigger_time)
        spec = circle_spec(key, radius, containment=cont, systematic_included=included)
        if key != "gcn-unified":
            sig["radius_convention"] = key
        return ctx.make_event(localization=localize.circle(ctx, ra, dec, spec),
                              error_radius=radius, **common)
    corners = d.get("rectangular_error_corners")
    if isinstance(corners, list) and corners:
        try:
            pts = [(to_float(c[0], ctx, "corner RA"), to_float(c[1], ctx, "corner Dec"))
                   for c in corners]
        except (TypeError, IndexError, KeyError) as exc:
            raise ctx.bad("rectangular_error_corners are not [ra, dec] pairs") from exc
        radius = max(math.degrees(angular_separation(
            math.radians(ra), math.radians(dec), math.radians(cra), math.radians(cdec)))
            for cra, cdec in pts)
        sig["rectangular_error_corners"] = [list(p) for p in pts]
        return ctx.make_event(localization=localize.circle(ctx, ra, dec,
                                                           CircleSpec(radius, cont)),
                              error_radius=radius, **common)
    raise NotAnEventError(f"{mission} notice without an error region (ra_dec_error) "
                          f"(in {ctx.where})")


def _radius_key(d: dict[str, Any], mslug: str, default: str, trigger_time) -> str:
    """Fermi GBM JSON: the GBM systematic tables apply when ``systematic_included`` is false."""
    if mslug != "fermi" or str(d.get("instrument", "")).upper() != "GBM":
        return default
    subtype = str(d.get("subtype", "")).upper()
    if d.get("systematic_included"):
        return "fermi-gbm-json-sys"
    if subtype == "FLIGHT_POSITION":
        return "fermi-gbm-flt"
    if subtype == "GROUND_POSITION":
        return "fermi-gbm-gnd"
    return "fermi-gbm-fin-2019" if trigger_time >= ROBOBA_2019 else "fermi-gbm-fin"

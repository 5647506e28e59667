"""INTEGRAL IBAS notices (GCN Classic VOEvents, Packet_Type 51-56).

Event id ``integral:<trigger number>``. The VOEvent ``TrigID`` packs the IBAS sub-number in
its upper 16 bits (wakeup 10042 -> ``TrigID`` 10042, refined sub-number 1 -> 75578 =
0x1273A, whose IVORN reads ``Refined_Pos_010042-1-...``), so the id is ``TrigID & 0xFFFF``.
"""

from __future__ import annotations

import logging

from mmcross.listeners import localize
from mmcross.listeners.common import NoticeContext, check_radec, optional_float, to_int
from mmcross.listeners.radii import circle_spec
from mmcross.listeners.voevent import VOEventDoc
from mmcross.model.errors import NotAnEventError, UnsupportedMissionError
from mmcross.model.event import Event, EventKind

logger = logging.getLogger(__name__)

POSITION_TYPES = {53: "INTEGRAL_WAKEUP", 54: "INTEGRAL_REFINED", 55: "INTEGRAL_OFFLINE",
                  56: "INTEGRAL_WEAK"}
NON_EVENT_TYPES = {51: "INTEGRAL_POINTDIR", 52: "INTEGRAL_SPIACS"}


def parse(doc: VOEventDoc, ctx: NoticeContext, packet_type: int) -> Event:
    """An INTEGRAL VOEvent -> :class:`Event`; ``Test_Notice`` packets count as role test."""
    if packet_type in NON_EVENT_TYPES:
        raise NotAnEventError(f"{NON_EVENT_TYPES[packet_type]} (Packet_Type {packet_type}) "
                              f"carries no GRB position (in {ctx.where})")
    if packet_type not in POSITION_TYPES:
        raise UnsupportedMissionError(f"INTEGRAL Packet_Type {packet_type} not supported "
                                      f"(in {ctx.where})")
    name = POSITION_TYPES[packet_type]
    ctx.check_role(doc.role, name)
    role = "test" if doc.flag("Test_Notice") else doc.role
    ctx.check_role(role, f"{name} (Test_Notice flag)")
    trig = doc.param("TrigID")
    if trig is None:
        raise ctx.bad(f"{name} without TrigID")
    trig_num = to_int(trig, ctx, "TrigID") & 0xFFFF
    trigger_time = doc.event_time(ctx)
    if trigger_time is None:
        raise ctx.bad(f"{name} without WhereWhen ISOTime")
    pos = doc.position(ctx)
    if pos is None or pos[2] is None or pos[2] <= 0.0:
        raise NotAnEventError(f"{name} without an error radius (in {ctx.where})")
    ra, dec, err = pos
    ra = check_radec(ra, dec, ctx)
    sig = {"snr": v} if (v := optional_float(doc.param("Inten_Sigma"))) is not None else {}
    sig["def_not_a_grb"] = doc.flag("Def_NOT_a_GRB")
    spec = circle_spec("integral-ibas", err)
    return ctx.make_event(
        event_id=f"integral:{trig_num}", kind=EventKind.GRB, instrument="INTEGRAL-IBAS",
        trigger_time=trigger_time, localization=localize.circle(ctx, ra, dec, spec),
        serial=doc.serial(ctx), notice_type=name, notice_time=doc.notice_time(ctx),
        role=role, significance=sig, ra=ra, dec=dec, error_radius=err,
        containment=spec.containment)

"""SVOM notices: French Science Center VOEvents (``gcn.notices.svom.voevent.*``) and
unified-schema JSON (gcn-schema ``svom/trigger``).

Event id ``svom:<burst id>`` (``sbYYMMDDnn``, VOEvent ``Svom_Identifiers/Burst_Id`` or JSON
``id``), shared by every notice of one alert sequence (ECLAIRs, GRM, MXT, VT).
Packet types from fsc.svom.org "Notices levels": 201 GRM trigger, 202 ECLAIRs wakeup,
203 ECLAIRs catalog, 204 slewing, 205 not-slewing, 209/210 MXT, 211 VT, 219 retraction.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mmcross.listeners import localize
from mmcross.listeners.common import NoticeContext, check_radec, first_id, optional_float
from mmcross.listeners.gcn_unified import parse_unified
from mmcross.listeners.radii import circle_spec
from mmcross.listeners.voevent import VOEventDoc
from mmcross.model.errors import NotAnEventError, UnsupportedMissionError
from mmcross.model.event import Event, EventKind, NoticeAction

logger = logging.getLogger(__name__)

#: Packet_Type -> (notice name, instrument, radius convention).
PACKET_TYPES = {
    201: ("GRM_TRIGGER", "SVOM-GRM", None),
    202: ("ECLAIRS_WAKEUP", "SVOM-ECLAIRs", "svom-eclairs"),
    203: ("ECLAIRS_CATALOG", "SVOM-ECLAIRs", "svom-eclairs"),
    204: ("SLEWING", "SVOM-ECLAIRs", "svom-eclairs"),
    205: ("NOT_SLEWING", "SVOM-ECLAIRs", "svom-eclairs"),
    209: ("MXT_INITIAL", "SVOM-MXT", "svom-mxt"),
    210: ("MXT_UPDATE", "SVOM-MXT", "svom-mxt"),
    211: ("VT_CANDIDATE", "SVOM-VT", "svom-vt"),
    219: ("RETRACTION", "SVOM", None),
}
_BURST_ID = re.compile(r"#(sb\d{8})")


def parse(doc: VOEventDoc, ctx: NoticeContext, packet_type: int | None) -> Event:
    """An SVOM FSC VOEvent -> :class:`Event`."""
    if packet_type not in PACKET_TYPES:
        raise UnsupportedMissionError(f"SVOM Packet_Type {packet_type} not supported "
                                      f"(in {ctx.where})")
    name, instrument, key = PACKET_TYPES[packet_type]
    ctx.check_role(doc.role, f"SVOM {name}")
    burst = doc.param("Burst_Id", "Svom_Identifiers") or doc.param("Burst_Id")
    if not burst:
        m = _BURST_ID.search(doc.ivorn)
        burst = m.group(1) if m else None
    if not burst:
        raise ctx.bad(f"SVOM {name} without Burst_Id")
    trigger_time = doc.event_time(ctx) or doc.notice_time(ctx)
    if trigger_time is None:
        raise ctx.bad(f"SVOM {name} without ISOTime")
    sig: dict[str, Any] = {}
    for k in ("SNR", "Notice_Level"):
        v = doc.param(k)
        if v is not None:
            sig[k.lower()] = optional_float(v) if k == "SNR" else v
    common = dict(event_id=f"svom:{burst}", kind=EventKind.GRB, instrument=instrument,
                  trigger_time=trigger_time, serial=doc.serial(ctx), notice_type=name,
                  notice_time=doc.notice_time(ctx), role=doc.role, significance=sig)
    if packet_type == 219:
        return ctx.make_event(localization=None, action=NoticeAction.RETRACT, **common)
    pos = doc.position(ctx)
    if key is None or pos is None or pos[2] is None or pos[2] <= 0.0:
        raise NotAnEventError(f"SVOM {name} without a localization error (GRM errors are "
                              f"-1 on board) (in {ctx.where})")
    ra, dec, err = pos
    ra = check_radec(ra, dec, ctx)
    spec = circle_spec(key, err)
    return ctx.make_event(localization=localize.circle(ctx, ra, dec, spec), ra=ra, dec=dec,
                          error_radius=err, containment=spec.containment, **common)


def parse_json(d: dict[str, Any], ctx: NoticeContext) -> Event:
    """SVOM unified JSON: the generic parser with the ``svom:<burst id>`` id."""
    burst = first_id(d.get("id"))
    if burst is None:
        raise ctx.bad("SVOM JSON notice without id")
    instrument = str(d.get("instrument") or "").strip() or "SVOM"
    return parse_unified(d, ctx, mission="SVOM", event_id=f"svom:{burst}",
                         instrument=f"SVOM-{instrument}" if instrument != "SVOM" else "SVOM",
                         kind=EventKind.GRB, radius_key="svom-eclairs"
                         if instrument.upper() != "GRM" else "gcn-unified")

"""Einstein Probe WXT alerts (``gcn.notices.einstein_probe.wxt.alert``, unified JSON).

Event id ``einstein-probe:<id>``; ``ra_dec_error`` (deg) is at ``containment_probability``,
0.9 when absent (gcn-schema core/Localization default; the EP WXT schema is the core
DateTime/Event/Localization/Reporter/Statistics/AdditionalInfo composition).
"""

from __future__ import annotations

from typing import Any

from mmcross.listeners.common import NoticeContext, first_id
from mmcross.listeners.gcn_unified import parse_unified
from mmcross.model.event import Event, EventKind


def parse(d: dict[str, Any], ctx: NoticeContext) -> Event:
    """An EP WXT JSON alert -> x-ray :class:`Event`."""
    eid = first_id(d.get("id"))
    if eid is None:
        raise ctx.bad("Einstein Probe alert without id")
    instrument = str(d.get("instrument") or "WXT")
    return parse_unified(d, ctx, mission="Einstein Probe", event_id=f"einstein-probe:{eid}",
                         instrument=f"EP-{instrument}", kind=EventKind.XRAY)

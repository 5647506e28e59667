"""Safe VOEvent reading and the fields every mission parser needs.

XML is parsed by lxml with ``resolve_entities=False, no_network=True, huge_tree=False`` and
no DTD loading; documents carrying a DOCTYPE are refused outright (no entity tricks). The
``What`` Params, ``WhereWhen`` and ``Who`` are read with namespace-agnostic lxml paths so
that VOEvent 1.1 and 2.0 packets with or without the ``voe:`` prefix all work (the
voevent-parse helpers need an objectified tree whose root prefix was stripped by a private
function, and its ``get_*_params`` break with the installed orderedmultidict, so they are not
used here; voevent-parse remains the library for *writing* VOEvents).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from astropy.time import Time
from lxml import etree

from mmcross.listeners.common import NoticeContext, parse_time, to_float, to_int

logger = logging.getLogger(__name__)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
        dtd_validation=False, remove_comments=True, remove_pis=True,
    )


@dataclass
class VOEventDoc:
    """The parts of a VOEvent the mission parsers use.

    Attributes:
        root: the root element (lxml).
        ivorn: the packet's IVORN (``ivo://nasa.gsfc.gcn/Fermi#GBM_Gnd_Pos_...``).
        role: ``observation``, ``test``, ``utility``...
        params: top-level ``What`` Params, name -> value string (first of duplicates).
        groups: grouped Params, group name (or type) -> {name -> value string}.
        descriptions: Param name -> its ``Description`` text (for convention checks).
    """

    root: Any
    ivorn: str
    role: str
    params: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def stream(self) -> str:
        """The IVORN without its ``#local`` part, e.g. ``ivo://nasa.gsfc.gcn/SWIFT``."""
        return self.ivorn.split("#", 1)[0]

    def packet_type(self, ctx: NoticeContext) -> int | None:
        value = self.params.get("Packet_Type")
        return None if value is None else to_int(value, ctx, "Packet_Type")

    def serial(self, ctx: NoticeContext) -> int | None:
        value = self.params.get("Pkt_Ser_Num")
        if value is None:
            return None
        try:
            return to_int(value, ctx, "Pkt_Ser_Num")
        except Exception:  # noqa: BLE001 - a malformed serial is not fatal
            return None

    def param(self, name: str, group: str | None = None) -> str | None:
        """A Param value: top-level, or in ``group``, or (group=None) in any group."""
        if group is not None:
            return self.groups.get(group, {}).get(name)
        if name in self.params:
            return self.params[name]
        for g in self.groups.values():
            if name in g:
                return g[name]
        return None

    def flag(self, name: str, group: str | None = None) -> bool:
        """A boolean Param (``"true"``/``"false"``), False when absent."""
        value = self.param(name, group)
        return value is not None and value.strip().lower() in ("true", "1", "yes")

    # -------------------------------------------------------------- Who / WhereWhen
    def notice_time(self, ctx: NoticeContext) -> Time | None:
        """``Who/Date``, the issue time (UTC), or None when absent/unparseable."""
        text = _text(self.root, "Who", "Date")
        if text is None:
            return None
        try:
            return parse_time(text, ctx, "Who/Date")
        except Exception:  # noqa: BLE001 - the issue time is informative only
            logger.warning("unparseable Who/Date %r in %s", text, ctx.where)
            return None

    def event_time(self, ctx: NoticeContext) -> Time | None:
        """``WhereWhen/.../TimeInstant/ISOTime`` as UTC, or None when absent."""
        loc = _observation_location(self.root)
        if loc is None:
            return None
        iso = _first(loc, ".//{*}TimeInstant/{*}ISOTime")
        if iso is None or not (iso.text or "").strip():
            return None
        coords = _first(loc, "{*}AstroCoords")
        system = (coords.get("coord_system_id", "UTC") if coords is not None else "UTC")
        if "UTC" not in system.upper().split("-"):  # "UTC-FK5-GEO" (2.0), "FK5-UTC-GEO" (1.1)
            raise ctx.bad(f"time system {system!r} is not UTC")
        return parse_time(iso.text, ctx, "WhereWhen ISOTime")

    def position(self, ctx: NoticeContext) -> tuple[float, float, float | None] | None:
        """(ra, dec, error radius) in degrees from ``Position2D``, or None when absent.

        The error radius is None when ``Error2Radius`` is missing; it is returned as written
        (its containment is the mission's convention, see :mod:`mmcross.listeners.radii`).
        """
        loc = _observation_location(self.root)
        if loc is None:
            return None
        pos = _first(loc, ".//{*}Position2D")
        if pos is None:
            return None
        c1 = _first(pos, "{*}Value2/{*}C1")
        c2 = _first(pos, "{*}Value2/{*}C2")
        if c1 is None or c2 is None:
            return None
        unit = (pos.get("unit") or "deg").strip().lower()
        if unit not in ("deg", "degrees", "degree"):
            raise ctx.bad(f"Position2D unit {unit!r} is not degrees")
        system = _first(loc, "{*}AstroCoordSystem")
        sys_id = (system.get("id", "") if system is not None else "").upper()
        if sys_id and not any(frame in sys_id for frame in ("FK5", "ICRS")):
            raise ctx.bad(f"coordinate system {sys_id!r} is not FK5/ICRS")
        ra = to_float(c1.text, ctx, "Position2D C1 (RA)")
        dec = to_float(c2.text, ctx, "Position2D C2 (Dec)")
        err_el = _first(pos, "{*}Error2Radius")
        err = None
        if err_el is not None and (err_el.text or "").strip():
            err = to_float(err_el.text, ctx, "Error2Radius")
        return ra, dec, err

    def citations(self) -> list[tuple[str, str]]:
        """(cite, ivorn) pairs of ``Citations/EventIVORN``."""
        out = []
        for el in self.root.iterfind(".//{*}Citations/{*}EventIVORN"):
            out.append((el.get("cite", ""), (el.text or "").strip()))
        return out


def parse_voevent(ctx: NoticeContext) -> VOEventDoc:
    """Parse ``ctx.payload`` as a VOEvent, safely.

    Raises:
        BadNoticeError: malformed XML, a DOCTYPE, or a root that is not a VOEvent.
    """
    try:
        root = etree.fromstring(ctx.payload, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise ctx.bad(f"malformed VOEvent XML: {exc}") from exc
    except ValueError as exc:  # e.g. unicode strings with encoding declarations
        raise ctx.bad(f"unreadable VOEvent XML: {exc}") from exc
    doc = root.getroottree()
    if doc.docinfo.doctype:
        raise ctx.bad("VOEvent with a DOCTYPE declaration refused (entity expansion risk)")
    if not isinstance(root.tag, str) or etree.QName(root).localname != "VOEvent":
        raise ctx.bad(f"XML root element is {root.tag!r}, not VOEvent")
    ivorn = root.get("ivorn", "")
    role = root.get("role", "observation")
    out = VOEventDoc(root=root, ivorn=ivorn, role=role)
    what = _first(root, "{*}What")
    if what is not None:
        out.params, out.groups, out.descriptions = _read_params(root, what, ctx)
    return out


def _read_params(root: Any, what: Any, ctx: NoticeContext) -> tuple[
        dict[str, str], dict[str, dict[str, str]], dict[str, str]]:
    """Top-level and grouped Params (the first of duplicate names wins).

    Groups are keyed by ``name``, and also by ``type`` (LVK "Classification"/"Properties"
    groups carry only a type).
    """
    params: dict[str, str] = {}
    groups: dict[str, dict[str, str]] = {}
    descriptions: dict[str, str] = {}
    for p in what.iterfind("{*}Param"):
        name = p.get("name")
        if name and name not in params:
            params[name] = p.get("value", "")
    for grp in what.iterfind("{*}Group"):
        keys = [k for k in (grp.get("name"), grp.get("type")) if k]
        for key in keys or [""]:
            bucket = groups.setdefault(key, {})
            for p in grp.iterfind("{*}Param"):
                name = p.get("name")
                if name and name not in bucket:
                    bucket[name] = p.get("value", "")
    for p in what.iterfind(".//{*}Param"):
        d = p.find("{*}Description")
        if p.get("name") and d is not None and d.text:
            descriptions.setdefault(p.get("name"), " ".join(d.text.split()))
    return params, groups, descriptions


def _first(el: Any, path: str) -> Any:
    found = el.find(path)
    return found


def _text(root: Any, *names: str) -> str | None:
    el = root
    for n in names:
        el = el.find("{*}" + n)
        if el is None:
            return None
    text = (el.text or "").strip()
    return text or None


def _observation_location(root: Any) -> Any:
    return root.find("{*}WhereWhen/{*}ObsDataLocation/{*}ObservationLocation")

"""Shared helpers of the notice parsers: parse context, times, numbers and shape builders.

Everything here is format-neutral: the VOEvent and JSON parsers of each mission call these
helpers so that time scales (UTC), units (degrees ICRS) and error handling stay uniform.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from astropy.time import Time

from mmcross.model.errors import BadNoticeError, NotAnEventError
from mmcross.model.event import Event, EventKind, NoticeAction
from mmcross.model.plausibility import implausible_int64, implausible_radec

logger = logging.getLogger(__name__)



@dataclass
class NoticeContext:
    """What a parser needs besides the document: raw bytes, provenance and options.

    Attributes:
        payload: the notice exactly as received (bytes), stored in ``Event.raw``.
        topic: the GCN Kafka topic, if known (refines the format/mission sniffing).
        source: where the notice came from (file path, ``topic/partition/offset``, peer).
        roles: notice roles that are kept; any other role raises :class:`NotAnEventError`.
        tolerance: credible-level accuracy passed to the Localization builders.
        max_order: finest HEALPix order the shape rasterisers may use.
        max_skymap_bytes: largest embedded sky map accepted (bytes, decoded).
        notice_format: ``"voevent"``, ``"json"`` or ``"avro"`` (set by the dispatcher).
    """

    payload: bytes
    topic: str | None = None
    source: str = ""
    roles: tuple[str, ...] = ("observation",)
    tolerance: float = 1e-3
    max_order: int | None = None
    max_skymap_bytes: int = 64 * 1024 * 1024
    notice_format: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """A short description of the provenance for error messages."""
        parts = [p for p in (self.source, f"topic {self.topic}" if self.topic else "") if p]
        return " / ".join(parts) if parts else "<unknown source>"

    def bad(self, what: str) -> BadNoticeError:
        """A :class:`BadNoticeError` whose message names the problem and the source."""
        return BadNoticeError(f"{what} (in {self.where})")

    def check_role(self, role: str, what: str) -> None:
        """Raise :class:`NotAnEventError` unless ``role`` is one of the kept roles."""
        if role not in self.roles:
            raise NotAnEventError(
                f"{what} has role {role!r}, not one of {list(self.roles)} (in {self.where})"
            )

    def make_event(self, **kwargs: Any) -> Event:
        """Build an :class:`Event` filling ``raw``, ``notice_format`` and ``source``."""
        kwargs.setdefault("raw", self.payload)
        kwargs.setdefault("notice_format", self.notice_format)
        kwargs.setdefault("source", self.source)
        return Event(**kwargs)


# --------------------------------------------------------------------------- times


_TZ_SUFFIX = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


def parse_time(text: Any, ctx: NoticeContext, what: str) -> Time:
    """Parse an ISO 8601 UTC timestamp (``Z``/``+00:00`` suffix optional) into a UTC Time.

    Accepts ``"2024-01-12T17:37:25.12"``, ``"2018-05-24T09:58:26.31Z"``,
    ``"2025-12-08T17:02:15+00:00"`` and ``"2024-09-18 07:19:03.518831+00:00"``.
    A non-zero UTC offset is applied. Raises :class:`BadNoticeError` naming ``what``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ctx.bad(f"{what} is missing or not a string: {text!r}")
    s = text.strip().replace(" ", "T", 1)
    offset_minutes = 0
    m = _TZ_SUFFIX.search(s)
    if m:
        suffix = m.group(1)
        s = s[: m.start()]
        if suffix != "Z":
            sign = -1 if suffix[0] == "-" else 1
            digits = suffix[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 14 or minutes > 59:  # real UTC offsets run from -12:00 to +14:00
                raise ctx.bad(f"{what} {text!r} has an impossible UTC offset {suffix}")
            offset_minutes = sign * (hours * 60 + minutes)
    try:
        t = Time(s, format="isot", scale="utc")
    except ValueError as exc:
        raise ctx.bad(f"{what} {text!r} is not an ISO 8601 time") from exc
    if offset_minutes:
        t = Time(t.mjd - offset_minutes / 1440.0, format="mjd", scale="utc")
        t.format = "isot"
    return t


# --------------------------------------------------------------------------- numbers


def to_float(value: Any, ctx: NoticeContext, what: str) -> float:
    """A finite float from a number or numeric string, else :class:`BadNoticeError`."""
    if isinstance(value, bool):
        raise ctx.bad(f"{what} is a boolean, not a number")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ctx.bad(f"{what} is not a number: {_short(value)}") from exc
    if not math.isfinite(x):
        raise ctx.bad(f"{what} is not finite: {value!r}")
    return x


def to_int(value: Any, ctx: NoticeContext, what: str) -> int:
    """An integer from an int or a decimal/hex string (``"0x20000001"``)."""
    if isinstance(value, bool):
        raise ctx.bad(f"{what} is a boolean, not an integer")
    if isinstance(value, int):
        number = value
    else:
        try:
            s = str(value).strip()
            number = (int(s, 16) if s.lower().startswith("0x")
                      else int(float(s)) if "." in s else int(s))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ctx.bad(f"{what} is not an integer: {_short(value)}") from exc
    if (why := implausible_int64(number, what)) is not None:
        raise ctx.bad(why)
    return number


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 400-digit number stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def optional_float(value: Any) -> float | None:
    """A finite float or ``None`` (for optional significance fields)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def check_radec(ra: float, dec: float, ctx: NoticeContext, what: str = "position") -> float:
    """Validate a position in degrees ICRS (RA in [0, 360], Dec in [-90, 90]; anything else
    is refused, never wrapped); returns RA with 360 written as 0."""
    if (why := implausible_radec(ra, dec, what)) is not None:
        raise ctx.bad(why)
    return 0.0 if ra == 360.0 else ra


def jsonable(value: Any) -> Any:
    """Drop bytes and non-JSON values from a nested structure (for ``Event.significance``)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if not isinstance(v, bytes)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value if not isinstance(v, bytes)]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def first_id(value: Any) -> str | None:
    """The first identifier of a unified-schema ``id`` (a string or a list of strings)."""
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if v not in (None, "")), None)
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    s = str(value).strip()
    return s or None


def pick(d: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The listed keys of ``d`` that are present and not ``None``, made JSON-able."""
    return {k: jsonable(d[k]) for k in keys if k in d and d[k] is not None}


# --------------------------------------------------------------------------- events


def retraction_event(ctx: NoticeContext, *, event_id: str, kind: EventKind, instrument: str,
                     trigger_time: Time, notice_type: str, notice_time: Time | None,
                     serial: int | None = None, role: str = "observation",
                     significance: dict[str, Any] | None = None) -> Event:
    """An :class:`Event` with ``action=RETRACT`` and no localization."""
    return ctx.make_event(
        event_id=event_id, kind=kind, instrument=instrument, trigger_time=trigger_time,
        localization=None, serial=serial, action=NoticeAction.RETRACT, notice_type=notice_type,
        notice_time=notice_time, role=role, significance=significance or {},
    )

"""The plausibility policy applied at every entrance (notices, alerts, partner detections).

A value that parses but makes no sense is refused with a reason, never bent into range or
discovered later in the database:

* **times** (MJD, UTC or TAI: the 37 s between them do not matter here) must lie in the survey
  era, from :data:`EARLIEST_MJD` (1990-01-01, before the first GCN notice and any alert this
  engine can meet) to :data:`FUTURE_MARGIN_DAYS` after "now" as the caller sees it (the wall
  clock by default), so that one absurd alert time cannot move the engine's clock and expire
  every live event;
* **positions** are degrees ICRS with RA in [0, 360] and Dec in [-90, 90], finite;
* **error radii** are finite, positive and at most 180 deg; containments lie in (0, 1);
* **integers** fit a signed 64-bit column; **texts** fit their store column.

Each check returns ``None`` when the value is acceptable, else the reason as a sentence
naming ``what``; callers raise their own typed error (:class:`~mmcross.model.errors.BadNoticeError`,
:class:`~mmcross.model.errors.BadAlertError`...) with their source attached.

>>> implausible_mjd(60082.0, "trigger time", now=61000.0) is None
True
>>> implausible_mjd(1e12, "alert time", now=61000.0)
'alert time MJD 1e+12 is after the survey era (now MJD 61000 + 1 d)'
>>> implausible_radec(1e308, 10.0, "position")
'position RA 1e+308 deg is outside [0, 360]'
"""

from __future__ import annotations

import math
import time
from typing import Any

#: 1990-01-01T00:00 UTC as MJD: nothing this engine matches is older.
EARLIEST_MJD = 47892.0
#: How far after "now" a time may be (days): clocks disagree, notices are not from the future.
FUTURE_MARGIN_DAYS = 1.0
#: Largest error radius accepted (deg): a radius beyond the antipode is not a region.
MAX_ERROR_RADIUS_DEG = 180.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNIX_EPOCH_MJD = 40587.0


def now_mjd() -> float:
    """The wall clock as MJD (UTC)."""
    return _UNIX_EPOCH_MJD + time.time() / 86400.0


def implausible_mjd(mjd: float, what: str, *, now: float | None = None) -> str | None:
    """Why ``mjd`` (days) is not a plausible time, or ``None``; ``now`` (MJD) defaults to the
    wall clock."""
    if not isinstance(mjd, int | float) or not math.isfinite(mjd):
        return f"{what} {mjd!r} is not a finite MJD"
    if mjd < EARLIEST_MJD:
        return f"{what} MJD {mjd:.6g} is before the survey era (MJD {EARLIEST_MJD:g}, 1990-01-01)"
    now = now_mjd() if now is None else now
    if mjd > now + FUTURE_MARGIN_DAYS:
        return (f"{what} MJD {mjd:.6g} is after the survey era (now MJD {now:.6g} + "
                f"{FUTURE_MARGIN_DAYS:g} d)")
    return None


def implausible_radec(ra: float, dec: float, what: str) -> str | None:
    """Why (ra, dec) in degrees ICRS is not a plausible position, or ``None``."""
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return f"{what} ({ra!r}, {dec!r}) deg is not finite"
    if not 0.0 <= ra <= 360.0:
        return f"{what} RA {ra:.6g} deg is outside [0, 360]"
    if not -90.0 <= dec <= 90.0:
        return f"{what} Dec {dec:.6g} deg is outside [-90, 90]"
    return None


def implausible_radius(radius: float, what: str) -> str | None:
    """Why ``radius`` (deg) is not a plausible error radius, or ``None``."""
    if not math.isfinite(radius) or radius <= 0.0:
        return f"{what} {radius!r} deg is not a positive number"
    if radius > MAX_ERROR_RADIUS_DEG:
        return f"{what} {radius:.6g} deg is beyond {MAX_ERROR_RADIUS_DEG:g} deg"
    return None


def implausible_probability(p: float, what: str) -> str | None:
    """Why ``p`` is not a containment probability in (0, 1), or ``None``."""
    if not (math.isfinite(p) and 0.0 < p < 1.0):
        return f"{what} {p!r} is not a probability in (0, 1)"
    return None


def implausible_int64(value: Any, what: str) -> str | None:
    """Why ``value`` does not fit a signed 64-bit integer column, or ``None``."""
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return f"{what} {value} does not fit a 64-bit integer"
    return None


def implausible_text(value: str, what: str, max_length: int) -> str | None:
    """Why ``value`` is too long for its column of ``max_length`` characters, or ``None``."""
    if len(value) > max_length:
        return f"{what} is {len(value)} characters long, more than {max_length}"
    return None


def implausible_json(value: Any, what: str, depth: int = 0) -> str | None:
    """Why a JSON-able value cannot be stored (an integer beyond 64 bits, a non-finite float,
    nesting deeper than 32), or ``None``."""
    if depth > 32:
        return f"{what} is nested more than 32 levels deep"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        return implausible_int64(value, what)
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{what} {value!r} is not finite"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if (why := implausible_json(item, f"{what}.{key}", depth + 1)) is not None:
            return why
    return None

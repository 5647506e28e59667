"""Jinja2 filters of the web pages: times, numbers, distances and significance as text."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mmcross.catalogs.queries import SECONDS_PER_YEAR, EventSummary, SkySummary, far_hz

#: Significance fields shown beside the FAR, in this order, when the notice gives a number.
SHOWN = ("signalness", "p_astro", "snr", "rate_snr", "image_snr", "significance",
         "reliability", "sigma")


def utc(iso: str | None) -> str:
    """An ISO UTC time (``2023-05-18T12:59:08.167000000``) to the millisecond, with a space."""
    if not iso:
        return ""
    text = iso.rstrip("Zz").replace("T", " ")
    head, dot, frac = text.partition(".")
    return f"{head}.{(frac + '000')[:3]}" if dot else head


def num(value: float | None) -> str:
    """A positive quantity (areas, deg^2) to about four significant digits."""
    if value is None or not math.isfinite(value):
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def full(value: float | None) -> str:
    """A float exactly as Python writes it back (for data attributes)."""
    return "" if value is None else repr(float(value))


def distance(sky: SkySummary | None) -> str:
    """``mean ± std`` in Mpc, or ``""`` when the map has no distance."""
    if sky is None or sky.distance_mean is None or sky.distance_std is None:
        return ""
    return f"{sky.distance_mean:.0f} \u00b1 {sky.distance_std:.0f}"


def significance_of(fields: Mapping[str, Any]) -> str:
    """The FAR (Hz and "1 per N yr"), the numeric significance fields a notice gave and
    its most probable source classes (GW ``classification``)."""
    parts = []
    far = far_hz(fields)
    if far is not None and math.isfinite(far) and far > 0:
        parts.append(f"FAR {far:.3g} Hz (1 per {1.0 / (far * SECONDS_PER_YEAR):.3g} yr)")
    for key in SHOWN:
        value = fields.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {value:.3g}")
    classes = fields.get("classification")
    if isinstance(classes, Mapping):
        ranked = sorted(((float(v), str(k)) for k, v in classes.items()
                         if isinstance(v, int | float) and v >= 0.01), reverse=True)
        parts += [f"{name} {p:.2g}" for p, name in ranked[:3]]
    return ", ".join(parts)


def significance(event: EventSummary) -> str:
    """:func:`significance_of` the event's latest notice."""
    return significance_of(event.significance)


FILTERS = {"utc": utc, "num": num, "full": full, "distance": distance,
           "significance": significance, "significance_of": significance_of}
"""Every filter by its template name."""

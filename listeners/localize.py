"""Build :class:`mmcross.model.localization.Localization` objects for parsed notices.

Thin wrappers over the Localization constructors that turn any failure into an mmcross
error naming the notice source (a listener never lets a ``ValueError`` escape). Circles,
ellipses and boxes become analytic localizations (exact, no pixels); ``ctx.tolerance`` and
``ctx.max_order`` only set the pixels made on demand for export. Positions and radii are
degrees ICRS.
"""

from __future__ import annotations

import logging

from mmcross.listeners.common import NoticeContext
from mmcross.listeners.radii import CircleSpec
from mmcross.model import shapes
from mmcross.model.errors import MmcrossError
from mmcross.model.localization import Localization
from mmcross.model.plausibility import implausible_radius

logger = logging.getLogger(__name__)

#: Radii below this (deg, ~0.36 arcsec) are raised to it (an exported rasterisation stays
#: within HEALPix order 29).
MIN_RADIUS_DEG = 1e-4


def circle(ctx: NoticeContext, ra: float, dec: float, spec: CircleSpec) -> Localization:
    """A circle of ``spec.radius`` deg containing ``spec.containment`` around (ra, dec)."""
    if (why := implausible_radius(spec.radius, "error radius")) is not None:
        raise ctx.bad(why)
    if not 0.0 < spec.containment < 1.0:
        raise ctx.bad(f"containment {spec.containment} is not in (0, 1)")
    radius = min(max(spec.radius, MIN_RADIUS_DEG), 179.0)
    return _build(ctx, "circle", lambda: shapes.circle(
        ra, dec, radius, spec.containment, model=spec.model, tolerance=ctx.tolerance,
        max_order=ctx.max_order))


def ellipse(ctx: NoticeContext, ra: float, dec: float, semi_major: float, semi_minor: float,
            position_angle: float, containment: float) -> Localization:
    """An ellipse (semi-axes in deg, position angle deg east of north) at ``containment``."""
    if not (semi_major > 0.0 and semi_minor > 0.0):
        raise ctx.bad(f"ellipse semi-axes {semi_major}, {semi_minor} deg are not positive")
    if not 0.0 < containment < 1.0:
        raise ctx.bad(f"containment {containment} is not in (0, 1)")
    a, b = max(semi_major, semi_minor), min(semi_major, semi_minor)
    pa = position_angle if semi_major >= semi_minor else position_angle + 90.0
    return _build(ctx, "ellipse", lambda: shapes.ellipse(
        ra, dec, max(a, MIN_RADIUS_DEG), max(b, MIN_RADIUS_DEG), pa % 180.0, containment,
        tolerance=ctx.tolerance, max_order=ctx.max_order))


def box(ctx: NoticeContext, ra: float, dec: float, ra_plus: float, ra_minus: float,
        dec_plus: float, dec_minus: float, containment: float) -> Localization:
    """IceCube-style asymmetric RA/Dec errors (deg) at ``containment``."""
    errs = (ra_plus, ra_minus, dec_plus, dec_minus)
    if not all(e > 0.0 for e in errs):
        raise ctx.bad(f"asymmetric errors {errs} deg are not all positive")
    return _build(ctx, "box", lambda: shapes.box(
        ra, dec, *(max(e, MIN_RADIUS_DEG) for e in errs), containment,
        tolerance=ctx.tolerance, max_order=ctx.max_order))


def skymap(ctx: NoticeContext, data: bytes, what: str = "sky map") -> Localization:
    """A HEALPix FITS sky map given as bytes (LVK ``event.skymap``)."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise ctx.bad(f"{what} is empty or not bytes")
    return _build(ctx, what, lambda: Localization.from_fits(
        bytes(data), max_bytes=ctx.max_skymap_bytes))


def _build(ctx: NoticeContext, what: str, make) -> Localization:
    try:
        return make()
    except MmcrossError as exc:
        raise type(exc)(f"{exc} (in {ctx.where})") from exc
    except (ValueError, TypeError, OverflowError, ArithmeticError, IndexError, KeyError) as exc:
        raise ctx.bad(f"cannot build the {what} localization: {exc}") from exc

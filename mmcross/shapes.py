"""Rasterise analytic error regions (circle, ellipse, box) into multi-order HEALPix maps.

Models (all centred on (ra, dec), degrees ICRS):

* ``circle`` / ``fisher``: von Mises-Fisher density ``exp(kappa (cos theta - 1))`` on the
  sphere, whose credible level at angular distance theta is
  ``CL = (1 - exp(-kappa u)) / (1 - exp(-2 kappa))`` with ``u = 1 - cos theta``.
* ``circle`` / ``gaussian``, ``ellipse``, ``box``: 2-D Gaussians in the Lambert azimuthal
  equal-area plane tangent at the centre (x east, y north, radius ``2 sin(theta/2)``, i.e. the
  chord). The projection preserves area, so the plane density *is* the density per steradian
  and ``CL = 1 - exp(-rho^2 / 2)`` with rho the (split) Mahalanobis distance, exactly (up to
  the negligible mass the plane Gaussian puts beyond the antipode, renormalised away; for the
  circle that truncation is included exactly). Angular extents ``a`` (deg) map to Lambert
  lengths ``2 sin(a/2)``, so a circle of angular radius r holds exactly ``containment``.
* ``box``: a split Gaussian: scales ``sigma_east``, ``sigma_west``, ``sigma_north``,
  ``sigma_south`` on each side. Its credible level is still ``1 - exp(-rho^2/2)`` and its
  ``containment`` region is the four quarter-ellipses reaching the stated errors.

Rasterisation: starting at order 0, each pixel's range of the model's radial variable (chord
distance for circles, rho for ellipses/boxes) is bounded from its centre value and the pixel's
circumradius (``healpy.max_pixrad``) with a Lipschitz bound; a pixel is split while the
analytic credible level anywhere in it may differ from the value at its centre by more than
``tolerance``, up to ``max_order``. Leaves carry the density at their centre (renormalised).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import healpy as hp
import numpy as np

from mmcross.alert import check_coordinates
from mmcross.errors import BadCoordinatesError
from mmcross.localization import Localization, order_ipix_to_uniq

log = logging.getLogger(__name__)

_MODELS = ("fisher", "gaussian")


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

def unit_vector(ra: float | np.ndarray, dec: float | np.ndarray) -> np.ndarray:
    """Unit vector(s) (..., 3) of positions in degrees ICRS."""
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def local_frame(ra: float, dec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, east, north) unit vectors at (ra, dec) degrees ICRS."""
    a, d = math.radians(ra), math.radians(dec)
    centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    return centre, east, north


def lambert_xy(vec: np.ndarray, centre: np.ndarray, east: np.ndarray,
               north: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lambert azimuthal equal-area coordinates (x east, y north; radians-like, radius = chord
    length 2 sin(theta/2)) of unit vectors ``vec`` (N, 3); also returns the chord."""
    chord = np.linalg.norm(vec - centre, axis=-1)
    a = vec @ east
    b = vec @ north
    h = np.hypot(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(h > 0, chord * a / h, 0.0)
        y = np.where(h > 0, chord * b / h, chord)
    return x, y, chord


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

@dataclass
class _Model:
    """An analytic sky density: radial variable, its credible level and log density."""

    ra: float
    dec: float

    def __post_init__(self) -> None:
        self.centre, self.east, self.north = local_frame(self.ra, self.dec)

    # radial variable t(vec) and its Lipschitz constant w.r.t. chord distance at chord s
    def radial(self, vec: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def lipschitz(self, chord_max: np.ndarray) -> np.ndarray | float:
        raise NotImplementedError

    def cl(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def log_density(self, t: np.ndarray) -> np.ndarray:
        """Natural log of the density per sr (up to a constant)."""
        raise NotImplementedError

    def credible_level(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Analytic credible level (0..1) at positions in degrees ICRS."""
        return self.cl(self.radial(unit_vector(ra, dec)))

    def describe(self) -> str:
        raise NotImplementedError


def _rho_of_containment(containment: float) -> float:
    """Mahalanobis radius of a 2-D Gaussian holding ``containment``."""
    return math.sqrt(-2.0 * math.log1p(-containment))


def _bisect(f, lo: float, hi: float, n: int = 200) -> float:
    """Root of increasing ``f`` on [lo, hi] (geometric bisection, lo > 0)."""
    for _ in range(n):
        mid = math.sqrt(lo * hi)
        if f(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi / lo - 1 < 1e-15:
            break
    return math.sqrt(lo * hi)


class FisherModel(_Model):
    """von Mises-Fisher: density ~ exp(-kappa u), u = 1 - cos(theta) = chord^2 / 2."""

    def __init__(self, ra: float, dec: float, radius: float, containment: float) -> None:
        super().__init__(ra, dec)
        self.radius, self.containment = radius, containment
        self.kappa = fisher_kappa(radius, containment)

    def radial(self, vec):
        return np.linalg.norm(vec - self.centre, axis=-1)

    def lipschitz(self, chord_max):
        return 1.0

    def cl(self, t):
        u = 0.5 * np.square(t)
        return -np.expm1(-self.kappa * u) / -math.expm1(-2.0 * self.kappa)

    def log_density(self, t):
        return -self.kappa * 0.5 * np.square(t)

    def describe(self):
        return (f"circle fisher ra={self.ra:.6f} dec={self.dec:.6f} r={self.radius:.6g}deg "
                f"cl={self.containment:g} kappa={self.kappa:.6g}")


def fisher_kappa(radius: float, containment: float) -> float:
    """Concentration kappa of a von Mises-Fisher distribution whose cap of ``radius`` (deg)
    holds ``containment``. Raises ValueError when even a uniform sky would hold more."""
    u = 2.0 * math.sin(math.radians(radius) / 2) ** 2
    if u / 2 >= containment:
        raise ValueError(f"a {radius} deg cap covers {u / 2:.4f} of the sky, not less than "
                         f"the containment {containment}")
    k_hi = -math.log1p(-containment) / u  # exact when exp(-2 kappa) is negligible

    def g(k: float) -> float:
        return -math.expm1(-k * u) - containment * -math.expm1(-2.0 * k)

    if g(k_hi * (1 - 1e-15)) <= 0 or math.exp(-2 * k_hi) == 0:
        return k_hi
    return _bisect(g, k_hi * 1e-12, k_hi)


class _LambertGaussian(_Model):
    """Split 2-D Gaussian in the Lambert plane: sigma_e, sigma_w, sigma_n, sigma_s (radians),
    major axis rotated by ``pa`` (deg east of north) for the symmetric ellipse."""

    def __init__(self, ra, dec, sig_e, sig_w, sig_n, sig_s, pa=0.0, truncation=1.0):
        super().__init__(ra, dec)
        self.sig = (sig_e, sig_w, sig_n, sig_s)
        self.sigma_min = min(self.sig)
        self.pa = math.radians(pa)
        self.truncation = truncation  # probability mass inside the Lambert disc (radius 2)

    def radial(self, vec):
        x, y, _ = lambert_xy(vec, self.centre, self.east, self.north)
        if self.pa:
            # coordinates along (minor-ish "east") and (major-ish "north") rotated axes
            c, s = math.cos(self.pa), math.sin(self.pa)
            x, y = x * c - y * s, x * s + y * c
        sig_e, sig_w, sig_n, sig_s = self.sig
        sx = np.where(x >= 0, sig_e, sig_w)
        sy = np.where(y >= 0, sig_n, sig_s)
        return np.hypot(x / sx, y / sy)

    def lipschitz(self, chord_max):
        # Lambert map stretches tangential lengths by 1 / cos(theta/2) <= 2 / sqrt(4 - s^2)
        s = np.minimum(chord_max, 1.999)
        return (2.0 / np.sqrt(4.0 - s * s)) / self.sigma_min

    def cl(self, t):
        return np.minimum(-np.expm1(-0.5 * np.square(t)) / self.truncation, 1.0)

    def log_density(self, t):
        return -0.5 * np.square(t)


class GaussianCircleModel(_Model):
    """Circular Gaussian in angular distance: density per sr ~ exp(-theta^2 / (2 sigma^2)),
    the usual reading of a "2-D Gaussian in the tangent plane" with sigma in degrees.

    Its credible level is integrated numerically on the sphere (so it stays exact for large
    radii, where it differs from the Fisher model; the two agree for small circles).
    """

    _N = 20001

    def __init__(self, ra, dec, radius, containment):
        super().__init__(ra, dec)
        r = math.radians(radius)
        if (1 - math.cos(r)) / 2 >= containment:
            raise ValueError(f"a {radius} deg cap covers {(1 - math.cos(r)) / 2:.4f} of the "
                             f"sky, not less than the containment {containment}")
        self.radius, self.containment = radius, containment
        sig0 = r / _rho_of_containment(containment)

        def g(sig: float) -> float:  # CL(r) decreases as sigma grows
            self._tabulate(sig)
            return containment - float(self.cl(np.array([r]))[0])

        self.sigma = sig0 if abs(g(sig0)) < 1e-13 else _bisect(g, sig0 * 0.5, sig0 * 1e3)
        self._tabulate(self.sigma)

    def _tabulate(self, sigma: float) -> None:
        """Cumulative probability table CL(theta) on [0, min(pi, 40 sigma)] (Simpson)."""
        top = min(math.pi, 40.0 * sigma)
        theta = np.linspace(0.0, top, self._N)
        f = np.exp(-0.5 * np.square(theta / sigma)) * np.sin(theta)
        h = theta[1] - theta[0]
        # cumulative Simpson on pairs of intervals, trapezoid-corrected at odd nodes
        pair = h / 3 * (f[:-2:2] + 4 * f[1:-1:2] + f[2::2])
        cum = np.zeros(self._N)
        cum[2::2] = np.cumsum(pair)
        mid = h / 12 * (5 * f[:-2:2] + 8 * f[1:-1:2] - f[2::2])  # integral over first half
        cum[1::2] = cum[:-2:2] + mid
        self._theta, self._cum = theta, cum / cum[-1]
        self.sigma = sigma

    def radial(self, vec):
        chord = np.linalg.norm(vec - self.centre, axis=-1)
        return 2.0 * np.arcsin(np.minimum(chord / 2, 1.0))

    def lipschitz(self, chord_max):
        return 1.05  # arc / chord <= 1.05 for pixel circumradii (<= 0.8 rad at order 0)

    def cl(self, t):
        return np.interp(t, self._theta, self._cum, right=1.0)

    def log_density(self, t):
        return -0.5 * np.square(t / self.sigma)

    def describe(self):
        return (f"circle gaussian ra={self.ra:.6f} dec={self.dec:.6f} r={self.radius:.6g}deg "
                f"cl={self.containment:g} sigma={math.degrees(self.sigma):.6g}deg")


class EllipseModel(_LambertGaussian):
    """2-D Gaussian whose ``containment`` ellipse has semi-axes a >= b (deg), the major axis
    at position angle ``pa`` (deg east of north)."""

    def __init__(self, ra, dec, semi_major, semi_minor, position_angle, containment):
        rho = _rho_of_containment(containment)
        sa = 2.0 * math.sin(math.radians(semi_major) / 2) / rho
        sb = 2.0 * math.sin(math.radians(semi_minor) / 2) / rho
        # rotate so the local "north" axis is the major axis: y' = x sin(pa) + y cos(pa)
        super().__init__(ra, dec, sb, sb, sa, sa, pa=position_angle)
        self.params = (semi_major, semi_minor, position_angle, containment)

    def describe(self):
        a, b, pa, c = self.params
        return (f"ellipse ra={self.ra:.6f} dec={self.dec:.6f} a={a:.6g}deg b={b:.6g}deg "
                f"pa={pa:.6g}deg cl={c:g}")


class BoxModel(_LambertGaussian):
    """Split 2-D Gaussian reaching the stated on-sky errors (deg) at ``containment``."""

    def __init__(self, ra, dec, east, west, north, south, containment):
        rho = _rho_of_containment(containment)
        sig = [2.0 * math.sin(math.radians(e) / 2) / rho for e in (east, west, north, south)]
        super().__init__(ra, dec, *sig)
        self.params = (east, west, north, south, containment)

    def describe(self):
        e, w, n, s, c = self.params
        return (f"box ra={self.ra:.6f} dec={self.dec:.6f} east={e:.6g}deg west={w:.6g}deg "
                f"north={n:.6g}deg south={s:.6g}deg cl={c:g}")


# --------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------

_CHUNK = 1 << 18
_NEAR = 3.0  # pixels closer than this many (Lipschitz-scaled) radii get the safe bound
_SAFETY = 0.05  # relative margin on the sampled range of far pixels
_NEAR_FRACTION = 0.8  # near pixels must resolve to this fraction of the tolerance
_FAR_FRACTION = 0.9  # other pixels to this one (room for the greedy-ranking bias)


def _pixel_errors(model: _Model, order: int, pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest |CL - CL(centre)| over each pixel, log density at the centre).

    Near the centre of the model the radial variable's range over a pixel is bounded safely by
    its centre value +- Lipschitz constant x circumradius; elsewhere the variable is close to
    linear across a pixel and its range is taken from 8 boundary samples (corners and edge
    midpoints) with a small margin.
    """
    nside = 1 << order
    vec = np.column_stack(hp.pix2vec(nside, pix, nest=True))
    bnd = np.asarray(hp.boundaries(nside, pix, step=2, nest=True))  # (n, 3, 8)
    bnd = np.moveaxis(bnd.reshape(len(pix), 3, -1), 1, 2)  # (n, 8, 3)
    t_c = model.radial(vec)
    radius = np.linalg.norm(bnd - vec[:, None, :], axis=-1).max(axis=1) * 1.02
    chord_c = np.linalg.norm(vec - model.centre, axis=-1)
    reach = model.lipschitz(chord_c + radius) * radius
    t_b = model.radial(bnd.reshape(-1, 3)).reshape(len(pix), -1)
    t_lo, t_hi = t_b.min(axis=1), t_b.max(axis=1)
    margin = _SAFETY * (t_hi - t_lo)
    near = t_c < _NEAR * reach
    t_lo = np.where(near, np.maximum(t_c - reach, 0.0), np.minimum(t_lo - margin, t_c))
    t_hi = np.where(near, t_c + reach, np.maximum(t_hi + margin, t_c))
    cl_c = model.cl(t_c)
    err = np.maximum(model.cl(t_hi) - cl_c, cl_c - model.cl(np.maximum(t_lo, 0.0)))
    # near the mode a pixel's own probability (counted in its greedy credible level) adds to
    # the error: keep a margin there
    err = np.where(near, err * (_FAR_FRACTION / _NEAR_FRACTION), err)
    return err, model.log_density(t_c)


def rasterise(model: _Model, tolerance: float = 1e-3, max_order: int = 18,
              start_order: int = 0) -> Localization:
    """Adaptive multi-order map of ``model``: split pixels until the analytic credible level
    anywhere in a pixel is within ``tolerance`` of its value at the pixel centre."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    if not 0 <= max_order <= 29:
        raise ValueError(f"max_order must be in [0, 29], got {max_order}")
    out_uniq, out_logd = [], []
    order = min(start_order, max_order)
    pix = np.arange(12 * 4**order, dtype=np.int64)
    unresolved, worst = 0, 0.0
    while len(pix):
        err = np.empty(len(pix))
        logd = np.empty(len(pix))
        for lo in range(0, len(pix), _CHUNK):
            err[lo:lo + _CHUNK], logd[lo:lo + _CHUNK] = _pixel_errors(
                model, order, pix[lo:lo + _CHUNK])
        split = err > _FAR_FRACTION * tolerance
        if order >= max_order:
            unresolved, worst = int(split.sum()), float(err.max(initial=0.0))
            split[:] = False
        leaf = ~split
        out_uniq.append(order_ipix_to_uniq(order, pix[leaf]))
        out_logd.append(logd[leaf])
        pix = (4 * pix[split][:, None] + np.arange(4)).ravel()
        order += 1
    if unresolved:
        log.info("%s: %d pixels at max order %d still span credible levels up to %.3g "
                    "(tolerance %.3g)", model.describe(), unresolved, max_order, worst, tolerance)
    uniq = np.concatenate(out_uniq)
    logd = np.concatenate(out_logd)
    density = np.exp(logd - logd.max())
    return Localization(uniq, density, meta={"SHAPE": model.describe()})


def _check_centre(ra: float, dec: float, what: str) -> None:
    check_coordinates(np.array([ra]), np.array([dec]), what=what)


def _check_positive(what: str, **values: float) -> None:
    for k, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise BadCoordinatesError(f"{what}: {k}={v!r} deg must be a positive number")


def _check_containment(containment: float) -> None:
    if not 0 < containment < 1:
        raise ValueError(f"containment must be in (0, 1), got {containment}")


def circle(ra: float, dec: float, radius: float, containment: float = 0.9, *,
           model: str = "fisher", tolerance: float = 1e-3, max_order: int = 18) -> Localization:
    """See :meth:`Localization.from_circle` (degrees ICRS)."""
    _check_centre(ra, dec, "circle centre")
    _check_positive("circle", radius=radius)
    _check_containment(containment)
    if model not in _MODELS:
        raise ValueError(f"circle model must be one of {_MODELS}, got {model!r}")
    try:
        m = (FisherModel if model == "fisher" else GaussianCircleModel)(ra, dec, radius,
                                                                         containment)
    except ValueError as exc:
        raise BadCoordinatesError(f"circle at ({ra}, {dec}): {exc}") from exc
    return rasterise(m, tolerance, max_order)


def ellipse(ra: float, dec: float, semi_major: float, semi_minor: float,
            position_angle: float, containment: float = 0.9, *, tolerance: float = 1e-3,
            max_order: int = 18) -> Localization:
    """See :meth:`Localization.from_ellipse` (degrees ICRS, PA east of north)."""
    _check_centre(ra, dec, "ellipse centre")
    _check_positive("ellipse", semi_major=semi_major, semi_minor=semi_minor)
    _check_containment(containment)
    if not math.isfinite(position_angle):
        raise BadCoordinatesError(f"ellipse position angle {position_angle!r} is not finite")
    if semi_minor > semi_major:
        semi_major, semi_minor, position_angle = semi_minor, semi_major, position_angle + 90
    if semi_major >= 90:
        raise BadCoordinatesError(f"ellipse semi-major axis {semi_major} deg is >= 90 deg")
    m = EllipseModel(ra, dec, semi_major, semi_minor, position_angle % 180, containment)
    return rasterise(m, tolerance, max_order)


def box(ra: float, dec: float, ra_plus: float, ra_minus: float, dec_plus: float,
        dec_minus: float, containment: float = 0.9, *, tolerance: float = 1e-3,
        max_order: int = 18) -> Localization:
    """See :meth:`Localization.from_box`. RA errors are in RA-coordinate degrees (IceCube's
    convention) and are multiplied by cos(dec) to give on-sky extents; at the poles, where
    that vanishes, the mean Dec error is used instead."""
    _check_centre(ra, dec, "box centre")
    _check_positive("box", ra_plus=ra_plus, ra_minus=ra_minus, dec_plus=dec_plus,
                    dec_minus=dec_minus)
    _check_containment(containment)
    cosd = math.cos(math.radians(dec))
    if cosd < 1e-9:  # at a pole the RA coordinate errors carry no on-sky extent
        east = west = 0.5 * (dec_plus + dec_minus)
    else:
        east, west = ra_plus * cosd, ra_minus * cosd
    if max(east, west, dec_plus, dec_minus) >= 90:
        raise BadCoordinatesError(f"box errors ({east}, {west}, {dec_plus}, {dec_minus}) deg "
                                  "reach 90 deg")
    m = BoxModel(ra, dec, east, west, dec_plus, dec_minus, containment)
    return rasterise(m, tolerance, max_order)

"""Analytic error regions (circle, ellipse, box) as localizations, and their rasterisation
into multi-order HEALPix maps for export.

:func:`circle`, :func:`ellipse` and :func:`box` check a notice's numbers and return an
analytic :class:`~mmcross.model.localization.Localization` of a region of
:mod:`mmcross.model.regions` (which states the models and their closed forms): matched,
sampled and measured exactly, without pixels. Its pixels are made by :func:`rasterise` only
when asked for (plots, MOC, FITS), to ``tolerance`` and ``max_order``.

Models (all centred on (ra, dec), degrees ICRS):

* ``circle`` / ``fisher``: von Mises-Fisher density ``exp(kappa (cos theta - 1))`` on the
  sphere, whose credible level at angular distance theta is
  ``CL = (1 - exp(-kappa u)) / (1 - exp(-2 kappa))`` with ``u = 1 - cos theta``.
* ``circle`` / ``gaussian``: density ``exp(-theta^2 / 2 sigma^2)`` in angular distance.
* ``ellipse``, ``box``: 2-D (split) Gaussians in the Lambert azimuthal equal-area plane tangent
  at the centre (x east, y north, radius ``2 sin(theta/2)``, i.e. the chord). The projection
  preserves area, so the plane density *is* the density per steradian and
  ``CL = (1 - exp(-rho^2 / 2)) / T`` with rho the (split) Mahalanobis distance and T the plane
  mass inside the Lambert disc. Angular extents ``a`` (deg) map to Lambert lengths
  ``2 sin(a/2)``; the ``containment`` region of a box is the four quarter-ellipses reaching the
  stated errors.

Rasterisation (a numba kernel, depth first from the 12 base pixels, so leaves come out in
NESTED order): each pixel's range of the model's radial variable (chord distance for Fisher
circles, angle for Gaussian circles, rho for ellipses/boxes) is bounded, near the model's centre,
from its centre value and the pixel circumradius (``healpy.max_pixrad``) with a Lipschitz bound,
and elsewhere from its 3 x 3 grid of face-coordinate samples (corners, edge midpoints, centre)
with a 5% margin. A pixel is split while the analytic credible level anywhere in it may differ
from the value at its centre by more than 0.95 ``tolerance`` (0.85 near the centre and below
credible level 0.1, where a pixel's own probability weighs in), up to ``max_order``. The grid
of a pixel's 4 children is the parent's 5 x 5 grid, so a split costs 16 new points. Leaves
carry their mean density (Simpson's rule on the grid; HEALPix face coordinates are equal-area):
sampling the centre only would lose ~1e-4 of the mass in the convex tails, and renormalising
would lift every credible level by that much.

The stored map's credible levels are ligo.skymap's greedy ``searched_prob``, not the analytic
level at the centre, so the result is then checked leaf by leaf against the bounds of the
analytic level over the leaf, and leaves off by more than ``tolerance`` are split again (rare:
e.g. rings of equal-density pixels around a circle centred on a pole).

The number of leaves, ~3e6 at ``tolerance`` 1e-3 (it scales as ``tolerance**-2``), does not
depend on the size of the shape, only the depth does: by default ``max_order`` is chosen from
the model's smallest scale (:func:`auto_max_order`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import healpy as hp
import numpy as np
from numba import njit

from mmcross.model.alert import check_coordinates
from mmcross.model.errors import BadCoordinatesError
from mmcross.model.localization import (
    MAX_ORDER,
    Localization,
    uniq_to_order_ipix,
    uniq_to_ranges29,
)
from mmcross.model.regions import (
    P_SIG,
    P_TRUNC,
    AnalyticRegion,
    Box,
    Ellipse,
    FisherCircle,
    GaussianCircle,
    fisher_kappa,
    geometric_bisect,
    local_frame,
    rho_of_containment,
    unit_vector,
)

log = logging.getLogger(__name__)

_MODELS = ("fisher", "gaussian")


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

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

    def radial(self, vec: np.ndarray) -> np.ndarray:
        """Radial variable of unit vectors (..., 3): chord, angle (rad) or rho."""
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

    def scale(self) -> float:
        """Smallest length scale of the density (radians), setting the deepest order needed."""
        raise NotImplementedError

    def kernel_params(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(kind, parameter vector, CL table abscissae, CL table values) for the kernels."""
        p = np.zeros(_N_PARAMS)
        p[0:3], p[3:6], p[6:9] = self.centre, self.east, self.north
        return -1, p, np.zeros(2), np.zeros(2)


class FisherModel(_Model):
    """von Mises-Fisher: density ~ exp(-kappa u), u = 1 - cos(theta) = chord^2 / 2."""

    def __init__(self, ra: float, dec: float, radius: float, containment: float) -> None:
        super().__init__(ra, dec)
        self.radius, self.containment = radius, containment
        self.kappa = fisher_kappa(radius, containment)

    def radial(self, vec):
        return np.linalg.norm(vec - self.centre, axis=-1)

    def cl(self, t):
        u = 0.5 * np.square(t)
        return -np.expm1(-self.kappa * u) / -math.expm1(-2.0 * self.kappa)

    def log_density(self, t):
        return -self.kappa * 0.5 * np.square(t)

    def scale(self):
        return 1.0 / math.sqrt(self.kappa)

    def kernel_params(self):
        _, p, tt, tc = super().kernel_params()
        p[_P_KAPPA], p[_P_NORM] = self.kappa, -math.expm1(-2.0 * self.kappa)
        return _KIND_FISHER, p, tt, tc

    def describe(self):
        return (f"circle fisher ra={self.ra:.6f} dec={self.dec:.6f} r={self.radius:.6g}deg "
                f"cl={self.containment:g} kappa={self.kappa:.6g}")


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

    def cl(self, t):
        return np.minimum(-np.expm1(-0.5 * np.square(t)) / self.truncation, 1.0)

    def log_density(self, t):
        return -0.5 * np.square(t)

    def scale(self):
        return self.sigma_min

    def kernel_params(self):
        _, p, tt, tc = super().kernel_params()
        p[_P_COS], p[_P_SIN] = math.cos(self.pa), math.sin(self.pa)
        p[_P_SIG:_P_SIG + 4] = self.sig
        p[_P_SIGMA_MIN], p[_P_TRUNC] = self.sigma_min, self.truncation
        return _KIND_LAMBERT, p, tt, tc


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
        sig0 = r / rho_of_containment(containment)

        def g(sig: float) -> float:  # CL(r) decreases as sigma grows
            self._tabulate(sig)
            return containment - float(self.cl(np.array([r]))[0])

        self.sigma = sig0 if abs(g(sig0)) < 1e-13 else geometric_bisect(g, sig0 * 0.5, sig0 * 1e3)
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

    def cl(self, t):
        return np.interp(t, self._theta, self._cum, right=1.0)

    def log_density(self, t):
        return -0.5 * np.square(t / self.sigma)

    def scale(self):
        return self.sigma

    def kernel_params(self):
        _, p, _, _ = super().kernel_params()
        p[_P_SIGMA] = self.sigma
        return _KIND_ANGLE, p, self._theta, self._cum

    def describe(self):
        return (f"circle gaussian ra={self.ra:.6f} dec={self.dec:.6f} r={self.radius:.6g}deg "
                f"cl={self.containment:g} sigma={math.degrees(self.sigma):.6g}deg")


class LambertRegionModel(_LambertGaussian):
    """The Lambert-plane (split) Gaussian of an :class:`~mmcross.model.regions.Ellipse` or
    :class:`~mmcross.model.regions.Box`, with the region's own scales and truncation."""

    def __init__(self, region: Ellipse | Box) -> None:
        p = region.params
        pa = region.position_angle if isinstance(region, Ellipse) else 0.0
        super().__init__(region.ra, region.dec, *(float(x) for x in p[P_SIG:P_SIG + 4]),
                         pa=pa, truncation=float(p[P_TRUNC]))
        self.region = region

    def describe(self):
        return self.region.describe()


def model_of(region: AnalyticRegion) -> _Model:
    """The rasterisation model of an analytic region."""
    if isinstance(region, FisherCircle):
        return FisherModel(region.ra, region.dec, region.radius, region.containment)
    if isinstance(region, GaussianCircle):
        return GaussianCircleModel(region.ra, region.dec, region.radius, region.containment)
    return LambertRegionModel(region)


# --------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------

_NEAR = 3.0  # pixels closer than this many (Lipschitz-scaled) radii get the safe bound
_SAFETY = 0.05  # relative margin on the sampled range of far pixels
_NEAR_FRACTION = 0.85  # near pixels must resolve to this fraction of the tolerance
_CORE_LEVEL = 0.1  # ... and so must pixels below this credible level (few pixels, more bias)
_FAR_FRACTION = 0.95  # other pixels to this one (room for the greedy-ranking bias)

_KIND_FISHER, _KIND_ANGLE, _KIND_LAMBERT = 0, 1, 2
# parameter vector of the kernels: centre, east, north (3 each), then
_P_KAPPA, _P_NORM, _P_COS, _P_SIN, _P_SIG, _P_SIGMA_MIN, _P_TRUNC, _P_SIGMA = (
    9, 10, 11, 12, 13, 17, 18, 19)
_N_PARAMS = 20
_F32_ULP = 2.0**-23  # outward rounding of the float32 credible-level bounds of leaves

# HEALPix base-pixel layout (as in healpix_base.cc): ring and longitude index of each face
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.float64)
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.float64)
@njit(cache=True, error_model="numpy", inline="always")
def _xyf2vec(x: float, y: float, face: int, jrll: np.ndarray,
             jpll: np.ndarray) -> tuple[float, float, float]:
    """Unit vector of the point at continuous face coordinates (x, y) in [0, 1]^2 of HEALPix
    base pixel ``face`` (healpix_base.cc ``xyf2loc``; NESTED x along the even bits)."""
    jr = jrll[face] - x - y
    if jr < 1.0:
        nr = jr
        tmp = nr * nr / 3.0
        z = 1.0 - tmp
        sth = math.sqrt(tmp * (2.0 - tmp))
    elif jr > 3.0:
        nr = 4.0 - jr
        tmp = nr * nr / 3.0
        z = tmp - 1.0
        sth = math.sqrt(tmp * (2.0 - tmp))
    else:
        nr = 1.0
        z = (2.0 - jr) * 2.0 / 3.0
        sth = math.sqrt((1.0 - z) * (1.0 + z))
    tmp = jpll[face] * nr + x - y
    if tmp < 0.0:
        tmp += 8.0
    if tmp >= 8.0:
        tmp -= 8.0
    phi = 0.0 if nr < 1e-15 else (0.25 * math.pi) * tmp / nr
    return sth * math.cos(phi), sth * math.sin(phi), z


@njit(cache=True, error_model="numpy", inline="always")
def _radial(kind: int, p: np.ndarray, x: float, y: float, z: float) -> tuple[float, float]:
    """(radial variable t, chord to the centre) of the unit vector (x, y, z)."""
    dx, dy, dz = x - p[0], y - p[1], z - p[2]
    chord = math.sqrt(dx * dx + dy * dy + dz * dz)
    if kind == 0:
        return chord, chord
    if kind == 1:
        return 2.0 * math.asin(min(0.5 * chord, 1.0)), chord
    a = x * p[3] + y * p[4] + z * p[5]
    b = x * p[6] + y * p[7] + z * p[8]
    h = math.sqrt(a * a + b * b)
    if h > 0.0:
        lx, ly = chord * a / h, chord * b / h
    else:
        lx, ly = 0.0, chord
    c, s = p[11], p[12]
    u, v = lx * c - ly * s, lx * s + ly * c
    u = u / (p[13] if u >= 0.0 else p[14])
    v = v / (p[15] if v >= 0.0 else p[16])
    return math.sqrt(u * u + v * v), chord


@njit(cache=True, error_model="numpy", inline="always")
def _cl(kind: int, p: np.ndarray, t: float, table_t: np.ndarray, table_cl: np.ndarray) -> float:
    """Analytic credible level at radial variable ``t``."""
    if kind == 0:
        return -math.expm1(-0.5 * p[9] * t * t) / p[10]
    if kind == 1:
        return np.interp(t, table_t, table_cl)
    return min(-math.expm1(-0.5 * t * t) / p[18], 1.0)


@njit(cache=True, error_model="numpy", inline="always")
def _log_density(kind: int, p: np.ndarray, t: float) -> float:
    if kind == 0:
        return -0.5 * p[9] * t * t
    if kind == 1:
        return -0.5 * (t / p[19]) ** 2
    return -0.5 * t * t


# the 3 x 3 grid of a pixel (corners, edge midpoints, centre; face coordinates in units of the
# pixel side) is stored row-major (y outer); its centre is entry 4
_GRID = np.array([0.0, 0.5, 1.0])


@njit(cache=True, error_model="numpy", inline="always")
def _grid_point(kind, p, face, x, y, jrll, jpll):
    vx, vy, vz = _xyf2vec(x, y, face, jrll, jpll)
    return _radial(kind, p, vx, vy, vz)


@njit(cache=True, error_model="numpy", inline="always")
def _pixel_error(kind, p, table_t, table_cl, grid, row, chord_c, radius):
    """(bound on |CL - CL(centre)| over a pixel, lower and upper bounds of the credible level
    over the pixel) from the radial
    variable on its 3 x 3 grid (``grid[row]``), the chord from the model centre to the pixel
    centre and a bound on the pixel's circumradius (radians).

    Near the model's centre the radial variable's range over the pixel is bounded safely by its
    centre value +- Lipschitz constant x circumradius; elsewhere it is close to linear across
    the pixel and its range is taken from the 8 boundary samples with a small margin.
    """
    t_c = grid[row, 4]
    if kind == 2:
        s = min(chord_c + radius, 1.999)
        reach = (2.0 / math.sqrt(4.0 - s * s)) / p[17] * radius
    elif kind == 1:
        reach = 1.05 * radius
    else:
        reach = radius
    near = t_c < _NEAR * reach
    if near:
        t_lo, t_hi = max(t_c - reach, 0.0), t_c + reach
    else:
        t_lo, t_hi = grid[row, 0], grid[row, 0]
        for k in range(1, 9):
            t_lo, t_hi = min(t_lo, grid[row, k]), max(t_hi, grid[row, k])
        margin = _SAFETY * (t_hi - t_lo)
        t_lo, t_hi = max(t_lo - margin, 0.0), t_hi + margin
    cl_c = _cl(kind, p, t_c, table_t, table_cl)
    cl_lo = _cl(kind, p, t_lo, table_t, table_cl)
    cl_hi = _cl(kind, p, t_hi, table_t, table_cl)
    err = max(cl_hi - cl_c, cl_c - cl_lo)
    if near or cl_c < _CORE_LEVEL:
        err *= _FAR_FRACTION / _NEAR_FRACTION
    return err, cl_lo, cl_hi


@njit(cache=True, error_model="numpy", inline="always")
def _mean_log_density(kind, p, grid, row):
    """Log of the mean density over a pixel: Simpson's rule on its 3 x 3 grid (``grid[row]``;
    HEALPix face coordinates are equal-area), relative to the largest value. Corners and edge
    midpoints are summed in sorted order so that mirror-image pixels get bit-identical
    densities (exact ties)."""
    top = -np.inf
    for k in range(9):
        top = max(top, _log_density(kind, p, grid[row, k]))
    centre = math.exp(_log_density(kind, p, grid[row, 4]) - top)
    c0 = math.exp(_log_density(kind, p, grid[row, 0]) - top)
    c2 = math.exp(_log_density(kind, p, grid[row, 2]) - top)
    c6 = math.exp(_log_density(kind, p, grid[row, 6]) - top)
    c8 = math.exp(_log_density(kind, p, grid[row, 8]) - top)
    e1 = math.exp(_log_density(kind, p, grid[row, 1]) - top)
    e3 = math.exp(_log_density(kind, p, grid[row, 3]) - top)
    e5 = math.exp(_log_density(kind, p, grid[row, 5]) - top)
    e7 = math.exp(_log_density(kind, p, grid[row, 7]) - top)
    total = (_sorted_sum4(c0, c2, c6, c8) + 4.0 * _sorted_sum4(e1, e3, e5, e7)
             + 16.0 * centre) / 36.0
    return top + math.log(total)


@njit(cache=True, error_model="numpy", inline="always")
def _sorted_sum4(a: float, b: float, c: float, d: float) -> float:
    """a + b + c + d added smallest first: the same bits for any order of the arguments."""
    lo1, hi1, lo2, hi2 = min(a, b), max(a, b), min(c, d), max(c, d)
    m1, m2 = max(lo1, lo2), min(hi1, hi2)
    return ((min(lo1, lo2) + min(m1, m2)) + max(m1, m2)) + max(hi1, hi2)


@njit(cache=True, error_model="numpy")
def _refine(kind, p, table_t, table_cl, thresholds, max_order, pixrad, jrll, jpll, start,
            force):
    """Depth-first adaptive subdivision of the NUNIQ pixels ``start`` (sorted by their NESTED
    range): a pixel is split while its error bound exceeds the ``thresholds`` entry of its start
    pixel and its order is below ``max_order``; with ``force`` each start pixel is split once
    regardless. ``pixrad[order]`` bounds the circumradius of pixels of each order (radians).

    Each pixel carries the radial variable on its 3 x 3 grid; a split evaluates the 16 new
    points of the 5 x 5 grid that its 4 children share.

    Returns the leaves in NESTED order: NUNIQ ids, log mean density, and the lower and upper
    bounds of the credible level over each (float32, rounded outwards); the arrays are
    over-allocated buffers of which the first ``n`` entries are used (no copy), then ``n``.
    """
    cap = 1 << 16
    uniq = np.empty(cap, dtype=np.int64)
    logd = np.empty(cap, dtype=np.float64)
    lo = np.empty(cap, dtype=np.float32)
    hi = np.empty(cap, dtype=np.float32)
    n = 0
    depth = 4 * (max_order + 2)
    s_face = np.empty(depth, dtype=np.int64)
    s_order = np.empty(depth, dtype=np.int64)
    s_ix = np.empty(depth, dtype=np.int64)
    s_iy = np.empty(depth, dtype=np.int64)
    s_ipix = np.empty(depth, dtype=np.int64)
    s_t = np.empty((depth, 9))
    s_chord = np.empty(depth)
    fine_t = np.empty((5, 5))
    fine_c = np.empty((5, 5))
    for s in range(len(start)):
        u, threshold = start[s], thresholds[s]
        # NUNIQ -> order, NESTED ipix -> face, x, y (x on the even bits)
        order = 0
        while (np.int64(16) << (2 * order)) <= u:
            order += 1
        ipix = u - (np.int64(4) << (2 * order))
        face = ipix >> (2 * order)
        ix, iy = 0, 0
        for bit in range(order):
            ix |= ((ipix >> (2 * bit)) & 1) << bit
            iy |= ((ipix >> (2 * bit + 1)) & 1) << bit
        inv = math.ldexp(1.0, -order - 1)
        s_face[0], s_order[0], s_ix[0], s_iy[0], s_ipix[0] = face, order, ix, iy, ipix
        for j in range(3):
            for i in range(3):
                t, c = _grid_point(kind, p, face, (2 * ix + i) * inv, (2 * iy + j) * inv,
                                   jrll, jpll)
                s_t[0, 3 * j + i] = t
                if i == 1 and j == 1:
                    s_chord[0] = c
        top = 1
        first = force
        while top > 0:
            top -= 1
            face, order, ix, iy = s_face[top], s_order[top], s_ix[top], s_iy[top]
            ipix = s_ipix[top]
            err, cl_lo, cl_hi = _pixel_error(kind, p, table_t, table_cl, s_t, top,
                                                 s_chord[top], pixrad[order])
            if (err > threshold or first) and order < max_order:
                first = False
                inv = math.ldexp(1.0, -order - 2)  # spacing of the 5 x 5 grid (face units)
                x0, y0 = 4.0 * ix, 4.0 * iy
                for j in range(5):
                    for i in range(5):
                        if i % 2 == 0 and j % 2 == 0:
                            fine_t[j, i] = s_t[top, 3 * (j // 2) + i // 2]
                        else:
                            fine_t[j, i], fine_c[j, i] = _grid_point(
                                kind, p, face, (x0 + i) * inv, (y0 + j) * inv, jrll, jpll)
                for k in range(3, -1, -1):  # pushed in reverse: popped in NESTED order
                    dx, dy = k & 1, k >> 1
                    s_face[top], s_order[top] = face, order + 1
                    s_ix[top], s_iy[top] = 2 * ix + dx, 2 * iy + dy
                    s_ipix[top] = 4 * ipix + k
                    for j in range(3):
                        for i in range(3):
                            s_t[top, 3 * j + i] = fine_t[2 * dy + j, 2 * dx + i]
                    s_chord[top] = fine_c[2 * dy + 1, 2 * dx + 1]
                    top += 1
                continue
            first = False
            if n == cap:
                cap += cap // 2
                uniq = _grow(uniq, n, cap)
                logd = _grow(logd, n, cap)
                lo = _grow(lo, n, cap)
                hi = _grow(hi, n, cap)
            uniq[n] = (np.int64(4) << (2 * order)) + ipix
            logd[n] = _mean_log_density(kind, p, s_t, top)
            lo[n] = max(np.float32(cl_lo) - np.float32(_F32_ULP), np.float32(0.0))
            hi[n] = min(np.float32(cl_hi) + np.float32(_F32_ULP), np.float32(1.0))
            n += 1
    return uniq, logd, lo, hi, n


@njit(cache=True)
def _grow(a, n, cap):
    out = np.empty(cap, dtype=a.dtype)
    out[:n] = a[:n]
    return out


def _pixel_radii() -> np.ndarray:
    """Bound on the circumradius (radians, chord or angle) of the pixels of each order 0..29,
    with a 2% margin for the curved edges."""
    return np.array([1.02 * hp.max_pixrad(1 << o) for o in range(MAX_ORDER + 1)])


_PIXRAD = _pixel_radii()


@njit(cache=True)
def _misses(level, lo, hi, tolerance):
    """(leaves whose greedy credible level ``level`` is off the analytic level somewhere in the
    leaf, between ``lo`` and ``hi``, by more than ``tolerance``; the largest such error)."""
    bad = np.zeros(len(level), dtype=np.bool_)
    worst = 0.0
    for i in range(len(level)):
        err = max(hi[i] - level[i], level[i] - lo[i])
        worst = max(worst, err)
        bad[i] = err > tolerance
    return bad, worst


def auto_max_order(model: _Model, tolerance: float) -> int:
    """Deepest HEALPix order the rasterisation of ``model`` may need to meet ``tolerance``.

    The subdivision is scale-free: near the mode pixels must shrink to about ``tolerance``
    times the model's smallest scale (radians), i.e. order ~ log2(1 / (tolerance * scale)),
    plus a margin; capped at 29 (the NUNIQ limit).
    """
    scale = model.scale()
    need = math.log2(1.0 / (tolerance * scale)) + 3.0
    return int(min(MAX_ORDER, max(0, math.ceil(need))))


def rasterise(model: _Model, tolerance: float = 1e-3, max_order: int | None = None,
              max_rounds: int = 12) -> Localization:
    """Adaptive multi-order map of ``model`` whose credible levels (ligo.skymap's searched
    probability, :meth:`Localization.credible_levels`) are within ``tolerance`` of the analytic
    credible level at every point, down to ``max_order`` (default: :func:`auto_max_order`).

    Pixels are first split while the analytic credible level in a pixel may differ from its
    value at the centre by more than ``tolerance`` (with margins). The greedy credible level of
    each leaf is then checked against the bounds of the analytic level over the leaf, and the
    leaves that miss (aligned with the HEALPix grid, e.g. rings around a pole, whose ties move
    the greedy level by up to their whole range) are split again, for up to ``max_rounds``.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    if max_order is None:
        max_order = auto_max_order(model, tolerance)
    if not 0 <= max_order <= MAX_ORDER:
        raise ValueError(f"max_order must be in [0, {MAX_ORDER}], got {max_order}")
    kind, params, table_t, table_cl = model.kernel_params()

    def refine(start: np.ndarray, thresholds: np.ndarray,
               force: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        out = _refine(kind, params, table_t, table_cl, thresholds, max_order, _PIXRAD, _JRLL,
                      _JPLL, start, force)
        return tuple(a[:out[-1]].copy() for a in out[:-1])  # free the over-allocated buffers

    uniq, logd, lo, hi = refine(np.arange(4, 16, dtype=np.int64),
                                np.full(12, _FAR_FRACTION * tolerance), False)
    for rounds in range(max_rounds + 1):
        loc = None  # free the previous round's map first
        loc = Localization(uniq, np.exp(logd - logd.max()), meta={"SHAPE": model.describe()})
        if not np.array_equal(loc.uniq, uniq):  # leaves are built in NESTED order
            raise AssertionError("rasterised leaves are not in NESTED order")
        uniq = loc.uniq  # the same ids: keep one copy
        level = loc.credible_levels()
        bad, worst = _misses(level, lo, hi, tolerance)
        at_max = bad & (loc.orders >= max_order)
        bad &= ~at_max
        if not bad.any() or rounds == max_rounds:
            break
        log.debug("%s: round %d splits %d of %d leaves", model.describe(), rounds + 1,
                  int(bad.sum()), len(uniq))
        # the greedy level of a leaf's children is off their centre value by about as much
        # as the leaf's: leave that much room in their threshold
        bias = np.abs(level[bad] - _centre_levels(model, uniq[bad]))
        thresholds = _FAR_FRACTION * np.maximum(tolerance - bias, 0.1 * tolerance)
        new = refine(uniq[bad], thresholds, True)
        merged = [np.concatenate([a[~bad], b])
                  for a, b in zip((uniq, logd, lo, hi), new, strict=True)]
        order = np.argsort(uniq_to_ranges29(merged[0])[0], kind="stable")
        uniq, logd, lo, hi = (a[order] for a in merged)
        del merged, new, level
    if at_max.any() or bad.any():
        log.info("%s: %d pixels at max order %d and %d others still miss the tolerance %.3g "
                 "(worst %.3g)", model.describe(), int(at_max.sum()), max_order,
                 int(bad.sum()), tolerance, worst)
    return loc


def _centre_levels(model: _Model, uniq: np.ndarray) -> np.ndarray:
    """Analytic credible level at the centres of NUNIQ pixels."""
    order, ipix = uniq_to_order_ipix(uniq)
    vec = np.empty((len(uniq), 3))
    for o in np.unique(order):
        s = order == o
        vec[s] = np.column_stack(hp.pix2vec(1 << int(o), ipix[s], nest=True))
    return model.cl(model.radial(vec))


def _check_centre(ra: float, dec: float, what: str) -> None:
    check_coordinates(np.array([ra]), np.array([dec]), what=what)


def _check_positive(what: str, **values: float) -> None:
    for k, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise BadCoordinatesError(f"{what}: {k}={v!r} deg must be a positive number")


def _check_containment(containment: float) -> None:
    if not 0 < containment < 1:
        raise ValueError(f"containment must be in (0, 1), got {containment}")


def region_localization(region: AnalyticRegion, *, tolerance: float = 1e-3,
                        max_order: int | None = None) -> Localization:
    """An analytic :class:`Localization` of ``region``: credible levels, densities, areas and
    samples in closed form; its pixels (``uniq``, MOC, FITS export) are rasterised on demand
    to ``tolerance`` and ``max_order`` (see :func:`rasterise`)."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return Localization.from_region(
        region, lambda: rasterise(model_of(region), tolerance, max_order))


def circle(ra: float, dec: float, radius: float, containment: float = 0.9, *,
           model: str = "fisher", tolerance: float = 1e-3,
           max_order: int | None = None) -> Localization:
    """A circular error region centred on (ra, dec), degrees ICRS.

    ``radius`` (deg) encloses ``containment`` of the probability. ``model="fisher"`` is a
    von Mises-Fisher distribution on the sphere; ``"gaussian"`` a Gaussian in angular
    distance. Matched in closed form; ``tolerance`` and ``max_order`` set the accuracy of
    the pixels made on demand for export (:func:`region_localization`).
    """
    _check_centre(ra, dec, "circle centre")
    _check_positive("circle", radius=radius)
    _check_containment(containment)
    if model not in _MODELS:
        raise ValueError(f"circle model must be one of {_MODELS}, got {model!r}")
    cls = FisherCircle if model == "fisher" else GaussianCircle
    return region_localization(cls(ra, dec, radius, containment), tolerance=tolerance,
                               max_order=max_order)


def ellipse(ra: float, dec: float, semi_major: float, semi_minor: float,
            position_angle: float, containment: float = 0.9, *, tolerance: float = 1e-3,
            max_order: int | None = None) -> Localization:
    """A 2-D Gaussian whose ``containment`` region is the ellipse with the given semi-axes
    (deg) and major-axis position angle (deg east of north), centred on (ra, dec) deg ICRS.
    ``tolerance`` and ``max_order`` as in :func:`circle`."""
    _check_centre(ra, dec, "ellipse centre")
    _check_positive("ellipse", semi_major=semi_major, semi_minor=semi_minor)
    _check_containment(containment)
    if not math.isfinite(position_angle):
        raise BadCoordinatesError(f"ellipse position angle {position_angle!r} is not finite")
    if semi_minor > semi_major:
        semi_major, semi_minor, position_angle = semi_minor, semi_major, position_angle + 90
    region = Ellipse(ra, dec, semi_major, semi_minor, position_angle % 180, containment)
    return region_localization(region, tolerance=tolerance, max_order=max_order)


def box(ra: float, dec: float, ra_plus: float, ra_minus: float, dec_plus: float,
        dec_minus: float, containment: float = 0.9, *, tolerance: float = 1e-3,
        max_order: int | None = None) -> Localization:
    """IceCube-style asymmetric errors: a split 2-D Gaussian whose ``containment`` region
    reaches ``ra_plus``/``ra_minus`` (degrees of RA *coordinate*, as IceCube reports them;
    multiplied by cos(dec) to get on-sky extents) east/west and ``dec_plus``/``dec_minus``
    (deg) north/south of (ra, dec), degrees ICRS. ``tolerance`` and ``max_order`` as in
    :func:`circle`. At the poles, where cos(dec) vanishes, the mean Dec error is used for the
    RA extents."""
    _check_centre(ra, dec, "box centre")
    _check_positive("box", ra_plus=ra_plus, ra_minus=ra_minus, dec_plus=dec_plus,
                    dec_minus=dec_minus)
    _check_containment(containment)
    cosd = math.cos(math.radians(dec))
    if cosd < 1e-9:  # at a pole the RA coordinate errors carry no on-sky extent
        east = west = 0.5 * (dec_plus + dec_minus)
    else:
        east, west = ra_plus * cosd, ra_minus * cosd
    region = Box(ra, dec, east, west, dec_plus, dec_minus, containment)
    return region_localization(region, tolerance=tolerance, max_order=max_order)

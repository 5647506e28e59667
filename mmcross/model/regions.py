"""Analytic error regions of GCN notices, kept as their parameters and evaluated in closed form.

A region is a small frozen dataclass (well under 1 KB) centred on (ra, dec), degrees ICRS:

* :class:`FisherCircle`: von Mises-Fisher density ``exp(-kappa u)``, ``u = 1 - cos theta`` =
  chord^2 / 2; credible level ``CL = (1 - exp(-kappa u)) / (1 - exp(-2 kappa))``, density
  ``kappa exp(-kappa u) / (2 pi (1 - exp(-2 kappa)))`` per sr, and the smallest region holding
  ``CL`` is the cap of area ``2 pi u`` sr.
* :class:`GaussianCircle`: density ``exp(-theta^2 / 2 sigma^2)`` per sr in angular distance
  theta; ``CL = I(theta) / I(pi)`` with ``I(t) = int_0^t exp(-s^2 / 2 sigma^2) sin s ds``
  (48-point Gauss-Legendre over ``[0, min(t, 12 sigma)]``, exact to rounding: the integrand
  is entire), searched area ``2 pi (1 - cos theta)``.
* :class:`Ellipse`, :class:`Box`: a (split) 2-D Gaussian in the Lambert azimuthal equal-area
  plane tangent at the centre (x east, y north, plane radius = chord ``2 sin(theta/2)``; the
  major axis of an ellipse at position angle ``pa`` east of north). With rho the split
  Mahalanobis distance, ``CL = (1 - exp(-rho^2/2)) / T``, density ``exp(-rho^2/2) / (N T)``
  per sr with ``N = (pi/2)(s_e + s_w)(s_n + s_s)``, searched area
  ``(pi/4) rho^2 (s_e + s_w)(s_n + s_s)`` sr (the projection preserves area). ``T`` is the
  mass of the plane Gaussian inside the Lambert disc (radius 2, the antipode), integrated
  once at construction, so the density is normalised on the sphere. These are exact while
  the rho contour stays inside the disc, i.e. up to credible levels
  ``(1 - exp(-2 / s_max^2)) / T`` (> 0.9999 for any region with a 90 % extent below 60 deg);
  above, CL is capped at 1.

:func:`evaluate` is the numba kernel (credible level, density per sr, searched area sr of
one unit vector) used by the matcher; the methods of the regions wrap it for arrays of
positions. ``to_dict``/:func:`region_from_dict` give the JSON kept by the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from numba import njit

from mmcross.model.errors import BadCoordinatesError

SR_TO_DEG2 = (180.0 / math.pi) ** 2
"""Square degrees per steradian."""

KIND_FISHER, KIND_GAUSSIAN, KIND_LAMBERT = 0, 1, 2
"""Kernel model families: Fisher (chord), Gaussian in angle, Lambert-plane (split) Gaussian."""

# parameter vector: centre, east, north (3 each), then
P_KAPPA, P_NORM, P_COS, P_SIN, P_SIG, P_SIGMA_MIN, P_TRUNC, P_SIGMA, P_DENS, P_AREA = (
    9, 10, 11, 12, 13, 17, 18, 19, 20, 21)
N_PARAMS = 22

_GL_X, _GL_W = np.polynomial.legendre.leggauss(48)


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def _gauss_integral(sigma: float, theta: float, gx: np.ndarray, gw: np.ndarray) -> float:
    """int_0^theta exp(-s^2 / 2 sigma^2) sin(s) ds, Gauss-Legendre on [0, min(theta, 12 sigma)]."""
    top = min(theta, 12.0 * sigma)
    h = 0.5 * top
    total = 0.0
    for k in range(gx.shape[0]):
        s = h * (gx[k] + 1.0)
        total += gw[k] * math.exp(-0.5 * (s / sigma) ** 2) * math.sin(s)
    return total * h


@njit(cache=True, error_model="numpy", inline="always")
def lambert_rho(p: np.ndarray, x: float, y: float, z: float, chord: float) -> float:
    """Split Mahalanobis distance rho of the unit vector (x, y, z) in the Lambert plane."""
    a = x * p[3] + y * p[4] + z * p[5]
    b = x * p[6] + y * p[7] + z * p[8]
    h = math.sqrt(a * a + b * b)
    if h > 0.0:
        lx, ly = chord * a / h, chord * b / h
    else:
        lx, ly = 0.0, chord
    c, s = p[P_COS], p[P_SIN]
    u, v = lx * c - ly * s, lx * s + ly * c
    u = u / (p[P_SIG] if u >= 0.0 else p[P_SIG + 1])
    v = v / (p[P_SIG + 2] if v >= 0.0 else p[P_SIG + 3])
    return math.sqrt(u * u + v * v)


@njit(cache=True, error_model="numpy")
def evaluate(kind: int, p: np.ndarray, x: float, y: float, z: float, gx: np.ndarray,
             gw: np.ndarray) -> tuple[float, float, float]:
    """(credible level 0..1, density per sr, searched area sr) of the region with kernel
    parameters ``p`` at the unit vector (x, y, z); ``gx``, ``gw`` are the Gauss-Legendre nodes
    used by Gaussian circles (``GL_NODES``)."""
    dx, dy, dz = x - p[0], y - p[1], z - p[2]
    c2 = dx * dx + dy * dy + dz * dz
    if kind == KIND_FISHER:
        u = 0.5 * c2
        e = math.exp(-p[P_KAPPA] * u)
        return -math.expm1(-p[P_KAPPA] * u) / p[P_NORM], p[P_DENS] * e, 2.0 * math.pi * u
    if kind == KIND_GAUSSIAN:
        theta = 2.0 * math.asin(min(0.5 * math.sqrt(c2), 1.0))
        sigma = p[P_SIGMA]
        cl = min(_gauss_integral(sigma, theta, gx, gw) / p[P_NORM], 1.0)
        return cl, p[P_DENS] * math.exp(-0.5 * (theta / sigma) ** 2), math.pi * c2
    rho = lambert_rho(p, x, y, z, math.sqrt(c2))
    r2 = rho * rho
    cl = min(-math.expm1(-0.5 * r2) / p[P_TRUNC], 1.0)
    return cl, p[P_DENS] * math.exp(-0.5 * r2), min(p[P_AREA] * r2, 4.0 * math.pi)


GL_NODES = (_GL_X, _GL_W)
"""Gauss-Legendre nodes and weights passed to :func:`evaluate`."""


@njit(cache=True, error_model="numpy")
def _evaluate_many(kind: int, p: np.ndarray, vec: np.ndarray, gx: np.ndarray,
                   gw: np.ndarray) -> np.ndarray:
    out = np.empty((3, vec.shape[0]))
    for i in range(vec.shape[0]):
        out[0, i], out[1, i], out[2, i] = evaluate(kind, p, vec[i, 0], vec[i, 1], vec[i, 2],
                                                   gx, gw)
    return out


# --------------------------------------------------------------------------------------------
# Geometry
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


def _from_local(ra: float, dec: float, chord: np.ndarray, azimuth: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ra, dec deg) at chord distances and azimuths (rad, east of north)."""
    centre, east, north = local_frame(ra, dec)
    cos_t = 1.0 - 0.5 * np.square(chord)
    sin_t = np.sqrt(np.maximum(1.0 - cos_t * cos_t, 0.0))
    v = (cos_t[:, None] * centre + (sin_t * np.sin(azimuth))[:, None] * east
         + (sin_t * np.cos(azimuth))[:, None] * north)
    ra_out = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0
    dec_out = np.degrees(np.arcsin(np.clip(v[:, 2], -1.0, 1.0)))
    return ra_out, dec_out


def rho_of_containment(containment: float) -> float:
    """Mahalanobis radius of a 2-D Gaussian holding ``containment``."""
    return math.sqrt(-2.0 * math.log1p(-containment))


def geometric_bisect(f, lo: float, hi: float, n: int = 200) -> float:
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
    return geometric_bisect(g, k_hi * 1e-12, k_hi)


def _check(ra: float, dec: float, what: str, containment: float, **extents: float) -> None:
    if not (math.isfinite(ra) and math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise BadCoordinatesError(f"{what} centre ({ra!r}, {dec!r}) is not a sky position")
    for k, v in extents.items():
        if not (math.isfinite(v) and v > 0):
            raise BadCoordinatesError(f"{what}: {k}={v!r} deg must be a positive number")
    if not 0 < containment < 1:
        raise ValueError(f"containment must be in (0, 1), got {containment}")


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalyticRegion:
    """Common interface of the analytic regions (positions degrees ICRS)."""

    ra: float
    dec: float
    kind: ClassVar[int]
    shape: ClassVar[str]
    params: np.ndarray = field(init=False, repr=False, compare=False)

    def _set_params(self, p: np.ndarray) -> None:
        p[0:3], p[3:6], p[6:9] = local_frame(self.ra, self.dec)
        p.setflags(write=False)
        object.__setattr__(self, "params", p)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """(3, ...): credible level, density per sr, searched area sr at positions (deg ICRS),
        shaped as the broadcast positions."""
        ra, dec = np.broadcast_arrays(np.asarray(ra, np.float64), np.asarray(dec, np.float64))
        vec = unit_vector(ra, dec).reshape(-1, 3)
        out = _evaluate_many(self.kind, self.params, np.ascontiguousarray(vec), *GL_NODES)
        return out.reshape((3,) + ra.shape)

    def credible_level(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Credible level (0..1) at positions in degrees ICRS."""
        return self.evaluate(ra, dec)[0]

    def density(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Probability density per sr at positions in degrees ICRS."""
        return self.evaluate(ra, dec)[1]

    def searched_area(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Area (deg^2) of the smallest region holding each position's credible level."""
        return self.evaluate(ra, dec)[2] * SR_TO_DEG2

    # -- per region ------------------------------------------------------------------------
    def cap_radius(self, level: float) -> float:
        """Angular radius (deg) of the smallest cap about the centre that contains the
        credible region at ``level`` (180 when it reaches the antipode)."""
        raise NotImplementedError

    def area(self, level: float = 0.9) -> float:
        """Area (deg^2) of the smallest region holding ``level`` of the probability."""
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random positions (ra, dec deg ICRS) drawn from the density."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters; :func:`region_from_dict` rebuilds the region."""
        return {"shape": self.shape,
                **{f.name: getattr(self, f.name) for f in fields(self) if f.init}}


def _check_level(level: float) -> None:
    if not 0 <= level <= 1:
        raise ValueError(f"credible level must be in [0, 1], got {level}")


@dataclass(frozen=True)
class FisherCircle(AnalyticRegion):
    """von Mises-Fisher circle: the cap of ``radius`` (deg) holds ``containment``."""

    radius: float = 1.0
    containment: float = 0.9
    kind: ClassVar[int] = KIND_FISHER
    shape: ClassVar[str] = "fisher"

    def __post_init__(self) -> None:
        _check(self.ra, self.dec, "circle", self.containment, radius=self.radius)
        try:
            kappa = fisher_kappa(self.radius, self.containment)
        except ValueError as exc:
            raise BadCoordinatesError(f"circle at ({self.ra}, {self.dec}): {exc}") from exc
        p = np.zeros(N_PARAMS)
        norm = -math.expm1(-2.0 * kappa)
        p[P_KAPPA], p[P_NORM], p[P_DENS] = kappa, norm, kappa / (2.0 * math.pi * norm)
        self._set_params(p)

    @property
    def kappa(self) -> float:
        return float(self.params[P_KAPPA])

    def _u(self, level: float) -> float:
        return min(-math.log1p(-level * self.params[P_NORM]) / self.kappa, 2.0)

    def cap_radius(self, level: float) -> float:
        _check_level(level)
        return math.degrees(2.0 * math.asin(min(math.sqrt(0.5 * self._u(level)), 1.0)))

    def area(self, level: float = 0.9) -> float:
        _check_level(level)
        return 2.0 * math.pi * self._u(level) * SR_TO_DEG2

    def sample(self, n, rng):
        u = -np.log1p(-rng.random(n) * self.params[P_NORM]) / self.kappa
        return _from_local(self.ra, self.dec, np.sqrt(2.0 * np.minimum(u, 2.0)),
                           rng.uniform(0, 2 * math.pi, n))

    def describe(self):
        return (f"circle fisher ra={self.ra:.6f} dec={self.dec:.6f} r={self.radius:.6g}deg "
                f"cl={self.containment:g} kappa={self.kappa:.6g}")


@dataclass(frozen=True)
class GaussianCircle(AnalyticRegion):
    """Circular Gaussian in angular distance whose cap of ``radius`` (deg) holds
    ``containment`` (differs from the Fisher circle for large radii)."""

    radius: float = 1.0
    containment: float = 0.9
    kind: ClassVar[int] = KIND_GAUSSIAN
    shape: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        _check(self.ra, self.dec, "circle", self.containment, radius=self.radius)
        r = math.radians(self.radius)
        if (1 - math.cos(r)) / 2 >= self.containment:
            raise BadCoordinatesError(
                f"circle at ({self.ra}, {self.dec}): a {self.radius} deg cap covers "
                f"{(1 - math.cos(r)) / 2:.4f} of the sky, not less than the containment "
                f"{self.containment}")

        def g(sig: float) -> float:  # CL(r) decreases as sigma grows
            return self.containment - _gauss_integral(sig, r, *GL_NODES) / _gauss_integral(
                sig, math.pi, *GL_NODES)

        sig0 = r / rho_of_containment(self.containment)
        sigma = geometric_bisect(g, sig0 * 0.5, sig0 * 1e3)
        p = np.zeros(N_PARAMS)
        norm = _gauss_integral(sigma, math.pi, *GL_NODES)
        p[P_SIGMA], p[P_NORM], p[P_DENS] = sigma, norm, 1.0 / (2.0 * math.pi * norm)
        self._set_params(p)

    @property
    def sigma(self) -> float:
        """Gaussian width in radians."""
        return float(self.params[P_SIGMA])

    def _theta(self, level: float) -> float:
        if level >= 1.0:
            return math.pi
        target = level * self.params[P_NORM]
        lo, hi = 0.0, math.pi
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if _gauss_integral(self.sigma, mid, *GL_NODES) < target:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-16:
                break
        return 0.5 * (lo + hi)

    def cap_radius(self, level: float) -> float:
        _check_level(level)
        return math.degrees(self._theta(level))

    def area(self, level: float = 0.9) -> float:
        _check_level(level)
        return 4.0 * math.pi * math.sin(0.5 * self._theta(level)) ** 2 * SR_TO_DEG2

    def sample(self, n, rng):
        # Rayleigh proposals (density theta exp(-theta^2 / 2 sigma^2)), accepted with
        # probability sin(theta) / theta <= 1.
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            theta = self.sigma * np.sqrt(-2.0 * np.log1p(-rng.random(2 * (n - got) + 16)))
            keep = theta[(theta <= math.pi)
                         & (rng.random(len(theta)) * theta <= np.sin(theta))]
            out.append(keep)
            got += len(keep)
        theta = np.concatenate(out)[:n]
        return _from_local(self.ra, self.dec, 2.0 * np.sin(0.5 * theta),
                           rng.uniform(0, 2 * math.pi, n))

    def describe(self):
        return (f"circle gaussian ra={self.ra:.6f} dec={self.dec:.6f} r={self.radius:.6g}deg "
                f"cl={self.containment:g} sigma={math.degrees(self.sigma):.6g}deg")


def _lambert_params(p: np.ndarray, sig: tuple[float, float, float, float], pa: float) -> None:
    """Fill the Lambert-plane parameters: scales (e, w, n, s), rotation, truncation T (mass of
    the plane Gaussian inside the disc of radius 2), density and area factors."""
    p[P_COS], p[P_SIN] = math.cos(math.radians(pa)), math.sin(math.radians(pa))
    p[P_SIG:P_SIG + 4] = sig
    p[P_SIGMA_MIN] = min(sig)
    from scipy import integrate  # here: scipy costs ~0.2 s of start-up, only shapes need it

    se, sw, sn, ss = sig
    total = 0.5 * math.pi * (se + sw) * (sn + ss)
    outside = 0.0
    for sx, sy, lo in ((se, sn, 0.0), (sw, sn, 0.5), (sw, ss, 1.0), (se, ss, 1.5)):
        def f(phi: float, sx: float = sx, sy: float = sy) -> float:
            g2 = (math.cos(phi) / sx) ** 2 + (math.sin(phi) / sy) ** 2
            return math.exp(-2.0 * g2) / g2
        if 2.0 / max(sx, sy) < 40.0:  # else exp(-2 g^2) underflows everywhere
            outside += integrate.quad(f, lo * math.pi, (lo + 0.5) * math.pi, epsabs=0,
                                      epsrel=1e-13, limit=200)[0]
    trunc = 1.0 - outside / total
    p[P_TRUNC] = trunc
    p[P_DENS] = 1.0 / (total * trunc)
    p[P_AREA] = 0.25 * math.pi * (se + sw) * (sn + ss)


def _lambert_fit(scales, pa: float, containment: float) -> np.ndarray:
    """Parameters of the Lambert-plane Gaussian with ``scales(rho)`` = (e, w, n, s) whose
    contour ``rho`` holds exactly ``containment`` on the sphere: ``1 - exp(-rho^2/2) =
    containment * T``, T depending on the scales (fixed point; T is 1 but for regions of
    tens of degrees, and converges in a few steps)."""
    p = np.zeros(N_PARAMS)
    trunc = 1.0
    for _ in range(50):
        _lambert_params(p, scales(rho_of_containment(containment * trunc)), pa)
        if p[P_TRUNC] == trunc:
            break
        trunc = p[P_TRUNC]
    return p


def _lambert_cap(p: np.ndarray, level: float) -> float:
    _check_level(level)
    x = level * p[P_TRUNC]
    if x >= 1.0:
        return 180.0
    chord = math.sqrt(-2.0 * math.log1p(-x)) * float(np.max(p[P_SIG:P_SIG + 4]))
    return 180.0 if chord >= 2.0 else math.degrees(2.0 * math.asin(0.5 * chord))


def _lambert_area(p: np.ndarray, level: float) -> float:
    _check_level(level)
    x = min(level * p[P_TRUNC], 1.0)
    if x >= 1.0:
        return 4.0 * math.pi * SR_TO_DEG2
    return min(p[P_AREA] * -2.0 * math.log1p(-x), 4.0 * math.pi) * SR_TO_DEG2


def _lambert_sample(region: AnalyticRegion, n: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Split-Gaussian plane samples (quadrant chosen by its mass, half-normal axes) inside
    the Lambert disc, mapped back to the sphere."""
    p = region.params
    se, sw, sn, ss = p[P_SIG:P_SIG + 4]
    quads = np.array([(se, sn), (-sw, sn), (-sw, -ss), (se, -ss)])
    w = np.abs(quads[:, 0] * quads[:, 1])
    xs, ys = [], []
    got = 0
    while got < n:
        m = 2 * (n - got) + 16
        q = rng.choice(4, m, p=w / w.sum())
        u = np.abs(rng.standard_normal(m)) * quads[q, 0]
        v = np.abs(rng.standard_normal(m)) * quads[q, 1]
        c, s = p[P_COS], p[P_SIN]
        x, y = u * c + v * s, -u * s + v * c  # back to east/north
        keep = np.hypot(x, y) < 2.0
        xs.append(x[keep])
        ys.append(y[keep])
        got += int(keep.sum())
    x, y = np.concatenate(xs)[:n], np.concatenate(ys)[:n]
    return _from_local(region.ra, region.dec, np.hypot(x, y), np.arctan2(x, y))


@dataclass(frozen=True)
class Ellipse(AnalyticRegion):
    """2-D Gaussian whose ``containment`` ellipse has semi-axes ``semi_major`` >=
    ``semi_minor`` (deg), the major axis at ``position_angle`` (deg east of north)."""

    semi_major: float = 1.0
    semi_minor: float = 1.0
    position_angle: float = 0.0
    containment: float = 0.9
    kind: ClassVar[int] = KIND_LAMBERT
    shape: ClassVar[str] = "ellipse"

    def __post_init__(self) -> None:
        _check(self.ra, self.dec, "ellipse", self.containment, semi_major=self.semi_major,
               semi_minor=self.semi_minor)
        if not math.isfinite(self.position_angle):
            raise BadCoordinatesError(
                f"ellipse position angle {self.position_angle!r} is not finite")
        if self.semi_minor > self.semi_major:
            raise BadCoordinatesError(f"ellipse semi-minor {self.semi_minor} deg > semi-major "
                                      f"{self.semi_major} deg")
        if self.semi_major >= 90:
            raise BadCoordinatesError(f"ellipse semi-major axis {self.semi_major} deg is "
                                      ">= 90 deg")
        a = 2.0 * math.sin(math.radians(self.semi_major) / 2)
        b = 2.0 * math.sin(math.radians(self.semi_minor) / 2)
        # rotated frame: u' = x cos(pa) - y sin(pa) (minor), v' = x sin(pa) + y cos(pa) (major)
        self._set_params(_lambert_fit(lambda rho: (b / rho, b / rho, a / rho, a / rho),
                                      self.position_angle, self.containment))

    def cap_radius(self, level):
        return _lambert_cap(self.params, level)

    def area(self, level=0.9):
        return _lambert_area(self.params, level)

    def sample(self, n, rng):
        return _lambert_sample(self, n, rng)

    def describe(self):
        return (f"ellipse ra={self.ra:.6f} dec={self.dec:.6f} a={self.semi_major:.6g}deg "
                f"b={self.semi_minor:.6g}deg pa={self.position_angle:.6g}deg "
                f"cl={self.containment:g}")


@dataclass(frozen=True)
class Box(AnalyticRegion):
    """Split 2-D Gaussian whose ``containment`` region reaches the on-sky errors ``east``,
    ``west``, ``north``, ``south`` (deg) from the centre (IceCube-style asymmetric errors)."""

    east: float = 1.0
    west: float = 1.0
    north: float = 1.0
    south: float = 1.0
    containment: float = 0.9
    kind: ClassVar[int] = KIND_LAMBERT
    shape: ClassVar[str] = "box"

    def __post_init__(self) -> None:
        _check(self.ra, self.dec, "box", self.containment, east=self.east, west=self.west,
               north=self.north, south=self.south)
        if max(self.east, self.west, self.north, self.south) >= 90:
            raise BadCoordinatesError(f"box errors ({self.east}, {self.west}, {self.north}, "
                                      f"{self.south}) deg reach 90 deg")
        ext = [2.0 * math.sin(math.radians(e) / 2)
               for e in (self.east, self.west, self.north, self.south)]
        self._set_params(_lambert_fit(lambda rho: tuple(e / rho for e in ext), 0.0,
                                      self.containment))

    def cap_radius(self, level):
        return _lambert_cap(self.params, level)

    def area(self, level=0.9):
        return _lambert_area(self.params, level)

    def sample(self, n, rng):
        return _lambert_sample(self, n, rng)

    def describe(self):
        return (f"box ra={self.ra:.6f} dec={self.dec:.6f} east={self.east:.6g}deg "
                f"west={self.west:.6g}deg north={self.north:.6g}deg south={self.south:.6g}deg "
                f"cl={self.containment:g}")


_SHAPES: dict[str, type[AnalyticRegion]] = {
    c.shape: c for c in (FisherCircle, GaussianCircle, Ellipse, Box)}


def region_from_dict(d: dict[str, Any]) -> AnalyticRegion:
    """Rebuild a region from :meth:`AnalyticRegion.to_dict` output.

    Raises:
        BadCoordinatesError: unknown shape or bad parameters.
    """
    values = dict(d)
    cls = _SHAPES.get(values.pop("shape", None))
    if cls is None:
        raise BadCoordinatesError(f"unknown analytic region shape in {d!r}")
    try:
        return cls(**{k: float(v) for k, v in values.items()})
    except TypeError as exc:
        raise BadCoordinatesError(f"bad {cls.shape} parameters {d!r}: {exc}") from exc

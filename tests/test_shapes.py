"""Rasterised circles, ellipses and boxes against their analytic credible levels.

Positions at known offsets are made with astropy (``directional_offset_by``) and the analytic
credible levels are written out here independently of :mod:`mmcross.model.shapes` (closed forms, or
scipy quadrature on the sphere for the angular Gaussian).
"""

from __future__ import annotations

import math

import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from mmcross.model import shapes
from mmcross.model.errors import BadCoordinatesError
from mmcross.model.localization import Localization

TOL = 3e-3  # rasterisation tolerance of most tests (1e-3 builds take ~2 s each)
RNG = np.random.default_rng(20240115)


def offsets(ra: float, dec: float, sep_deg: np.ndarray, pa_deg: np.ndarray):
    """Positions (ra, dec deg) at separations/position angles (deg, east of north)."""
    c = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(pa_deg * u.deg, sep_deg * u.deg)
    return c.ra.deg, c.dec.deg


def fisher_cl(theta_deg, radius, containment):
    """von Mises-Fisher credible level: kappa solved from the cap of ``radius``."""
    def cl(theta, kappa):
        return -np.expm1(kappa * (np.cos(np.radians(theta)) - 1)) / -np.expm1(-2 * kappa)

    kappa = optimize.brentq(lambda k: cl(radius, k) - containment, 1e-9, 1e12, xtol=1e-14,
                            rtol=1e-15)
    return cl(np.asarray(theta_deg), kappa)


def gauss_angle_cl(theta_deg, radius, containment):
    """Credible level of density exp(-theta^2 / 2 sigma^2) on the sphere (quadrature)."""
    def cdf(theta, sig):
        f = lambda t: math.exp(-0.5 * (t / sig) ** 2) * math.sin(t)  # noqa: E731
        top = min(math.pi, 40 * sig)
        norm = integrate.quad(f, 0, top, limit=200, epsabs=0, epsrel=1e-12)[0]
        return integrate.quad(f, 0, min(theta, top), limit=200, epsabs=0,
                              epsrel=1e-12)[0] / norm

    r = math.radians(radius)
    sig = optimize.brentq(lambda s: cdf(r, s) - containment, r / 10, r * 10, xtol=1e-15)
    return np.array([cdf(math.radians(t), sig) for t in np.atleast_1d(theta_deg)])


def check_points(loc: Localization, ra, dec, expected, tol: float):
    got = loc.credible_level_at(ra, dec)
    err = np.abs(got - expected)
    worst = int(err.argmax())
    assert err[worst] <= tol, f"max |CL error| {err[worst]:.3g} at expected CL {expected[worst]}"


# ------------------------------------------------------------------ circles

@pytest.mark.parametrize("model,reference", [("fisher", fisher_cl), ("gaussian", gauss_angle_cl)])
@pytest.mark.parametrize("radius", [0.5, 10.0, 70.0])
def test_circle_credible_levels_match_analytic(model, reference, radius):
    ra, dec, c = 201.3, -43.2, 0.9
    loc = shapes.circle(ra, dec, radius, c, model=model, tolerance=TOL)
    theta = radius * np.r_[RNG.uniform(0, 2.5, 300), 1.0, 1.0, 1.0, 1.0]
    ra_p, dec_p = offsets(ra, dec, theta, RNG.uniform(0, 360, len(theta)))
    expected = reference(theta, radius, c)
    check_points(loc, ra_p, dec_p, expected, TOL)
    # the stated radius encloses the stated containment, and the areas agree
    assert abs(expected[-1] - c) < 1e-9
    cap = 2 * np.pi * (1 - np.cos(np.radians(radius))) * (180 / np.pi) ** 2
    assert loc.area(c) == pytest.approx(cap, rel=TOL / (1 - c))
    assert loc.total_probability == pytest.approx(1, abs=1e-12)


def test_fisher_and_gaussian_differ_for_large_circles():
    theta = np.array([30.0, 60.0, 90.0])
    assert np.max(np.abs(fisher_cl(theta, 70, 0.9) - gauss_angle_cl(theta, 70, 0.9))) > 0.01
    a = shapes.circle(10, 10, 70, model="fisher", tolerance=1e-2)
    b = shapes.circle(10, 10, 70, model="gaussian", tolerance=1e-2)
    ra, dec = offsets(10, 10, theta, np.zeros(3))
    np.testing.assert_allclose(a.credible_level_at(ra, dec), fisher_cl(theta, 70, 0.9),
                               atol=1e-2)
    np.testing.assert_allclose(b.credible_level_at(ra, dec), gauss_angle_cl(theta, 70, 0.9),
                               atol=1e-2)


def test_tiny_circle_concentrated_where_stated():
    # Swift-BAT-like 3 arcmin circle at the default tolerance 1e-3: the depth is chosen from
    # the radius (beyond the order 18 that cannot resolve it)
    loc = shapes.circle(64.7373, 13.3517, 0.05, 0.9)
    assert loc.max_order > 18
    theta = np.r_[0.0, 0.025, 0.05, 0.1, RNG.uniform(0, 0.12, 3000)]
    ra, dec = offsets(64.7373, 13.3517, theta, RNG.uniform(0, 360, len(theta)))
    check_points(loc, ra, dec, fisher_cl(theta, 0.05, 0.9), 1e-3)
    assert loc.area(0.9) == pytest.approx(np.pi * 0.05**2, rel=2e-2)


def test_fisher_circle_meets_1e3_at_random_points_and_pixel_corners():
    ra, dec, radius, c, tol = 201.3, -43.2, 1.0, 0.9, 1e-3
    loc = shapes.circle(ra, dec, radius, c, tolerance=tol)
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    # uniform in area out to 2.5 radii, plus a dense core
    theta = np.degrees(np.sqrt(RNG.uniform(0, 1, 20000))) * math.radians(2.5 * radius)
    theta = np.r_[theta, RNG.uniform(0, 0.1 * radius, 3000)]
    ra_p, dec_p = offsets(ra, dec, theta, RNG.uniform(0, 360, len(theta)))
    check_points(loc, ra_p, dec_p, fisher_cl(theta, radius, c), tol)
    # adversarial points: just inside the corners of random leaves within 2.5 radii
    pra, pdec = _pixel_centres(loc.uniq)
    near = centre.separation(SkyCoord(pra * u.deg, pdec * u.deg)).deg < 2.5 * radius
    pick = RNG.choice(np.flatnonzero(near), 3000, replace=False)
    order = np.floor(np.log2(loc.uniq[pick]) / 2).astype(int) - 1
    ipix = loc.uniq[pick] - 4 * 4**order
    pts = []
    for o in np.unique(order):
        s = order == o
        corners = np.moveaxis(hp.boundaries(1 << int(o), ipix[s], nest=True), -1, -2)
        mid = np.asarray(hp.pix2vec(1 << int(o), ipix[s], nest=True)).T[:, None, :]
        pts.append((0.999 * corners + 0.001 * mid).reshape(-1, 3))
    vec = np.concatenate(pts)
    cra, cdec = hp.vec2ang(vec, lonlat=True)
    sep = centre.separation(SkyCoord(cra * u.deg, cdec * u.deg)).deg
    check_points(loc, cra, cdec, fisher_cl(sep, radius, c), tol)


def test_xrt_circle_resolved_beyond_order_18():
    # Swift-XRT-like 5.8 arcsec circle: order 18 pixels (0.8 arcsec) are far too coarse
    ra, dec, radius, tol = 10.0, 80.0, 0.0016, 3e-3
    loc = shapes.circle(ra, dec, radius, 0.9, tolerance=tol)
    assert loc.max_order > 20
    theta = radius * np.r_[RNG.uniform(0, 2.5, 3000), 1.0]
    ra_p, dec_p = offsets(ra, dec, theta, RNG.uniform(0, 360, len(theta)))
    check_points(loc, ra_p, dec_p, fisher_cl(theta, radius, 0.9), tol)
    assert loc.area(0.9) == pytest.approx(np.pi * radius**2, rel=1e-2)
    # an explicit max_order is a hard cap
    capped = shapes.circle(ra, dec, radius, 0.9, tolerance=tol, max_order=16)
    assert capped.max_order == 16


def _pixel_centres(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) deg of the centres of NUNIQ pixels, with healpy."""
    order = np.floor(np.log2(uniq) / 2).astype(int) - 1
    ipix = uniq - 4 * 4**order
    ra, dec = np.empty(len(uniq)), np.empty(len(uniq))
    for o in np.unique(order):
        s = order == o
        ra[s], dec[s] = hp.pix2ang(1 << int(o), ipix[s], nest=True, lonlat=True)
    return ra, dec


def test_samples_from_circle_fall_inside_at_the_containment_rate():
    loc = shapes.circle(300.0, 60.0, 5.0, 0.68, tolerance=1e-2)
    ra, dec = loc.sample(20000, np.random.default_rng(7))
    sep = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(300 * u.deg, 60 * u.deg)).deg
    assert abs(np.mean(sep <= 5.0) - 0.68) < 0.015


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ra=st.one_of(st.floats(0, 360), st.sampled_from([0.0, 359.999, 360.0, 180.0])),
    dec=st.one_of(st.floats(-90, 90), st.sampled_from([-90.0, 90.0, 89.99, -89.5])),
    radius=st.floats(0.5, 30),
    containment=st.sampled_from([0.5, 0.68, 0.9, 0.95]),
)
def test_circle_anywhere_on_the_sky(ra, dec, radius, containment):
    tol = 1e-2
    loc = shapes.circle(ra, dec, radius, containment, tolerance=tol)
    rng = np.random.default_rng(abs(int(ra * 1000 + dec * 7)))
    theta = radius * np.r_[rng.uniform(0, 2, 60), 1.0]
    ra_p, dec_p = offsets(ra, dec, theta, rng.uniform(0, 360, len(theta)))
    check_points(loc, ra_p, dec_p, fisher_cl(theta, radius, containment), tol)
    assert loc.total_probability == pytest.approx(1, abs=1e-12)
    start, end = loc.ranges29()
    assert start[0] == 0 and end[-1] == 12 * 4**29 and np.all(start[1:] == end[:-1])


@pytest.mark.parametrize("dec", [90.0, -90.0, 89.99])
def test_circle_centred_on_a_pole(dec):
    # contours are then HEALPix rings of exactly equal density, whose ties move the greedy
    # credible level by up to their whole range (found by hypothesis above)
    tol, radius, c = 1e-2, 30.0, 0.5
    loc = shapes.circle(0.0, dec, radius, c, tolerance=tol)
    theta = radius * np.r_[RNG.uniform(0, 2, 20000), 1.0]
    ra_p, dec_p = offsets(0.0, dec, theta, RNG.uniform(0, 360, len(theta)))
    check_points(loc, ra_p, dec_p, fisher_cl(theta, radius, c), tol)


# ------------------------------------------------------------------ ellipses and boxes

def test_ellipse_containment_region_is_the_stated_ellipse():
    ra, dec, a, b, pa, c = 150.1, -9.2, 8.0, 3.0, 35.0, 0.9
    loc = shapes.ellipse(ra, dec, a, b, pa, c, tolerance=TOL)
    rho_c = math.sqrt(-2 * math.log1p(-c))
    # along the axes at fractions f of the semi-axes, the Gaussian credible level is
    # 1 - exp(-(f rho_c)^2 / 2) (distances as Lambert chords 2 sin(theta/2))
    f = RNG.uniform(0.02, 1.6, 200)
    axis = RNG.integers(0, 4, 200)
    sep = np.where(axis % 2 == 0, a, b)
    chord_sep = np.degrees(2 * np.arcsin(f * np.sin(np.radians(sep) / 2)))
    ra_p, dec_p = offsets(ra, dec, chord_sep, pa + 90.0 * axis)
    expected = -np.expm1(-0.5 * (f * rho_c) ** 2)
    check_points(loc, ra_p, dec_p, expected, TOL)
    # exactly on the ellipse: the containment
    ra_p, dec_p = offsets(ra, dec, np.array([a, b, a, b]), pa + np.array([0, 90, 180, 270.0]))
    np.testing.assert_allclose(loc.credible_level_at(ra_p, dec_p), c, atol=TOL)
    assert loc.area(c) == pytest.approx(np.pi * a * b, rel=0.02)  # flat-sky ellipse area


def test_ellipse_axis_order_and_position_angle_convention():
    # PA 90 (major axis east-west) equals PA 0 with the axes swapped
    a = shapes.ellipse(30, 20, 4.0, 1.0, 90.0, tolerance=1e-2)
    b = shapes.ellipse(30, 20, 1.0, 4.0, 0.0, tolerance=1e-2)
    ra_e, dec_e = offsets(30, 20, np.array([3.0, 3.0]), np.array([90.0, 0.0]))
    cl_a = a.credible_level_at(ra_e, dec_e)
    assert cl_a[0] < 0.8 < 0.999 < cl_a[1]  # 3 deg east is inside, 3 deg north is not
    np.testing.assert_allclose(b.credible_level_at(ra_e, dec_e), cl_a, atol=1e-2)


def test_box_reaches_the_stated_asymmetric_errors():
    # IceCube-style: RA errors in RA-coordinate degrees, converted by cos(dec)
    ra, dec, c = 273.48, 22.16, 0.9
    rp, rm, dp, dm = 1.5, 0.8, 0.6, 1.1
    loc = shapes.box(ra, dec, rp, rm, dp, dm, c, tolerance=TOL)
    cosd = math.cos(math.radians(dec))
    ext = np.array([dp, rp * cosd, dm, rm * cosd])  # north, east, south, west on the sky
    pas = np.array([0.0, 90.0, 180.0, 270.0])
    ra_p, dec_p = offsets(ra, dec, ext, pas)
    np.testing.assert_allclose(loc.credible_level_at(ra_p, dec_p), c, atol=TOL)
    # the point at (ra + ra_plus, dec) in coordinates is on the boundary too
    assert float(loc.credible_level_at(ra + rp, dec)) == pytest.approx(c, abs=2 * TOL)
    f = RNG.uniform(0.02, 1.5, 200)
    k = RNG.integers(0, 4, 200)
    chord_sep = np.degrees(2 * np.arcsin(f * np.sin(np.radians(ext[k]) / 2)))
    ra_p, dec_p = offsets(ra, dec, chord_sep, pas[k])
    check_points(loc, ra_p, dec_p, -np.expm1(0.5 * (f**2) * 2 * math.log1p(-c)), TOL)
    # the probability east of the centre is sigma_e / (sigma_e + sigma_w)
    east = np.mean(loc.sample(40000, np.random.default_rng(3))[0] > ra)
    assert east == pytest.approx(rp / (rp + rm), abs=0.01)


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("call", [
    lambda: shapes.circle(10, 95, 1),
    lambda: shapes.circle(10, 20, -1),
    lambda: shapes.circle(10, 20, 175, 0.9),  # a cap bigger than the containment
    lambda: shapes.ellipse(10, -91, 2, 1, 0),
    lambda: shapes.box(400, 0, 1, 1, 1, 1),
    lambda: shapes.box(10, 0, 1, 0, 1, 1),
])
def test_bad_shapes_refused(call):
    with pytest.raises(BadCoordinatesError):
        call()

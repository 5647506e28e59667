"""Analytic regions (mmcross.model.regions) against closed forms and independent references.

Positions are made with astropy (``directional_offset_by``, ``separation``,
``position_angle``); the references are written out here from the definitions (von
Mises-Fisher, Gaussian in angle by scipy quadrature, the Lambert-plane split Gaussian by
scipy integration over the plane), never from the kernel. The regions of real notices of
every mission are also rasterised finely and checked with ligo.skymap's ``crossmatch``.
"""

from __future__ import annotations

import json
import math

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time
from ligo.skymap.postprocess import crossmatch
from scipy import integrate, optimize, special

from mmcross.listeners import parse_notice, read_notice_file
from mmcross.matchers import Matcher
from mmcross.model import regions, shapes
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.event import Event, EventKind

ARCSEC = 1 / 3600
T0 = Time("2024-01-12T17:37:25", scale="utc")
SR_TO_DEG2 = (180 / np.pi) ** 2


def offsets(ra: float, dec: float, sep_deg, pa_deg) -> tuple[np.ndarray, np.ndarray]:
    c = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(
        np.asarray(pa_deg) * u.deg, np.asarray(sep_deg) * u.deg)
    return c.ra.deg, c.dec.deg


def separation_rad(ra0, dec0, ra, dec) -> np.ndarray:
    return SkyCoord(ra0 * u.deg, dec0 * u.deg).separation(SkyCoord(ra * u.deg, dec * u.deg)).rad


def fisher_reference(radius: float, containment: float):
    """(credible level, density per sr, searched area sr) as functions of the angle (rad);
    ``1 - cos t`` written ``2 sin^2(t/2)`` so that arcsecond angles keep their digits."""
    def one_minus_cos(t):
        return 2 * np.sin(0.5 * np.asarray(t)) ** 2

    def cl(theta, kappa):
        return -np.expm1(-kappa * one_minus_cos(theta)) / -np.expm1(-2 * kappa)

    log_kappa = optimize.brentq(
        lambda lk: cl(math.radians(radius), math.exp(lk)) - containment, -20, 40, xtol=1e-15)
    kappa = math.exp(log_kappa)
    norm = 2 * np.pi * -np.expm1(-2 * kappa) / kappa
    return (lambda t: cl(t, kappa), lambda t: np.exp(-kappa * one_minus_cos(t)) / norm,
            lambda t: 2 * np.pi * one_minus_cos(t))


# ------------------------------------------------------------------ circles

@pytest.mark.parametrize("radius", [1 * ARCSEC, 0.05, 3.0, 15.0, 60.0])
@pytest.mark.parametrize("ra,dec", [(0.0, 90.0), (359.99, -12.0), (180.0, -90.0),
                                    (0.0, 0.0)])
def test_fisher_circle_exact_at_any_radius_poles_and_ra_wrap(radius, ra, dec):
    region = regions.FisherCircle(ra, dec, radius, 0.9)
    rng = np.random.default_rng(1)
    sep = radius * np.r_[0.0, rng.uniform(0, 2.5, 60), 1.0]  # 1.0: the stated radius
    pra, pdec = offsets(ra, dec, sep, rng.uniform(0, 360, len(sep)))
    theta = separation_rad(ra, dec, pra, pdec)
    cl, dens, area = fisher_reference(radius, 0.9)
    got = region.evaluate(pra, pdec)
    # astropy's own separations of 1-arcsec offsets carry ~1e-16 rad: CL within 1e-9
    np.testing.assert_allclose(got[0], cl(theta), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got[1], dens(theta), rtol=1e-8)
    np.testing.assert_allclose(got[2], area(theta), rtol=1e-9, atol=1e-30)
    assert region.area(0.9) == pytest.approx(area(math.radians(radius)) * SR_TO_DEG2,
                                             rel=1e-12)
    assert region.cap_radius(0.9) == pytest.approx(radius, rel=1e-9)


@pytest.mark.parametrize("radius", [0.5, 10.0, 70.0])
def test_gaussian_circle_against_scipy_quadrature(radius):
    r, c = math.radians(radius), 0.9

    def mass(theta, sig):
        f = lambda t: math.exp(-0.5 * (t / sig) ** 2) * math.sin(t)  # noqa: E731
        return integrate.quad(f, 0, theta, limit=400, epsabs=0, epsrel=1e-13)[0]

    sig = optimize.brentq(lambda s: mass(r, s) / mass(math.pi, s) - c, r / 10, r * 10,
                          xtol=1e-16)
    region = regions.GaussianCircle(20.0, -30.0, radius, c)
    assert region.sigma == pytest.approx(sig, rel=1e-10)
    sep = np.linspace(0, min(3 * radius, 179), 25)
    ra, dec = offsets(20.0, -30.0, sep, 40.0)
    theta = separation_rad(20.0, -30.0, ra, dec)
    total = mass(math.pi, sig)
    ref = np.array([mass(t, sig) / total for t in theta])
    np.testing.assert_allclose(region.credible_level(ra, dec), ref, atol=1e-11)
    np.testing.assert_allclose(region.density(ra, dec),
                               np.exp(-0.5 * (theta / sig) ** 2) / (2 * np.pi * total),
                               rtol=1e-10)
    assert region.area(c) == pytest.approx(2 * np.pi * (1 - math.cos(r)) * SR_TO_DEG2,
                                           rel=1e-9)


# ------------------------------------------------------------------ Lambert-plane shapes

def lambert_reference(scales_at, containment: float):
    """Reference split Gaussian in the Lambert plane, from the definition: per quadrant
    (east/west x north/south) scales ``scales_at(rho)`` of the containment contour ``rho``;
    T = plane mass inside the disc of radius 2 (scipy), rho solved so that the sphere holds
    ``containment`` inside the contour. Returns (sig, T)."""
    def trunc(sig):
        se, sw, sn, ss = sig
        total = 0.5 * np.pi * (se + sw) * (sn + ss)

        def inside(phi):
            sx = se if math.cos(phi) >= 0 else sw
            sy = sn if math.sin(phi) >= 0 else ss
            g2 = (math.cos(phi) / sx) ** 2 + (math.sin(phi) / sy) ** 2
            return -math.expm1(-2.0 * g2) / g2

        got = sum(integrate.quad(inside, q * np.pi / 2, (q + 1) * np.pi / 2, epsabs=0,
                                 epsrel=1e-12, limit=200)[0] for q in range(4))
        return got / total

    rho = optimize.brentq(lambda r: -math.expm1(-r * r / 2) - containment * trunc(
        scales_at(r)), 0.1, 40, xtol=1e-15)
    sig = scales_at(rho)
    return sig, trunc(sig)


def lambert_xy(ra0, dec0, ra, dec):
    """Lambert azimuthal equal-area (x east, y north) by astropy separation and PA."""
    c0 = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    c = SkyCoord(ra * u.deg, dec * u.deg)
    r = 2 * np.sin(0.5 * c0.separation(c).rad)
    pa = c0.position_angle(c).rad
    return r * np.sin(pa), r * np.cos(pa)


@pytest.mark.parametrize("ra,dec,a,b,pa", [(150.0, 20.0, 4.0, 1.0, 30.0),
                                           (10.0, 89.5, 0.02, 0.01, 100.0),
                                           (359.9, -40.0, 60.0, 10.0, 170.0)])
def test_ellipse_against_the_plane_gaussian(ra, dec, a, b, pa):
    c = 0.9
    region = regions.Ellipse(ra, dec, a, b, pa, c)
    ca, cb = (2 * math.sin(math.radians(x) / 2) for x in (a, b))
    (sb, _, sa, _), trunc = lambert_reference(lambda r: (cb / r, cb / r, ca / r, ca / r), c)
    rng = np.random.default_rng(3)
    pra, pdec = offsets(ra, dec, rng.uniform(0, 2.5 * a, 200), rng.uniform(0, 360, 200))
    x, y = lambert_xy(ra, dec, pra, pdec)
    p = math.radians(pa)
    minor, major = x * math.cos(p) - y * math.sin(p), x * math.sin(p) + y * math.cos(p)
    rho2 = (minor / sb) ** 2 + (major / sa) ** 2
    ok = rho2 * max(sa, sb) ** 2 < 4  # contour inside the Lambert disc
    got = region.evaluate(pra, pdec)
    np.testing.assert_allclose(got[0][ok], np.minimum(-np.expm1(-rho2 / 2) / trunc, 1)[ok],
                               atol=1e-10)
    np.testing.assert_allclose(got[1], np.exp(-rho2 / 2) / (2 * np.pi * sa * sb * trunc),
                               rtol=1e-9)
    np.testing.assert_allclose(got[2][ok], (np.pi * rho2 * sa * sb)[ok], rtol=1e-9)
    # the stated ellipse holds the containment: its vertices are at CL = c
    vra, vdec = offsets(ra, dec, [a, b, a, b], [pa, pa + 90, pa + 180, pa + 270])
    np.testing.assert_allclose(region.credible_level(vra, vdec), c, atol=1e-9)


@pytest.mark.parametrize("dec", [-89.0, 22.16, 89.99])
def test_box_against_the_plane_split_gaussian(dec):
    ra, c = 273.48, 0.9
    east, west, north, south = 1.5, 0.8, 0.6, 1.1
    region = regions.Box(ra, dec, east, west, north, south, c)
    ext = [2 * math.sin(math.radians(e) / 2) for e in (east, west, north, south)]
    sig, trunc = lambert_reference(lambda r: tuple(e / r for e in ext), c)
    se, sw, sn, ss = sig
    rng = np.random.default_rng(4)
    pra, pdec = offsets(ra, dec, rng.uniform(0, 3, 300), rng.uniform(0, 360, 300))
    x, y = lambert_xy(ra, dec, pra, pdec)
    rho2 = (x / np.where(x >= 0, se, sw)) ** 2 + (y / np.where(y >= 0, sn, ss)) ** 2
    got = region.evaluate(pra, pdec)
    np.testing.assert_allclose(got[0], -np.expm1(-rho2 / 2) / trunc, atol=1e-10)
    np.testing.assert_allclose(got[1], np.exp(-rho2 / 2) / (
        0.5 * np.pi * (se + sw) * (sn + ss) * trunc), rtol=1e-8)
    np.testing.assert_allclose(got[2], 0.25 * np.pi * rho2 * (se + sw) * (sn + ss), rtol=1e-8)
    # the stated errors are on the containment contour (north, east, south, west on the sky)
    vra, vdec = offsets(ra, dec, [north, east, south, west], [0, 90, 180, 270])
    np.testing.assert_allclose(region.credible_level(vra, vdec), c, atol=1e-9)


@pytest.mark.parametrize("region", [
    regions.FisherCircle(45.0, 60.0, 8.0, 0.9),
    regions.GaussianCircle(45.0, 60.0, 8.0, 0.9),
    regions.Ellipse(45.0, 60.0, 12.0, 3.0, 45.0, 0.68),
    regions.Box(45.0, 60.0, 5.0, 2.0, 3.0, 7.0, 0.9),
], ids=["fisher", "gaussian", "ellipse", "box"])
def test_density_integrates_to_the_credible_level_and_area(region):
    """Gauss-Legendre integration (scipy's nodes) of the density on the sphere, on rings
    about the centre (positions by rotation here, the radius of each level's cap as a
    break): the total is 1, and over the credible region at a level it is that level, on
    the region's area."""
    a, d = math.radians(region.ra), math.radians(region.dec)
    centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.cross(centre, east)
    x, w = special.roots_legendre(200)
    phi = (np.arange(1440) + 0.5) * 2 * np.pi / 1440

    def rings(level):
        """(weights per ring, CL and density on the rings)."""
        cuts = [0.0, math.radians(region.cap_radius(level)),
                math.radians(region.cap_radius(0.999)), np.pi]
        theta = np.concatenate([lo + 0.5 * (hi - lo) * (x + 1)
                                for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)])
        weight = np.concatenate([0.5 * (hi - lo) * w
                                 for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)])
        t, p = theta[:, None, None], phi[None, :, None]
        v = np.cos(t) * centre + np.sin(t) * (np.sin(p) * east + np.cos(p) * north)
        ra = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
        dec = np.degrees(np.arcsin(np.clip(v[..., 2], -1, 1)))
        cl, dens, _ = region.evaluate(ra, dec)
        return weight * 2 * np.pi * np.sin(theta), cl, dens

    for level in (0.5, 0.9):
        weight, cl, dens = rings(level)
        assert np.sum(weight * dens.mean(axis=1)) == pytest.approx(1.0, abs=1e-6)
        inside = cl <= level
        assert np.sum(weight * np.where(inside, dens, 0).mean(axis=1)) == pytest.approx(
            level, abs=3e-3)  # ring sampling of a boundary that is not a ring
        assert np.sum(weight * inside.mean(axis=1)) * SR_TO_DEG2 == pytest.approx(
            region.area(level), rel=3e-3)


def test_samples_follow_the_credible_levels():
    rng = np.random.default_rng(9)
    for region in (regions.FisherCircle(0.0, -90.0, 30.0, 0.9),
                   regions.GaussianCircle(200.0, 5.0, 2.0, 0.5),
                   regions.Ellipse(10.0, 10.0, 50.0, 5.0, 60.0, 0.9),
                   regions.Box(300.0, 80.0, 1.0, 3.0, 0.5, 2.0, 0.9)):
        ra, dec = region.sample(40000, rng)
        cl = region.credible_level(ra, dec)
        for level in (0.25, 0.5, 0.9):  # CL of a sample is uniform
            assert np.mean(cl <= level) == pytest.approx(level, abs=0.012)


def test_json_round_trip_and_bad_parameters():
    for region in (regions.FisherCircle(1.0, 2.0, 3.0, 0.9),
                   regions.GaussianCircle(1.0, 2.0, 3.0, 0.68),
                   regions.Ellipse(1.0, 2.0, 3.0, 1.0, 20.0, 0.9),
                   regions.Box(1.0, 2.0, 3.0, 1.0, 2.0, 0.5, 0.9)):
        d = json.loads(json.dumps(region.to_dict()))
        assert regions.region_from_dict(d) == region
        np.testing.assert_array_equal(regions.region_from_dict(d).params, region.params)
    with pytest.raises(regions.BadCoordinatesError):
        regions.region_from_dict({"shape": "hexagon", "ra": 1.0, "dec": 2.0})
    with pytest.raises(regions.BadCoordinatesError):
        regions.FisherCircle(1.0, 95.0, 1.0, 0.9)
    with pytest.raises(regions.BadCoordinatesError):
        regions.Box(1.0, 0.0, 1.0, 100.0, 1.0, 1.0, 0.9)


# ------------------------------------------------------------------ real notices

RASTER_TOL = 5e-3
NOTICES = {
    "Fermi GBM": "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml",
    "Swift BAT": "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml",
    "Swift XRT": "gcn/voevent/fink-mm/Swift_XRT_Pos_1120270.xml",
    "INTEGRAL": "gcn/voevent/fink-mm/INTEGRAL_Refined_Pos_010042.xml",
    "IceCube track": "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml",
    "IceCube cascade": "gcn/voevent/fink-mm/IceCube_Cascade_136889_25590129.xml",
    "SVOM ECLAIRs": "gcn/json/gcn-schema/gcn/notices/svom/eclairs/trigger.wakeup.example.json",
}


def _notice_localizations(shared_file):
    out = {name: read_notice_file(shared_file(rel), tolerance=RASTER_TOL,
                                  roles=("observation", "test")).localization
           for name, rel in NOTICES.items()}
    # Einstein Probe WXT: no real notice in ../shared/data; the schema's fields
    ep = {"instrument": "WXT", "trigger_time": "2024-03-01T21:46:05.13Z",
          "id": ["01708973486"], "ra": 120.0, "dec": 40.0, "ra_dec_error": 0.05}
    out["EP WXT"] = parse_notice(json.dumps(ep).encode(), tolerance=RASTER_TOL,
                                 topic="gcn.notices.einstein_probe.wxt.alert").localization
    # IceCube box: the bronze track's position and 90 % radius as asymmetric RA/Dec errors
    track = out["IceCube track"].region
    r = track.radius
    out["IceCube box"] = shapes.box(track.ra, track.dec, 1.3 * r, 0.8 * r, 1.1 * r, 0.7 * r,
                                    0.9, tolerance=RASTER_TOL)
    return out


def test_every_mission_matches_a_fine_rasterisation_checked_by_ligo_crossmatch(shared_file):
    locs = _notice_localizations(shared_file)
    config = Config.load()
    rng = np.random.default_rng(12)
    for name, loc in locs.items():
        assert loc.region is not None, name
        ra, dec = loc.sample(400, rng)
        exact = loc.region.evaluate(ra, dec)
        # the matcher reports the same values as the region, and exactly the alerts <= 0.9
        m = Matcher(config)
        event = Event(f"x:{name}", EventKind.GRB, name, T0, loc, revision=1)
        m.upsert(event)
        batch = AlertBatch(np.arange(len(ra), dtype=np.int64), np.array(
            [str(i) for i in range(len(ra))], dtype=object), ra, dec,
            np.full(len(ra), event.trigger_mjd_tai))
        found = m.match_arrays(batch)
        assert np.array_equal(np.sort(found.alert_index), np.flatnonzero(exact[0] <= 0.9)), name
        np.testing.assert_array_equal(found.credible_level, exact[0][found.alert_index])
        np.testing.assert_allclose(found.prob_density, exact[1][found.alert_index] / SR_TO_DEG2,
                                   rtol=1e-14)
        # a fine rasterisation, read by ligo.skymap, agrees to its tolerance
        pix = loc.pixels()
        ref = crossmatch(Table({"UNIQ": pix.uniq, "PROBDENSITY": pix.probdensity}),
                         SkyCoord(ra * u.deg, dec * u.deg), contours=(0.5, 0.9))
        np.testing.assert_allclose(exact[0], ref.searched_prob, atol=RASTER_TOL, err_msg=name)
        core = exact[0] < 0.9
        np.testing.assert_allclose(exact[1][core], ref.probdensity[core], rtol=0.1,
                                   err_msg=name)
        np.testing.assert_allclose(loc.area(0.9), ref.contour_areas[1], rtol=0.02,
                                   err_msg=name)
        np.testing.assert_allclose(
            [loc.region.area(p) for p in ref.searched_prob[core]], ref.searched_area[core],
            rtol=0.05, atol=1e-9, err_msg=name)

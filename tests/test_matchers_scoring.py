"""Distance moments, p_chance and the background-rate estimator of ``matchers``."""

from __future__ import annotations

import math

import healpy as hp
import numpy as np
import pytest
from ligo.skymap.distance import parameters_to_moments

from mmcross.matchers import BackgroundRate, Matcher, conditional_distance_moments, p_chance
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config

# -- distance moments --------------------------------------------------------------------


def test_distance_moments_equal_ligo_skymap_over_the_useful_range():
    x = np.concatenate([np.linspace(-8, 0, 400), np.linspace(0, 200, 2000)])
    for sigma in (0.3, 17.0, 450.0):
        mu = x * sigma
        mean, std = conditional_distance_moments(mu, np.full_like(mu, sigma))
        ref_mean, ref_std, _ = parameters_to_moments(mu, sigma)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
        np.testing.assert_allclose(std, ref_std, rtol=1e-6)


def test_distance_moments_deep_lower_tail_tend_to_the_gamma_limit():
    # For mu/sigma -> -inf, r^2 exp(-(r - mu)^2 / 2 sigma^2) -> r^2 exp(-r |mu| / sigma^2):
    # a Gamma(3) law of scale s = sigma^2 / |mu|, mean 3 s, std sqrt(3) s.
    mu, sigma = np.array([-1e5, -1e7]), np.array([1.0, 10.0])
    mean, std = conditional_distance_moments(mu, sigma)
    s = sigma**2 / np.abs(mu)
    np.testing.assert_allclose(mean, 3 * s, rtol=1e-4)
    np.testing.assert_allclose(std, math.sqrt(3) * s, rtol=1e-4)
    assert np.all(np.isfinite(mean)) and np.all(std > 0)


def test_distance_moments_without_distance_information_are_nan():
    mean, std = conditional_distance_moments(np.array([np.inf, np.nan, 100.0, 100.0]),
                                             np.array([1.0, 1.0, np.inf, 0.0]))
    assert np.all(np.isnan(mean)) and np.all(np.isnan(std))


# -- p_chance ------------------------------------------------------------------------------


@pytest.mark.parametrize(("rho", "area", "dt", "expected"), [
    (0.1, 10.0, 1.0, 1 - math.exp(-1.0)),        # lambda = 0.1 * 10 * 1 = 1
    (0.5, 2.0, -3.0, 1 - math.exp(-3.0)),        # the sign of dt is ignored
    (2.0, 0.25, 0.5, 1 - math.exp(-0.25)),
    (0.1, 100.0, 0.0, 0.0),                      # simultaneous: no chance window
    (1e-3, 1e-3, 1e-3, 1e-9 - 0.5e-18),          # tiny lambda: p ~ lambda - lambda^2 / 2
])
def test_p_chance_hand_computed(rho, area, dt, expected):
    assert float(p_chance(rho, area, dt)) == pytest.approx(expected, rel=1e-12, abs=0)


def test_p_chance_grows_with_area_and_time():
    p = p_chance(0.1, np.array([1.0, 10.0, 10.0]), np.array([1.0, 1.0, 5.0]))
    assert p[0] < p[1] < p[2] < 1


# -- background rate -----------------------------------------------------------------------


def _uniform_in_pixels(rng, order, pixels, n):
    """n positions uniform in the union of NESTED pixels (equal-area, so pick a pixel, then
    a uniformly random order-29 sub-pixel of it)."""
    shift = 2 * (29 - order)
    pick = rng.choice(pixels, n)
    sub = rng.integers(0, 1 << shift, n)
    lon, lat = hp.pix2ang(2**29, (pick << shift) + sub, nest=True, lonlat=True)
    return lon, lat


def test_background_rate_recovers_a_known_uniform_rate():
    rng = np.random.default_rng(42)
    order, pixels = 4, np.arange(200, 220)            # 20 order-4 pixels = 268.6 deg^2
    area = len(pixels) * hp.nside2pixarea(2**order, degrees=True)
    rho_true, t0, days = 1.5, 60000.0, 10.0
    n_new = rng.poisson(rho_true * area * days)
    n_old = 20000                                     # covers all order-7 cells of the area
    est = BackgroundRate(default=0.1, min_new=1000, cell_order=7)
    for n, new in ((n_new, True), (n_old, False)):
        lon, lat = _uniform_in_pixels(rng, order, pixels, n)
        t = t0 + rng.uniform(0, days, n)
        for part in np.array_split(np.arange(n), 7):  # fed in several batches
            est.observe(lon[part], lat[part], t[part], np.full(len(part), new))
    assert est.covered_area == pytest.approx(area, rel=1e-9)
    assert est.time_span == pytest.approx(days, rel=1e-3)
    assert est.n_new == n_new
    # N_new ~ 4000: Poisson scatter 1.6 %
    assert est.rate == pytest.approx(rho_true, rel=0.06)


def test_background_rate_uses_the_default_until_enough_new_alerts():
    est = BackgroundRate(default=0.1, min_new=1000)
    assert est.rate == 0.1 and est.measured is None
    est.observe(np.array([10.0, 11.0]), np.array([0.0, 1.0]), np.array([1.0, 2.0]),
                np.array([True, True]))
    assert est.rate == 0.1
    est.observe(np.empty(0), np.empty(0), np.empty(0), np.empty(0, bool))
    assert est.n_alerts == 2


def test_matcher_observe_feeds_the_rate():
    cfg = Config.load(overrides={"match": {"rho_min_new_alerts": 10, "background_rate": 0.1}})
    m = Matcher(cfg)
    assert m.background_rate == 0.1
    n = 100
    rng = np.random.default_rng(3)
    lon, lat = _uniform_in_pixels(rng, 7, np.array([1234]), n)  # one order-7 cell
    alerts = AlertBatch(np.arange(n), np.array([str(i) for i in range(n)], dtype=object),
                        lon, lat, np.linspace(60000, 60002, n), is_new=np.ones(n, bool))
    m.observe(alerts)
    cell = hp.nside2pixarea(2**7, degrees=True)
    assert m.background_rate == pytest.approx(n / (cell * 2.0), rel=1e-9)

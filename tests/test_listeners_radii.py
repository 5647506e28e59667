"""Error-radius conventions: the table itself and the circles it implies, checked against an
independent numerical integration on a healpy grid."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from mmcross.listeners.radii import CONVENTIONS, circle_spec, fisher_cdf, mixture_radius


def _grid_mixture_radius(stat: float, systematic, containment: float = 0.9) -> float:
    """90 % radius of sum_i w_i N2(0, hypot(stat, s_i)) integrated on a HEALPix grid around
    the north pole (flat 2-D Gaussians in angular distance, normalised on the grid)."""
    nside = 512
    theta, _ = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)))
    d = np.degrees(theta)
    pdf = np.zeros_like(d)
    for w, s in systematic:
        sig = np.hypot(stat, s)
        pdf += w * np.exp(-0.5 * (d / sig) ** 2) / sig**2
    order = np.argsort(d)
    cum = np.cumsum(pdf[order]) / pdf.sum()
    return float(d[order][np.searchsorted(cum, containment)])


def test_every_convention_states_containment_and_reference():
    for key, conv in CONVENTIONS.items():
        assert conv.key == key
        assert 0.0 < conv.containment < 1.0
        assert conv.reference, key
        if conv.systematic:
            assert sum(w for w, _ in conv.systematic) == pytest.approx(1.0, abs=1e-3)


def test_conventions_read_from_the_notices():
    # GBM VOEvent Error2Radius is 1-sigma statistical; Swift/INTEGRAL/IceCube are 90 %.
    assert CONVENTIONS["fermi-gbm-gnd"].containment == 0.68
    assert not CONVENTIONS["fermi-gbm-gnd"].systematic_included
    assert CONVENTIONS["swift-bat"].containment == 0.9
    assert CONVENTIONS["integral-ibas"].containment == 0.9
    # AMON bronze: 'statistical only, (90% containment)'; cascade: 'statistical and systematic'
    assert CONVENTIONS["icecube-track"].containment == 0.9
    assert not CONVENTIONS["icecube-track"].systematic_included
    assert CONVENTIONS["icecube-cascade"].systematic_included
    assert CONVENTIONS["gcn-unified"].containment == 0.9  # core/Localization default


def test_fisher_cdf_matches_gaussian_for_small_sigma():
    for r, s in ((0.05, 0.03), (1.0, 0.7), (3.0, 2.0)):
        assert fisher_cdf(r, s) == pytest.approx(1 - np.exp(-0.5 * (r / s) ** 2), rel=2e-3)
    assert fisher_cdf(180.0, 30.0) == pytest.approx(1.0)


@pytest.mark.parametrize("key,stat", [("fermi-gbm-gnd", 3.03), ("fermi-gbm-fin", 11.34),
                                      ("fermi-gbm-fin-2019", 2.34), ("fermi-gbm-gnd", 0.5)])
def test_gbm_mixture_radius_matches_grid_integration(key, stat):
    sys = CONVENTIONS[key].systematic
    ours = mixture_radius(stat, sys)
    ref = _grid_mixture_radius(stat, sys)
    assert ours == pytest.approx(ref, rel=0.03)
    # the systematic can only widen the region: bigger than the pure-stat 90 % radius
    assert ours > stat * np.sqrt(-2 * np.log(0.1))


def test_circle_spec_adds_systematic_only_when_not_included():
    spec = circle_spec("swift-bat", 0.05)
    assert (spec.radius, spec.containment) == (0.05, 0.9)
    gnd = circle_spec("fermi-gbm-gnd", 3.03)
    assert gnd.containment == 0.9 and gnd.radius == pytest.approx(mixture_radius(
        3.03, CONVENTIONS["fermi-gbm-gnd"].systematic))
    sys_in = circle_spec("fermi-gbm-gnd", 3.03, systematic_included=True)
    assert (sys_in.radius, sys_in.containment) == (3.03, 0.68)
    assert circle_spec("gcn-unified", 2.0, containment=0.5).containment == 0.5

"""Joint FARs, sky-map overlaps and external sky maps against ligo-raven 3.3 and gwcelery 3.0.

The references are ligo-raven's own ``ligo.raven.search`` functions (installed by the test
extra) and gwcelery 3.0's modules loaded from its wheel (``tests.helpers.gwcelery_module``),
on the real S230518h LVK map with real GRB/neutrino notice positions moved into it.
"""

from __future__ import annotations

import numpy as np
import pytest
from ligo.raven import search as raven_search
from ligo.skymap.io import fits as skymap_fits

from mmcross.listeners import read_notice_file
from mmcross.matchers import external_skymaps as es
from mmcross.matchers import raven
from mmcross.model.errors import ConfigError
from mmcross.model.localization import Localization
from tests.helpers import gwcelery_module

S230518H_MAP = "skymaps/fink-mm/S230518h_initial.multiorder.fits"
GBM_NOTICE = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"
SWIFT_NOTICE = "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml"
ICECUBE_NOTICE = "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml"
RTOL = 1e-6


@pytest.fixture(scope="module")
def gwcelery_skymaps():
    return gwcelery_module("tasks.external_skymaps")


@pytest.fixture(scope="module")
def s230518h(shared_file):
    path = shared_file(S230518H_MAP)
    table = skymap_fits.read_sky_map(str(path), moc=True)
    loc = Localization.from_fits(path)
    peak = loc.uniq[np.argmax(loc.probdensity)]
    ra, dec = (np.degrees(x)[0] for x in raven.pixel_centres(np.array([peak])))
    return table, loc, ra, dec


def _gw(loc: Localization) -> raven.MocMap:
    return raven.MocMap(loc.uniq, loc.probdensity)


def _assert_same_map(mine: es.ExternalMap, ref) -> None:
    """Same pixels (in any order: ties broken differently) and densities to RTOL."""
    a, b = np.argsort(mine.uniq), np.argsort(np.asarray(ref["UNIQ"]))
    np.testing.assert_array_equal(mine.uniq[a], np.asarray(ref["UNIQ"])[b])
    np.testing.assert_allclose(mine.density[a], np.asarray(ref["PROBDENSITY"])[b], rtol=RTOL,
                               atol=1e-300)  # far tails underflow to 0 in both


@pytest.mark.parametrize("search,kw", [
    ("GRB", {}), ("GRB", {"em_rate": 325 / raven.SECONDS_PER_YEAR}), ("SubGRB", {}),
    ("MDC", {"em_rate": 1e-5}),
    ("SubGRBTargeted", {"pipeline": "Fermi", "ext_far": 3e-5}),
    ("SubGRBTargeted", {"pipeline": "Swift", "ext_far": 2e-4, "far_gw_thresh": 1.85e-4,
                        "far_grb_thresh": 1e-3}),
])
def test_temporal_far_is_ligo_ravens_coinc_far(search, kw):
    gw_far, tl, th = 3.218261352069347e-10, -1, 5
    ext = {"pipeline": kw.get("pipeline", "Fermi"), "gpstime": 1e9, "far": kw.get("ext_far")}
    ref = raven_search.coinc_far(
        "S1", "E1", tl, th, grb_search=search, gracedb=object(),
        se_dict={"preferred_event": "G1", "far": gw_far, "t_0": 1e9}, ext_dict=ext,
        em_rate=kw.get("em_rate"), far_grb=kw.get("ext_far"),
        far_gw_thresh=kw.get("far_gw_thresh"), far_grb_thresh=kw.get("far_grb_thresh"))
    mine = raven.temporal_far(gw_far, tl, th, search, **kw)
    assert mine == pytest.approx(ref["temporal_coinc_far"], rel=RTOL)


def test_unknown_search_is_a_config_error():
    with pytest.raises(ConfigError):
        raven.temporal_far(1e-9, -5, 1, "Neutrino")


def test_gbm_map_is_gwcelerys_core_plus_tail(gwcelery_skymaps):
    ref = gwcelery_skymaps.create_external_skymap(
        120.0, -35.0, 4.2, "Fermi", "FERMI_GBM_GROUND_POSITION")
    mine = es.external_skymap(120.0, -35.0, 4.2, 0.68,
                              fermi_notice_type="FERMI_GBM_GROUND_POSITION")
    _assert_same_map(mine, ref)


@pytest.mark.parametrize("pipeline,radius,containment", [
    ("Swift", 0.05, 0.9), ("IceCube", 1.2755, 0.9), ("SVOM", 0.02, None)])
def test_cone_map_is_gwcelerys_gaussian_with_radius_floor(gwcelery_skymaps, pipeline, radius,
                                                          containment):
    ref = gwcelery_skymaps.create_external_skymap(273.48, 22.16, radius, pipeline)
    mine = es.external_skymap(273.48, 22.16, radius, containment)
    _assert_same_map(mine, ref)


def _moved_to(notice, ra, dec, shared_file):
    event = read_notice_file(shared_file(notice))
    return event, ra, dec


@pytest.mark.parametrize("notice,offset", [(GBM_NOTICE, 4.0), (SWIFT_NOTICE, 1.0),
                                           (ICECUBE_NOTICE, 2.0)])
def test_moc_x_moc_overlap_is_ligo_ravens(s230518h, shared_file, notice, offset):
    """A real notice's radius and convention, placed `offset` deg from the GW map's peak."""
    table, loc, ra, dec = s230518h
    event = read_notice_file(shared_file(notice))
    fermi = es.MMCROSS_FERMI_NOTICE_TYPES.get(event.notice_type)
    ext = es.external_skymap(ra + offset, dec, event.error_radius, event.containment,
                             fermi_notice_type=fermi)
    ref = raven_search.skymap_overlap_integral(table["PROBDENSITY"], ext.density,
                                               table["UNIQ"], ext.uniq)
    assert raven.overlap_moc_moc(_gw(loc), raven.MocMap(ext.uniq, ext.density)) == \
        pytest.approx(ref, rel=RTOL)


def test_moc_x_point_overlap_is_ligo_ravens(s230518h):
    table, loc, ra, dec = s230518h
    for dra, ddec in [(0.0, 0.0), (0.37, -0.2), (5.0, 3.0), (180.0, 0.0)]:
        pra, pdec = (ra + dra) % 360, float(np.clip(dec + ddec, -90, 90))
        ref = raven_search.skymap_overlap_integral(table["PROBDENSITY"], [], table["UNIQ"], [],
                                                   ra=pra, dec=pdec)
        assert raven.overlap_moc_point(_gw(loc), pra, pdec) == pytest.approx(ref, rel=RTOL)


@pytest.mark.parametrize("nested", [True, False])
def test_moc_x_flat_overlap_is_ligo_ravens(s230518h, nested):
    import healpy as hp

    table, loc, ra, dec = s230518h
    nside = 64
    pra, pdec = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), nest=nested, lonlat=True)
    d = hp.rotator.angdist([ra + 3, dec], [pra, pdec], lonlat=True)
    flat = np.exp(-0.5 * (d / np.radians(5.0)) ** 2)
    ref = raven_search.skymap_overlap_integral(table["PROBDENSITY"], flat, table["UNIQ"], [],
                                               ext_nested=nested)
    assert raven.overlap_moc_flat(_gw(loc), flat, nested=nested) == pytest.approx(ref, rel=RTOL)


def test_exact_overlap_of_uniform_and_identical_maps():
    """Closed forms: uniform x anything = 1; a map with itself = 4 pi int p^2."""
    uniform = raven.MocMap(np.arange(4 * 4, 16 * 4) + 0, np.ones(48))  # order 1, all 48 pixels
    rng = np.random.default_rng(3)
    order2 = raven.MocMap(np.arange(4 * 16, 16 * 16), rng.random(192))
    assert raven.overlap_exact(uniform, order2) == pytest.approx(1.0, rel=1e-12)
    p = order2.density / np.sum(order2.density * 4 * np.pi / 192)
    expected = 4 * np.pi * np.sum(p * p * 4 * np.pi / 192)
    assert raven.overlap_exact(order2, order2) == pytest.approx(expected, rel=1e-12)


def test_exact_overlap_is_close_to_ravens_for_a_wide_map(s230518h):
    """RAVEN's nearest-centre figure approximates the exact integral for a smooth GBM map."""
    table, loc, ra, dec = s230518h
    ext = es.external_skymap(ra + 4, dec, 5.0, 0.68,
                             fermi_notice_type="FERMI_GBM_GROUND_POSITION")
    ext_map = raven.MocMap(ext.uniq, ext.density)
    exact = raven.overlap_exact(_gw(loc), ext_map)
    assert exact == pytest.approx(raven.overlap_moc_moc(_gw(loc), ext_map), rel=0.02)


def test_combined_map_is_gwcelerys_combine_skymaps_moc_moc(s230518h, gwcelery_skymaps):
    from astropy.table import Table

    table, loc, ra, dec = s230518h
    ext = es.external_skymap(ra + 4, dec, 5.0, 0.68,
                             fermi_notice_type="FERMI_GBM_GROUND_POSITION")
    ref = gwcelery_skymaps.combine_skymaps_moc_moc(
        table, Table({"UNIQ": ext.uniq, "PROBDENSITY": ext.density}))
    ref_loc = Localization(np.asarray(ref["UNIQ"]), np.asarray(ref["PROBDENSITY"]),
                           np.asarray(ref["DISTMU"]), np.asarray(ref["DISTSIGMA"]),
                           np.asarray(ref["DISTNORM"]))
    refinement, density = raven.combined_density(_gw(loc), raven.MocMap(ext.uniq, ext.density))
    mine = Localization(refinement.uniq, density, loc.distmu[refinement.first],
                        loc.distsigma[refinement.first], loc.distnorm[refinement.first])
    # Same function on the sphere: densities agree wherever both have pixels.
    ref_at = raven.common_refinement(raven.MocMap(mine.uniq, mine.probdensity),
                                     raven.MocMap(ref_loc.uniq, ref_loc.probdensity))
    np.testing.assert_allclose(mine.probdensity[ref_at.first],
                               ref_loc.probdensity[ref_at.second], rtol=RTOL, atol=1e-300)
    np.testing.assert_allclose(mine.distmu[ref_at.first], ref_loc.distmu[ref_at.second],
                               rtol=RTOL)
    assert mine.area(0.9) == pytest.approx(ref_loc.area(0.9), rel=RTOL)


def test_trials_weighted_far_is_gwcelerys_rule():
    assert raven.trials_weighted_far(1e-9, 7) == pytest.approx(1e-9 * 7 * 6)

"""Localization: FITS reading/writing, credible regions, MOCs, sampling.

References are independent libraries: ligo.skymap (read_sky_map, crossmatch, moc helpers),
healpy (read_map, ang2pix) and mocpy.
"""

from __future__ import annotations

import gzip
import io

import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from ligo.skymap import moc as ligo_moc
from ligo.skymap.bayestar import rasterize
from ligo.skymap.io import read_sky_map
from ligo.skymap.postprocess.crossmatch import crossmatch
from mocpy import MOC

from mmcross.model import shapes
from mmcross.model.errors import BadCoordinatesError, BadSkymapError
from mmcross.model.localization import (
    Localization,
    order_ipix_to_uniq,
    uniq_to_order_ipix,
    uniq_to_ranges29,
)

LVK_MAPS = [
    "skymaps/userguide/MS181101ab_bayestar.multiorder.fits",
    "skymaps/fink-mm/S230518h_initial.multiorder.fits",
]
FLAT_GW = "skymaps/skyportal/GW190425_G330561_bayestar.fits.gz"
IPN = "skymaps/skyportal/GRB220617A_IPN_map_hpx.fits.gz"


def _pixel_centres(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order, ipix = ligo_moc.uniq2nest(uniq)
    ra, dec = np.empty(len(uniq)), np.empty(len(uniq))
    for o in np.unique(order):
        s = order == o
        ra[s], dec[s] = hp.pix2ang(1 << int(o), ipix[s], nest=True, lonlat=True)
    return ra, dec


# ------------------------------------------------------------------ NUNIQ arithmetic

def test_uniq_split_matches_ligo_at_every_order_including_29():
    rng = np.random.default_rng(0)
    order = rng.integers(0, 30, 5000)
    npix = 12 * (np.int64(1) << (2 * order))
    ipix = (rng.random(5000) * npix).astype(np.int64)
    ipix[:30] = npix[:30] - 1  # last pixel of an order: just below the next power of 4
    uniq = order_ipix_to_uniq(order, ipix)
    got_order, got_ipix = uniq_to_order_ipix(uniq)
    ref_order, ref_ipix = ligo_moc.uniq2nest(uniq)
    np.testing.assert_array_equal(got_order, order)
    np.testing.assert_array_equal(got_ipix, ipix)
    np.testing.assert_array_equal(ref_order[order < 29], order[order < 29])
    np.testing.assert_array_equal(ref_ipix[order < 29], ipix[order < 29])
    start, end = uniq_to_ranges29(uniq)
    np.testing.assert_array_equal(end - start, np.int64(4) ** (29 - order))


# ------------------------------------------------------------------ multi-order LVK maps

@pytest.fixture(scope="module", params=LVK_MAPS)
def lvk(request, shared_data):
    path = shared_data / request.param
    if not path.exists():
        pytest.skip(f"missing {path}")
    return path, Localization.from_fits(path), read_sky_map(str(path), moc=True)


def test_multiorder_read_equals_ligo_read_sky_map(lvk):
    _, loc, ref = lvk
    ref = ref[np.argsort(ref["UNIQ"])]
    mine = np.argsort(loc.uniq)
    np.testing.assert_array_equal(loc.uniq[mine], ref["UNIQ"])
    ref_total = np.sum(ref["PROBDENSITY"] * ligo_moc.uniq2pixarea(ref["UNIQ"]))
    np.testing.assert_allclose(loc.probdensity[mine], ref["PROBDENSITY"] / ref_total, rtol=1e-12)
    for name in ("distmu", "distsigma", "distnorm"):
        np.testing.assert_array_equal(getattr(loc, name)[mine], ref[name.upper()])
    assert abs(loc.total_probability - 1) < 1e-12
    np.testing.assert_allclose(loc.pixel_area_sr()[mine], ligo_moc.uniq2pixarea(ref["UNIQ"]))
    assert loc.meta["CREATOR"]
    assert loc.meta["DATE-OBS"].startswith("20")


def test_pixels_sorted_and_ranges_tile_the_sphere(lvk):
    _, loc, _ = lvk
    start, end = loc.ranges29()
    assert start[0] == 0 and end[-1] == 12 * 4**29
    np.testing.assert_array_equal(start[1:], end[:-1])


def test_credible_levels_match_ligo_crossmatch_at_pixel_centres(lvk):
    _, loc, ref = lvk
    rng = np.random.default_rng(1)
    # random pixels plus the most probable ones
    pick = np.unique(np.r_[rng.choice(loc.n_pixels, 120, replace=False),
                           np.argsort(-loc.probdensity)[:30]])
    ra, dec = _pixel_centres(loc.uniq[pick])
    result = crossmatch(ref, SkyCoord(ra * u.deg, dec * u.deg), contours=[0.5, 0.9])
    np.testing.assert_allclose(loc.credible_levels()[pick], result.searched_prob, atol=1e-9)
    # (among zero-density pixels ligo's searched area depends on its sort order of ties)
    live = loc.probdensity[pick] > 0
    np.testing.assert_allclose(loc.searched_areas_deg2()[pick][live],
                               result.searched_area[live], rtol=1e-9)
    np.testing.assert_allclose(loc.credible_level_at(ra, dec), result.searched_prob, atol=1e-9)
    np.testing.assert_allclose(
        loc.density_at(ra, dec),
        result.probdensity / np.sum(ref["PROBDENSITY"] * ligo_moc.uniq2pixarea(ref["UNIQ"])),
        rtol=1e-12)
    assert loc.area(0.5) == pytest.approx(result.contour_areas[0], rel=1e-9)
    assert loc.area(0.9) == pytest.approx(result.contour_areas[1], rel=1e-9)


def test_moc_equals_mocpy_construction(lvk):
    path, loc, _ = lvk
    for level in (0.5, 0.9):
        ref = MOC.from_valued_healpix_cells(
            loc.uniq.astype(np.uint64), loc.probabilities(), max_depth=loc.max_order,
            cumul_from=0.0, cumul_to=level, strict=False)
        mine = loc.moc(level)
        assert mine == ref
        # its area equals the greedy area up to the last (fence) pixel
        sky = mine.sky_fraction * 4 * np.pi * (180 / np.pi) ** 2
        assert loc.area(level) <= sky <= loc.area(level) + loc.pixel_area_sr().max() * 3283
    # mocpy's file-based construction (which does not renormalise the map) agrees up to the
    # fence pixel
    ref = MOC.from_multiordermap_fits_file(str(path), cumul_from=0.0, cumul_to=0.9,
                                           strict=False)
    diff = loc.moc(0.9).symmetric_difference(ref)
    assert diff.sky_fraction * 4 * np.pi <= 2 * loc.pixel_area_sr().max()


def test_fits_round_trip_and_ligo_reads_our_output(lvk, tmp_path):
    _, loc, _ = lvk
    data = loc.to_fits_bytes()
    again = Localization.from_fits(data)
    np.testing.assert_array_equal(again.uniq, loc.uniq)
    np.testing.assert_array_equal(again.probdensity, loc.probdensity)
    np.testing.assert_array_equal(again.distmu, loc.distmu)
    assert again.meta.get("CREATOR") == loc.meta.get("CREATOR")
    out = tmp_path / "m.multiorder.fits"
    out.write_bytes(data)
    ref = read_sky_map(str(out), moc=True)
    np.testing.assert_array_equal(np.sort(ref["UNIQ"]), np.sort(loc.uniq))
    # gzip-compressed bytes are accepted as well
    assert Localization.from_fits(gzip.compress(data)).n_pixels == loc.n_pixels


def test_sampled_positions_follow_the_map(lvk):
    _, loc, _ = lvk
    rng = np.random.default_rng(5)
    ra, dec = loc.sample(20000, rng)
    assert np.all((ra >= 0) & (ra < 360) & (np.abs(dec) <= 90))
    # for a continuous map the searched probability of draws is uniform on [0, 1]
    inside90 = loc.moc(0.9).contains_lonlat(ra * u.deg, dec * u.deg)
    assert abs(inside90.mean() - 0.9) < 0.01
    cl = loc.credible_level_at(ra, dec)
    assert abs(np.mean(cl) - 0.5) < 0.01


# ------------------------------------------------------------------ flat maps

def test_flat_nested_map_converts_losslessly(shared_file):
    path = shared_file(FLAT_GW)
    loc = Localization.from_fits(path)
    flat, header = hp.read_map(str(path), field=None, nest=True, h=True, dtype=np.float64)
    prob, mu = flat[0], flat[1]
    total = prob.sum()
    assert abs(total - 1) < 1e-9
    assert loc.max_order == 8 and loc.n_pixels < len(prob)
    # expanding our multi-order map back to NSIDE 256 gives the flat map exactly
    table = rasterize(read_sky_map_from_loc(loc), order=8)
    np.testing.assert_allclose(table["PROB"], prob / total, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(table["DISTMU"], mu)
    # and values at random points agree with a healpy lookup
    rng = np.random.default_rng(2)
    ra, dec = rng.uniform(0, 360, 5000), np.degrees(np.arcsin(rng.uniform(-1, 1, 5000)))
    ipix = hp.ang2pix(256, ra, dec, nest=True, lonlat=True)
    np.testing.assert_allclose(loc.density_at(ra, dec),
                               prob[ipix] / total / hp.nside2pixarea(256), rtol=1e-12)
    assert loc.meta["OBJECT"] == "G330561"


def read_sky_map_from_loc(loc: Localization):
    """ligo.skymap's view of our map (via our FITS bytes)."""
    return read_sky_map(io.BytesIO(loc.to_fits_bytes()), moc=True)


def test_flat_ring_map_matches_healpy_ring_lookup(tmp_path):
    # a synthetic RING map with a compact blob and some exactly-equal regions
    nside = 64
    vec = np.array(hp.pix2vec(nside, np.arange(12 * nside**2)))
    centre = hp.ang2vec(40.0, -20.0, lonlat=True)
    prob = np.exp(-0.5 * (np.degrees(np.arccos(np.clip(centre @ vec, -1, 1))) / 4) ** 2)
    prob[prob < 1e-6] = 0
    prob /= prob.sum()
    path = tmp_path / "ring.fits"
    hp.write_map(str(path), prob, nest=False, column_names=["PROB"], dtype=np.float64)
    loc = Localization.from_fits(path)
    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 4000), np.degrees(np.arcsin(rng.uniform(-1, 1, 4000)))
    ra = np.r_[ra, rng.normal(40, 5, 4000) % 360]
    dec = np.r_[dec, np.clip(rng.normal(-20, 5, 4000), -90, 90)]
    ref = prob[hp.ang2pix(nside, ra, dec, lonlat=True)] / hp.nside2pixarea(nside)
    np.testing.assert_allclose(loc.density_at(ra, dec), ref, rtol=1e-12)
    assert loc.n_pixels < 12 * nside**2 / 2  # the zero region was merged


def test_ipn_map_ring_2048_vector_rows(shared_file):
    path = shared_file(IPN)
    loc = Localization.from_fits(path)
    flat = hp.read_map(str(path), nest=False, dtype=np.float32)
    total = float(np.sum(flat, dtype=np.float64))
    assert loc.max_order == 11
    nz = np.flatnonzero(flat)
    rng = np.random.default_rng(4)
    pix = rng.choice(nz, 3000)
    ra, dec = hp.pix2ang(2048, pix, lonlat=True)
    ra = np.r_[ra, rng.uniform(0, 360, 3000)]
    dec = np.r_[dec, np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))]
    ref = flat[hp.ang2pix(2048, ra, dec, lonlat=True)] / total / hp.nside2pixarea(2048)
    np.testing.assert_allclose(loc.density_at(ra, dec), ref, rtol=1e-6)
    # total probability of the multi-order map (before normalisation) is preserved: the
    # per-pixel sums agree once both are normalised
    assert abs(loc.total_probability - 1) < 1e-9
    assert loc.area(0.9) == pytest.approx(
        hp.nside2pixarea(2048, degrees=True) * _greedy_count(flat / total, 0.9), rel=1e-3)


def _greedy_count(prob: np.ndarray, level: float) -> float:
    p = np.sort(prob[prob > 0])[::-1]
    c = np.cumsum(p, dtype=np.float64)
    k = np.searchsorted(c, level)
    return k + (level - (c[k - 1] if k else 0)) / p[k]


# ------------------------------------------------------------------ refusals

def test_garbage_bytes_refused():
    with pytest.raises(BadSkymapError, match="not a FITS"):
        Localization.from_fits(b"hello, this is not a sky map" * 100)
    with pytest.raises(BadSkymapError, match="gzip"):
        Localization.from_fits(b"\x1f\x8b" + b"\x00" * 100)


@pytest.mark.parametrize("cut", [2880 * 2 + 100, 40000, 777600 - 2880])
def test_truncated_fits_refused(shared_file, cut):
    data = shared_file(LVK_MAPS[0]).read_bytes()
    with pytest.raises(BadSkymapError):
        Localization.from_fits(data[:cut])


def _bintable(cols: list[fits.Column], **header) -> bytes:
    hdu = fits.BinTableHDU.from_columns(cols)
    for k, v in header.items():
        hdu.header[k] = v
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def test_fits_without_probability_column_refused():
    data = _bintable([fits.Column(name="SIGNAL", format="D", array=np.ones(12))],
                     PIXTYPE="HEALPIX", ORDERING="NESTED", NSIDE=1)
    with pytest.raises(BadSkymapError, match="no probability column"):
        Localization.from_fits(data)


def test_negative_density_refused():
    uniq = np.arange(4, 16)
    dens = np.full(12, 1 / (4 * np.pi))
    dens[3] = -0.1
    data = _bintable([fits.Column(name="UNIQ", format="K", array=uniq),
                      fits.Column(name="PROBDENSITY", format="D", array=dens)],
                     PIXTYPE="HEALPIX", ORDERING="NUNIQ")
    with pytest.raises(BadSkymapError, match="negative"):
        Localization.from_fits(data)


def test_overlapping_or_zero_maps_refused():
    with pytest.raises(BadSkymapError, match="overlap"):
        Localization(np.array([4, 16]), np.array([1.0, 1.0]))  # order-0 pixel 0 and its child
    with pytest.raises(BadSkymapError, match="total probability"):
        Localization(np.arange(4, 16), np.zeros(12))
    with pytest.raises(BadSkymapError, match="not finite"):
        Localization(np.arange(4, 16), np.full(12, np.nan))


def test_oversize_refused(shared_file):
    path = shared_file(LVK_MAPS[0])
    with pytest.raises(BadSkymapError, match="limit"):
        Localization.from_fits(path, max_bytes=100_000)
    with pytest.raises(BadSkymapError, match="limit"):
        Localization.from_fits(gzip.compress(path.read_bytes()), max_bytes=300_000)


def test_circle_with_bad_declination_refused():
    with pytest.raises(BadCoordinatesError):
        shapes.circle(10.0, 95.0, 1.0)
    with pytest.raises(BadCoordinatesError):
        shapes.circle(370.0, 0.0, 1.0)


def test_released_caches_are_recomputed_identically(lvk):
    """Dropping the credible-region caches frees memory and changes no result (reference:
    ligo.skymap's crossmatch, as above, before and after the release)."""
    path, _, table = lvk
    loc = Localization.from_fits(path)  # a fresh map: the fixture's is shared
    levels, areas = loc.credible_levels().copy(), loc.searched_areas_deg2().copy()
    area90 = loc.area(0.9)
    assert loc.cache_nbytes >= 32 * loc.n_pixels  # greedy order, 2 cumsums, tie ends
    loc.release_caches()
    assert loc.cache_nbytes == 0
    # per pixel only uniq (8), order (1) and density (8) bytes stay, plus distance layers
    assert loc.nbytes == 17 * loc.n_pixels + (24 * loc.n_pixels if loc.has_distance else 0)
    assert loc.area(0.9) == area90
    np.testing.assert_array_equal(loc.credible_levels(), levels)
    np.testing.assert_array_equal(loc.searched_areas_deg2(), areas)
    start, end = loc.ranges29()
    ref_start, ref_end = uniq_to_ranges29(loc.uniq)
    np.testing.assert_array_equal(start, ref_start)
    np.testing.assert_array_equal(end, ref_end)
    ra, dec = loc.sample(500, np.random.default_rng(2))
    ref = crossmatch(table, SkyCoord(ra * u.deg, dec * u.deg))
    np.testing.assert_allclose(loc.credible_level_at(ra, dec), ref.searched_prob, atol=1e-12)


# -- analytic regions ------------------------------------------------------------------------

def test_analytic_localization_needs_no_pixels_until_exported(tmp_path):
    loc = shapes.ellipse(200.0, -60.0, 3.0, 1.0, 30.0, 0.9, tolerance=2e-2)
    assert loc.region is not None and loc.nbytes < 1024 and loc.cache_nbytes == 0
    rng = np.random.default_rng(2)
    ra, dec = loc.sample(2000, rng)
    cl = loc.credible_level_at(ra, dec)
    assert loc.cache_nbytes == 0  # lookups, samples and areas are closed forms
    assert loc.area(0.9) == pytest.approx(np.pi * 3.0 * 1.0, rel=1e-3)  # flat-sky ellipse
    # the FITS export is a pixel map that ligo.skymap reads, agreeing to its tolerance
    path = tmp_path / "ellipse.fits"
    path.write_bytes(loc.to_fits_bytes())
    assert loc.cache_nbytes > 0
    ref = crossmatch(read_sky_map(str(path), moc=True), SkyCoord(ra * u.deg, dec * u.deg),
                     contours=(0.9,))
    np.testing.assert_allclose(ref.searched_prob, cl, atol=2e-2)
    assert ref.contour_areas[0] == pytest.approx(loc.area(0.9), rel=2e-2)
    loc.release_caches()
    assert loc.cache_nbytes == 0


@pytest.mark.parametrize("dec", [89.95, 10.0])
def test_credible_ranges_cover_every_position_inside_the_level(lvk, dec):
    rng = np.random.default_rng(3)
    for loc in (lvk[1], shapes.box(359.0, dec, 2.0, 1.0, 0.5, 1.5, 0.9)):
        start, end = loc.credible_ranges29(0.9)
        assert np.all(start[1:] > end[:-1])  # sorted, disjoint, adjacent ones merged
        ra, d = loc.sample(5000, rng)
        inside = loc.credible_level_at(ra, d) <= 0.9
        p = hp.ang2pix(2**29, ra, d, nest=True, lonlat=True)
        k = np.searchsorted(start, p, side="right") - 1
        covered = (k >= 0) & (p < end[np.maximum(k, 0)])
        assert np.all(covered[inside])
        if loc.region is not None:
            assert loc.cache_nbytes == 0  # no pixels made

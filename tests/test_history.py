"""AlertHistory (sorted on the sky, bounded by horizon and count) and retro-matching by
range search, against ligo.skymap's crossmatch and healpy."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from mmcross.matchers.history_match import credible_ranges, history_in_ranges, retro_candidates
from mmcross.model.alert import AlertBatch
from mmcross.model.history import AlertHistory
from mmcross.model.localization import Localization

S230518H_MAP = "skymaps/fink-mm/S230518h_initial.multiorder.fits"


def _batch(t0, n, first_id=0):
    return AlertBatch(np.arange(first_id, first_id + n), np.arange(n).astype(str),
                      np.full(n, 10.0), np.full(n, -20.0), t0 + np.linspace(0, 0.1, n),
                      packets=[b"x"] * n)


def _random_batch(rng, n, t0, t1, first_id=0, ra=None, dec=None):
    ra = rng.uniform(0, 360, n) if ra is None else ra
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n))) if dec is None else dec
    return AlertBatch(np.arange(first_id, first_id + len(ra)),
                      np.array([str(10**12 + i) for i in range(len(ra))], dtype=object), ra,
                      dec, np.sort(rng.uniform(t0, t1, len(ra))),
                      is_new=rng.random(len(ra)) < 0.3,
                      mag=rng.uniform(16, 24, len(ra)))


def test_between_returns_exactly_the_alerts_in_range_without_packets():
    h = AlertHistory(horizon_days=10, max_alerts=1000)
    h.add(_batch(60000.0, 11))
    got = h.between(60000.03, 60000.07)
    expected = _batch(60000.0, 11).mjd_tai
    assert np.array_equal(got.mjd_tai, expected[(expected >= 60000.03) & (expected <= 60000.07)])
    assert got.packets is None


def test_alerts_older_than_the_horizon_are_dropped():
    h = AlertHistory(horizon_days=1.0, max_alerts=10**6)
    h.add(_batch(60000.0, 5))
    h.add(_batch(60001.05, 5, first_id=100))
    assert len(h) == 5 + int(np.sum(_batch(60000.0, 5).mjd_tai >= 60000.15))
    assert h.all().mjd_tai.min() >= 60001.15 - 1.0
    assert set(h.all().alert_id.tolist()) == set(range(100, 105))


def test_count_bound_drops_oldest_chunks():
    h = AlertHistory(horizon_days=100, max_alerts=10)
    for i in range(5):
        h.add(_batch(60000.0 + i, 4, first_id=10 * i))
    assert len(h) <= 10
    assert h.all().alert_id.max() == 43


def test_alerts_come_back_bit_exact_with_ids_magnitudes_and_flags():
    rng = np.random.default_rng(5)
    # poles, RA 0/360 and the equator, where float32 offsets may not be exact
    ra = np.concatenate([rng.uniform(0, 360, 3000), [0.0, 359.9999999999, 1e-12, 180.0, 45.0]])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 3000))),
                          [89.99999999, -89.9999999, 0.0, 90.0, -90.0]])
    batch = _random_batch(rng, 0, 60000.0, 60000.3, ra=ra, dec=dec)
    batch.object_id[:3] = ["ZTF18abfkwnk", "", "007"]  # text, none, not canonical decimal
    batch.mag[3] = np.nan
    h = AlertHistory(horizon_days=5, max_alerts=10**6)
    for part in np.array_split(np.arange(len(batch)), 7):  # several runs, merged
        h.add(batch.take(part))
    got = h.all()
    order = np.argsort(got.alert_id)
    assert np.array_equal(got.alert_id[order], batch.alert_id)
    assert np.array_equal(got.ra[order], batch.ra) and np.array_equal(got.dec[order], batch.dec)
    assert np.array_equal(got.mjd_tai[order], batch.mjd_tai)
    assert list(got.object_id[order]) == list(batch.object_id)
    assert np.array_equal(got.is_new[order], batch.is_new)
    np.testing.assert_array_equal(got.mag[order], batch.mag.astype(np.float32))
    assert h.nbytes <= 48 * len(batch)
    assert len(h._positions) < 0.02 * len(batch)  # the side table stays small


def test_runs_stay_few_and_sorted():
    rng = np.random.default_rng(2)
    h = AlertHistory(horizon_days=50, max_alerts=10**7)
    for k in range(64):
        h.add(_random_batch(rng, 100, 60000 + k * 0.1, 60000 + (k + 1) * 0.1,
                            first_id=100 * k))
    assert len(h) == 6400
    assert len(h.runs) <= 7  # log2(64) + 1
    for run in h.runs:
        assert np.all(np.diff(run.pix) >= 0)
        # positions are offsets from the pixel centres (healpy): kept exactly, in 32 bits
        ra, dec = hp.pix2ang(2**29, run.pix, nest=True, lonlat=True)
        far = run.dra == np.iinfo(np.int32).min
        assert far.mean() < 0.02
        back = (ra.view(np.int64) + run.dra).view(np.float64)
        assert np.all(np.abs(back - ra)[~far] < 1e-4)


@pytest.fixture(scope="module")
def s230518h(shared_file):
    return Localization.from_fits(shared_file(S230518H_MAP))


def test_range_search_equals_ligo_skymap_crossmatch(shared_file, s230518h):
    crossmatch = pytest.importorskip("ligo.skymap.postprocess").crossmatch
    read_sky_map = pytest.importorskip("ligo.skymap.io").read_sky_map
    rng = np.random.default_rng(11)
    ra_in, dec_in = s230518h.sample(3000, rng)
    batch = _random_batch(rng, 20_000, 60000.0, 60001.0)
    inside = _random_batch(rng, 0, 60000.0, 60001.0, first_id=10**6, ra=ra_in, dec=dec_in)
    h = AlertHistory(horizon_days=3, max_alerts=10**7)
    for part in (batch, inside):
        for rows in np.array_split(np.arange(len(part)), 5):
            h.add(part.take(rows))
    level, t0, t1 = 0.9, 60000.2, 60000.8
    got = retro_candidates(h, s230518h, level, t0, t1)

    every = AlertBatch.concatenate([batch, inside])
    sky = read_sky_map(str(shared_file(S230518H_MAP)), moc=True)
    ref = crossmatch(sky, SkyCoord(every.ra, every.dec, unit="deg"))
    expected = every.alert_id[(ref.searched_prob <= level) & (every.mjd_tai >= t0)
                              & (every.mjd_tai <= t1)]
    assert len(expected) > 1000
    assert sorted(got.alert_id.tolist()) == sorted(expected.tolist())


def test_ranges_cover_the_credible_pixels_and_merge_neighbours(s230518h):
    starts, ends = credible_ranges(s230518h, 0.9)
    assert np.all(starts[1:] > ends[:-1])  # sorted, disjoint, adjacent ones merged
    keep = s230518h.credible_levels() <= 0.9
    order = np.floor(np.log2(s230518h.uniq[keep] // 4) / 2).astype(int)  # NUNIQ -> order
    expected = sum(hp.nside2pixarea(2**o, degrees=True) for o in order)
    area = (ends - starts).sum() * hp.nside2pixarea(2**29, degrees=True)
    assert area == pytest.approx(expected, rel=1e-9)
    assert len(starts) < keep.sum()


def test_range_hits_edges_and_expired_alerts():
    h = AlertHistory(horizon_days=1.0, max_alerts=100)
    ra, dec = np.array([10.0, 10.0, 200.0]), np.array([5.0, 5.0, -30.0])
    pix = hp.ang2pix(2**29, ra, dec, nest=True, lonlat=True)
    h.add(AlertBatch([1, 2, 3], ["1", "2", "3"], ra, dec, [60000.0, 60000.5, 60000.5]))
    h.add(AlertBatch([4], ["4"], [300.0], [0.0], [60001.2]))  # alert 1 expires
    one = np.array([pix[0]])
    got = history_in_ranges(h, one, one + 1, 59000.0, 61000.0)
    assert got.alert_id.tolist() == [2]
    got = history_in_ranges(h, one + 1, one + 2, 59000.0, 61000.0)  # end is exclusive
    assert len(got) == 0
    got = history_in_ranges(h, np.array([0]), np.array([12 * 4**29]), 60000.5, 60000.5)
    assert sorted(got.alert_id.tolist()) == [2, 3]  # time edges included


def test_an_analytic_region_takes_the_time_slice_without_rasterising():
    from mmcross.model.regions import FisherCircle

    def rasterise():
        raise AssertionError("the retro path must not rasterise an analytic region")

    loc = Localization.from_region(FisherCircle(ra=10.0, dec=-20.0, radius=2.0), rasterise)
    h = AlertHistory(horizon_days=10, max_alerts=1000)
    h.add(_batch(60000.0, 11))
    got = retro_candidates(h, loc, 0.9, 60000.03, 60000.07)
    assert np.array_equal(got.alert_id, h.between(60000.03, 60000.07).alert_id)


def test_retro_by_pixel_equals_matching_the_history_afresh(shared_file, s230518h):
    """Matcher.retro (history intersected with the packed pixels, scores read per pixel)
    gives the very reports Matcher.match gives on the same alerts, field for field, and
    ligo.skymap's searched_prob and searched_area."""
    from astropy.time import Time

    from mmcross.matchers import Matcher
    from mmcross.model.config import Config
    from mmcross.model.event import Event, EventKind

    crossmatch = pytest.importorskip("ligo.skymap.postprocess").crossmatch
    read_sky_map = pytest.importorskip("ligo.skymap.io").read_sky_map
    rng = np.random.default_rng(5)
    ra_in, dec_in = s230518h.sample(2000, rng)
    t0 = 60082.6
    parts = [_random_batch(rng, 10_000, t0 - 1, t0 + 3),
             _random_batch(rng, 0, t0 - 1, t0 + 3, first_id=10**6, ra=ra_in, dec=dec_in)]
    h = AlertHistory(horizon_days=10, max_alerts=10**7)
    for part in parts:
        for rows in np.array_split(np.arange(len(part)), 4):
            h.add(part.take(rows))
    config = Config.load()
    event = Event(event_id="lvk:S230518h", kind=EventKind.GW, instrument="LVK",
                  trigger_time=Time(t0, format="mjd", scale="tai"), localization=s230518h,
                  revision=1)
    matcher = Matcher(config)
    matcher.upsert(event)
    got = matcher.retro(h, event.event_id)
    window = config.time_window(event.kind)
    afresh = matcher.match(h.between(t0 + window.before, t0 + window.after))
    assert len(got) > 1000 and len(got) == len(afresh)
    by_alert = np.argsort(afresh.alert_id)
    got = got.take(np.argsort(got.alert_id))
    assert got.records() == afresh.take(by_alert).records()

    every = AlertBatch.concatenate(parts)
    sky = read_sky_map(str(shared_file(S230518H_MAP)), moc=True)
    ref = crossmatch(sky, SkyCoord(every.ra, every.dec, unit="deg"))
    row = np.searchsorted(every.alert_id, got.alert_id)
    np.testing.assert_allclose(got.columns["credible_level"], ref.searched_prob[row],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.columns["searched_area"], ref.searched_area[row], rtol=1e-9)

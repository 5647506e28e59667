"""AlertHistory (sorted on the sky, bounded by horizon and count) and retro-matching by
range search, against ligo.skymap's crossmatch and healpy."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from mmcross.matchers import Matcher
from mmcross.matchers.history_match import pixel_hits
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.event import Event, EventKind
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


def _gw(localization, t0: float) -> Event:
    from astropy.time import Time

    return Event(event_id="lvk:S230518h", kind=EventKind.GW, instrument="LVK",
                 trigger_time=Time(t0, format="mjd", scale="tai"), localization=localization,
                 revision=1)


def _retro(history: AlertHistory, localization, t0: float):
    """Matcher.retro of one event (trigger ``t0``, MJD TAI) and its window's edges."""
    config = Config.load()
    matcher = Matcher(config)
    event = _gw(localization, t0)
    matcher.upsert(event)
    window = config.time_window(event.kind)
    return matcher.retro(history, event.event_id), t0 + window.before, t0 + window.after


def test_retro_search_equals_ligo_skymap_crossmatch(shared_file, s230518h):
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
    got, t0, t1 = _retro(h, s230518h, 60000.2)
    level = Config.load().credible_level

    every = AlertBatch.concatenate([batch, inside])
    sky = read_sky_map(str(shared_file(S230518H_MAP)), moc=True)
    ref = crossmatch(sky, SkyCoord(every.ra, every.dec, unit="deg"))
    expected = every.alert_id[(ref.searched_prob <= level) & (every.mjd_tai >= t0)
                              & (every.mjd_tai <= t1)]
    assert len(expected) > 1000
    assert sorted(got.alert_id.tolist()) == sorted(expected.tolist())


def test_pixel_hits_edges_and_expired_alerts():
    h = AlertHistory(horizon_days=1.0, max_alerts=100)
    ra, dec = np.array([10.0, 10.0, 200.0]), np.array([5.0, 5.0, -30.0])
    pix = hp.ang2pix(2**29, ra, dec, nest=True, lonlat=True)
    h.add(AlertBatch([1, 2, 3], ["1", "2", "3"], ra, dec, [60000.0, 60000.5, 60000.5]))
    h.add(AlertBatch([4], ["4"], [300.0], [0.0], [60001.2]))  # alert 1 expires

    def ids(start, log2_width, t0, t1):
        return sorted(int(run.alert_id[r]) for run, rows, _ in
                      pixel_hits(h, np.array(start), np.array(log2_width), t0, t1) for r in rows)

    assert ids([pix[0]], [0], 59000.0, 61000.0) == [2]
    assert ids([pix[0] + 1], [0], 59000.0, 61000.0) == []  # the pixel's end is exclusive
    assert ids([0], [62], 60000.5, 60000.5) == [2, 3]  # the whole sky; time edges included
    (run, rows, which), = pixel_hits(h, np.array([0, pix[2]]), np.array([0, 0]), 0.0, 1e5)
    assert run.alert_id[rows].tolist() == [3] and which.tolist() == [1]  # the pixel it is in


def test_an_analytic_region_takes_the_time_slice_without_rasterising():
    from mmcross.model.regions import FisherCircle

    def rasterise():
        raise AssertionError("the retro path must not rasterise an analytic region")

    loc = Localization.from_region(FisherCircle(ra=10.0, dec=-20.0, radius=2.0), rasterise)
    h = AlertHistory(horizon_days=10, max_alerts=1000)
    h.add(_batch(60000.0, 11))  # at (10, -20): inside the circle
    got, t0, t1 = _retro(h, loc, 60000.05)
    expected = h.between(t0, t1).alert_id
    assert len(expected) and np.array_equal(np.sort(got.alert_id), np.sort(expected))


def test_retro_by_pixel_equals_matching_the_history_afresh(shared_file, s230518h):
    """Matcher.retro (history intersected with the packed pixels, scores read per pixel)
    gives the very reports Matcher.match gives on the same alerts, field for field, and
    ligo.skymap's searched_prob and searched_area."""
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
    event = _gw(s230518h, t0)
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

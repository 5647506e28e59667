"""The Matcher against ligo.skymap's crossmatch on real LVK maps, and its matching rules."""

from __future__ import annotations

import warnings

import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time
from ligo.skymap.distance import parameters_to_moments
from ligo.skymap.io import read_sky_map
from ligo.skymap.postprocess import crossmatch

from mmcross.matchers import Matcher, alert_pixels
from mmcross.matchers.packed import LiveSky, pack_localization
from mmcross.model import shapes
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.event import Event, EventKind, NoticeAction
from mmcross.model.localization import Localization

MAPS = {
    "MS181101ab": "skymaps/userguide/MS181101ab_bayestar.multiorder.fits",
    "S230518h": "skymaps/fink-mm/S230518h_initial.multiorder.fits",
    "GW190425": "skymaps/skyportal/GW190425_G330561_bayestar.fits.gz",  # flat NSIDE 256
}
T0 = Time("2023-05-18T12:59:08.167", scale="utc")
CL = 0.9


@pytest.fixture(scope="module")
def config() -> Config:
    return Config.load()


@pytest.fixture(scope="module")
def maps(shared_file):
    """name -> (Localization, ligo.skymap multi-order table)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, rel in MAPS.items():
            path = shared_file(rel)
            out[name] = (Localization.from_fits(path), read_sky_map(str(path), moc=True))
    return out


def gw_event(name: str, loc, trigger: Time = T0, revision: int = 1) -> Event:
    return Event(f"lvk:{name}", EventKind.GW, "LVK", trigger, loc, revision=revision)


def batch(ra, dec, mjd) -> AlertBatch:
    ra = np.asarray(ra, np.float64)
    n = len(ra)
    mjd = np.broadcast_to(np.asarray(mjd, np.float64), (n,)).copy()
    return AlertBatch(np.arange(n, dtype=np.int64) + 1000,
                      np.array([f"obj{i}" for i in range(n)], dtype=object), ra,
                      np.asarray(dec, np.float64), mjd)


def positions(loc: Localization, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uniform random positions + n drawn from the map (degrees)."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    sra, sdec = loc.sample(n, rng)
    return np.r_[ra, sra], np.r_[dec, sdec]


def ligo_reference(table: Table, ra: np.ndarray, dec: np.ndarray) -> dict[str, np.ndarray]:
    """ligo.skymap crossmatch at the positions, plus the pixel's DISTMU/DISTSIGMA moments
    (pixel found with crossmatch's own recipe: ang2pix at the map's max order)."""
    sky2d = table["UNIQ", "PROBDENSITY"]  # crossmatch's 2-D outputs do not use distance
    result = crossmatch(sky2d, SkyCoord(ra * u.deg, dec * u.deg))
    ref = {"searched_prob": np.asarray(result.searched_prob),
           "searched_area": np.asarray(result.searched_area),
           "probdensity": np.asarray(result.probdensity)}
    if "DISTMU" in table.colnames:
        uniq = np.asarray(table["UNIQ"], np.int64)
        order = (np.log2(uniq).astype(int) // 2) - 1
        ipix = uniq - 4 * 4**order
        max_order = order.max()
        max_ipix = ipix << (2 * (max_order - order))
        i = np.argsort(max_ipix)
        pix = hp.ang2pix(2**max_order, ra, dec, nest=True, lonlat=True)
        row = i[np.digitize(pix, max_ipix[i]) - 1]
        with np.errstate(all="ignore"):
            mean, std, _ = parameters_to_moments(np.asarray(table["DISTMU"])[row],
                                                 np.asarray(table["DISTSIGMA"])[row])
        ref["distmu"] = np.asarray(table["DISTMU"])[row]
        ref["mean"], ref["std"] = mean, std
    return ref


# -- exactness against ligo.skymap ----------------------------------------------------------


@pytest.mark.parametrize("name", list(MAPS))
def test_matches_equal_ligo_crossmatch_on_real_maps(maps, config, name):
    loc, table = maps[name]
    ra, dec = positions(loc, 3000, seed=hash(name) % 2**32)
    ref = ligo_reference(table, ra, dec)
    m = Matcher(config)
    event = gw_event(name, loc)
    m.set_events([event])
    found = m.match_arrays(batch(ra, dec, event.trigger_mjd_tai + 1.0))
    # the matched alerts are exactly ligo's searched_prob <= 0.9 (away from rounding ties)
    expected = ref["searched_prob"] <= CL
    got = np.zeros(len(ra), bool)
    got[found.alert_index] = True
    clear = np.abs(ref["searched_prob"] - CL) > 1e-12
    assert np.array_equal(got[clear], expected[clear])
    assert 500 < got.sum() < len(ra)  # both uniform misses and sampled hits
    i = found.alert_index
    np.testing.assert_allclose(found.credible_level, ref["searched_prob"][i], rtol=0, atol=1e-9)
    np.testing.assert_allclose(found.searched_area, ref["searched_area"][i], rtol=1e-9)
    np.testing.assert_allclose(found.prob_density, ref["probdensity"][i] * (np.pi / 180) ** 2,
                               rtol=1e-9)
    has = np.isfinite(ref["distmu"][i])
    assert has.any()
    np.testing.assert_allclose(found.distance_mean[has], ref["mean"][i][has], rtol=1e-6)
    np.testing.assert_allclose(found.distance_std[has], ref["std"][i][has], rtol=1e-6)
    assert np.all(np.isnan(found.distance_mean[~has]))


def test_higher_credible_level_config_is_exact_too(maps):
    loc, table = maps["MS181101ab"]
    cfg = Config.load(overrides={"match": {"credible_level": 0.99}})
    ra, dec = positions(loc, 2000, seed=5)
    ref = ligo_reference(table, ra, dec)
    m = Matcher(cfg)
    m.set_events([gw_event("x", loc)])
    found = m.match_arrays(batch(ra, dec, T0.tai.mjd + 0.5))
    assert np.array_equal(np.sort(found.alert_index), np.flatnonzero(ref["searched_prob"] <= 0.99))


def test_alert_pixels_are_healpy_order29_nested():
    rng = np.random.default_rng(1)
    ra = np.r_[rng.uniform(0, 360, 1000), 0.0, 360.0, 180.0, 0.0]
    dec = np.r_[np.degrees(np.arcsin(rng.uniform(-1, 1, 1000))), 90.0, -90.0, 0.0, 0.0]
    pix = alert_pixels(ra, dec)
    assert pix.dtype == np.int64
    theta, phi = np.radians(90.0 - dec), np.radians(ra)
    assert np.array_equal(pix, hp.ang2pix(2**29, theta, phi, nest=True))
    # order-29 index -> order-8 pixel is consistent with healpy at order 8
    assert np.array_equal(pix >> 42, hp.ang2pix(2**8, ra, dec, nest=True, lonlat=True))


def test_alerts_on_pixel_corners_get_the_pixel_healpy_assigns(maps, config):
    loc, table = maps["MS181101ab"]
    packed = pack_localization(loc, max_credible_level=CL)
    # corners and edge midpoints of matchable pixels of various orders
    rng = np.random.default_rng(7)
    pick = rng.choice(len(loc.uniq), 400)
    order = loc.orders[pick]
    ipix = loc.ranges29()[0][pick] >> (2 * (29 - order))
    lon, lat = [], []
    for o in np.unique(order):
        sel = order == o
        v = hp.boundaries(2**int(o), ipix[sel], step=2, nest=True)
        lo, la = hp.vec2ang(np.moveaxis(v, 1, 2).reshape(-1, 3), lonlat=True)
        lon.append(lo)
        lat.append(la)
    lon, lat = np.concatenate(lon), np.concatenate(lat)
    m = Matcher(config)
    m.set_events([gw_event("x", loc)])
    found = m.match_arrays(batch(lon, lat, T0.tai.mjd))
    # reference: the map pixel holding healpy's order-max pixel of each point
    start, end = loc.ranges29()
    p29 = hp.ang2pix(2**29, lon, lat, nest=True, lonlat=True)
    row = np.searchsorted(start, p29, side="right") - 1
    assert np.all(p29 < end[row])
    cl = loc.credible_levels()[row]
    assert np.array_equal(np.sort(found.alert_index), np.flatnonzero(cl <= CL))
    np.testing.assert_array_equal(found.credible_level, cl[found.alert_index])
    assert len(packed) == int(np.sum(loc.credible_levels() <= CL))


def test_poles_and_ra_wrap(config):
    north = shapes.circle(0.0, 90.0, 5.0, tolerance=0.02)
    south = shapes.circle(0.0, -90.0, 5.0, tolerance=0.02)
    wrap = shapes.circle(0.0, 0.0, 2.0, tolerance=0.02)
    events = [Event(f"grb:{k}", EventKind.GRB, "GBM", T0, loc, revision=1)
              for k, loc in (("n", north), ("s", south), ("w", wrap))]
    m = Matcher(config)
    m.set_events(events)
    ra = np.array([0.0, 123.0, 0.0, 359.0, 0.0, 360.0, 359.5, 0.5, 180.0])
    dec = np.array([90.0, 90.0, -90.0, -88.0, 0.0, 0.0, 0.5, -0.5, 0.0])
    found = m.match_arrays(batch(ra, dec, T0.tai.mjd + 0.1))
    pairs = {(int(a), found.event_ids[int(e)]) for a, e in zip(found.alert_index,
                                                               found.event_index, strict=True)}
    assert pairs == {(0, "grb:n"), (1, "grb:n"), (2, "grb:s"), (3, "grb:s"), (4, "grb:w"),
                     (5, "grb:w"), (6, "grb:w"), (7, "grb:w")}
    # RA 0 and 360 are the same point: the same values to float rounding (sin(2 pi) != 0)
    k0, k360 = (np.flatnonzero(found.alert_index == k)[0] for k in (4, 5))
    assert found.credible_level[k0] == pytest.approx(found.credible_level[k360], abs=1e-15)
    # the circles are matched in closed form: the Fisher credible level of the separation
    # (astropy), and a fine rasterisation checked with ligo.skymap's crossmatch agrees to its
    # tolerance
    for loc, idx in ((north, [0, 1]), (south, [2, 3]), (wrap, [4, 5, 6, 7])):
        region = loc.region
        sep = SkyCoord(ra[idx] * u.deg, dec[idx] * u.deg).separation(
            SkyCoord(region.ra * u.deg, region.dec * u.deg)).rad
        kappa = region.kappa
        exact = -np.expm1(kappa * (np.cos(sep) - 1)) / -np.expm1(-2 * kappa)
        rows = [np.flatnonzero(found.alert_index == k)[0] for k in idx]
        np.testing.assert_allclose(found.credible_level[rows], exact, rtol=1e-12, atol=1e-15)
        ref = crossmatch(Table({"UNIQ": loc.uniq, "PROBDENSITY": loc.probdensity}),
                         SkyCoord(ra[idx] * u.deg, dec[idx] * u.deg))
        np.testing.assert_allclose(found.credible_level[rows], ref.searched_prob, atol=0.02)


# -- many events at once ------------------------------------------------------------------------


def test_many_events_at_once_equal_each_event_alone(maps, config):
    events = [gw_event(name, loc, T0 + k * u.day, revision=1)
              for k, (name, (loc, _)) in enumerate(maps.items())]
    events.append(Event("swift:1", EventKind.GRB, "Swift-BAT", T0,
                        shapes.circle(200.0, -30.0, 3.0, tolerance=0.02),
                        revision=1))
    rng = np.random.default_rng(11)
    ras, decs = [], []
    for e in events:
        r, d = e.localization.sample(1500, rng)
        ras.append(r)
        decs.append(d)
    ra, dec = np.concatenate(ras), np.concatenate(decs)
    mjd = T0.tai.mjd + rng.uniform(-0.5, 4.0, len(ra))
    alerts = batch(ra, dec, mjd)
    together = Matcher(config)
    together.set_events(events)
    allm = together.match(alerts)
    assert len(allm) > 3000
    for e in events:
        alone = Matcher(config)
        alone.set_events([e])
        mine = [x for x in allm if x.event_id == e.event_id]
        assert mine == alone.match(alerts)
        assert mine  # every event has some


def test_output_buffers_growing_mid_batch_change_nothing(maps, config):
    """The kernel starts with the capacity hint and doubles its buffers when they fill up,
    redoing the alert it stopped in: from 16 rows or from plenty, the same matches."""
    events = [gw_event(name, loc, T0 + k * u.day, revision=1)
              for k, (name, (loc, _)) in enumerate(maps.items())]
    events += [Event(f"swift:{k}", EventKind.GRB, "Swift-BAT", T0,
                     shapes.circle(200.0 + k, -30.0, 3.0), revision=1) for k in range(30)]
    rng = np.random.default_rng(5)
    r, d = events[-1].localization.sample(4000, rng)  # each alert inside ~30 overlapping circles
    alerts = batch(np.r_[r, rng.uniform(0, 360, 4000)], np.r_[d, rng.uniform(-90, 90, 4000)],
                   T0.tai.mjd + rng.uniform(0.0, 1.0, 8000))
    matcher = Matcher(config)
    matcher.set_events(events)
    pix = alert_pixels(alerts.ra, alerts.dec)
    order = np.argsort(pix, kind="stable")
    from mmcross.matchers import kernels

    vec = kernels.unit_vectors(alerts.ra[order], alerts.dec[order])
    mjd = np.ascontiguousarray(alerts.mjd_tai[order])
    active = np.ones(matcher.sky.capacity, bool)
    small = matcher.sky.match(pix[order], vec, mjd, active, 16)
    large = matcher.sky.match(pix[order], vec, mjd, active, 10**6)
    assert len(small[0]) > 10_000
    for a, b in zip(small, large, strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_restricts_to_the_given_events(maps, config):
    (l1, _), (l2, _) = maps["MS181101ab"], maps["S230518h"]
    e1, e2 = gw_event("a", l1), gw_event("b", l2)
    m = Matcher(config)
    m.set_events([e1, e2])
    rng = np.random.default_rng(2)
    r1, d1 = l1.sample(300, rng)
    r2, d2 = l2.sample(300, rng)
    ra, dec = np.r_[r1, r2], np.r_[d1, d2]
    alerts = batch(ra, dec, T0.tai.mjd + 1)
    both = m.match(alerts)
    only_b = m.match(alerts, only=["lvk:b"])
    assert {x.event_id for x in both} == {"lvk:a", "lvk:b"}
    assert only_b == [x for x in both if x.event_id == "lvk:b"]
    assert m.match(alerts, only=[]) == []
    assert m.match(alerts, only=["lvk:unknown"]) == []


# -- time window -------------------------------------------------------------------------------


def test_time_window_edges_are_inclusive(config):
    loc = shapes.circle(150.0, 10.0, 1.0, tolerance=0.02)
    event = Event("fermi:1", EventKind.GRB, "Fermi-GBM", T0, loc, revision=1)
    w = config.time_window(EventKind.GRB)
    t = event.trigger_mjd_tai
    lo, hi = t + w.before, t + w.after
    mjd = np.array([lo, hi, np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf), t, t + 100])
    m = Matcher(config)
    m.set_events([event])
    found = m.match(batch(np.full(6, 150.0), np.full(6, 10.0), mjd))
    assert sorted(x.alert_id - 1000 for x in found) == [0, 1, 4]
    offsets = {x.alert_id - 1000: x.time_offset for x in found}
    assert offsets[4] == 0.0
    assert offsets[1] == pytest.approx(w.after, abs=1e-9)
    assert offsets[0] == pytest.approx(w.before, abs=1e-9)


# -- the Match records -------------------------------------------------------------------------


def test_match_records_fill_every_field(maps, config):
    loc, _ = maps["MS181101ab"]
    event = gw_event("MS181101ab", loc, Time("2018-11-01T22:22:46.654", scale="utc"),
                     revision=3)
    circle = Event("swift:9", EventKind.GRB, "Swift-BAT", event.trigger_time,
                   shapes.circle(10.0, 20.0, 0.5, tolerance=0.02), revision=2)
    m = Matcher(config)
    m.set_events([event, circle])
    ra0, dec0 = loc.sample(1, np.random.default_rng(0))
    t_alert = Time("2018-11-03T01:02:03.456", scale="utc")
    alerts = batch([ra0[0], 10.0], [dec0[0], 20.0], t_alert.tai.mjd)
    found = {x.event_id: x for x in m.match(alerts)}
    gw, grb = found["lvk:MS181101ab"], found["swift:9"]
    assert gw.event_revision == 3 and gw.event_kind == "gw" and gw.instrument == "LVK"
    assert gw.event_time == "2018-11-01T22:22:46.654Z" and isinstance(gw.event_time, str)
    assert gw.alert_time == "2018-11-03T01:02:03.456Z" and isinstance(gw.alert_time, str)
    assert gw.alert_id == 1000 and gw.object_id == "obj0"
    assert (gw.ra, gw.dec) == (ra0[0], dec0[0])
    assert gw.time_offset == pytest.approx((t_alert - event.trigger_time).to_value(u.day),
                                           abs=1e-8)
    assert 0 < gw.credible_level <= CL and gw.searched_area > 0 and gw.prob_density > 0
    assert gw.distance_mean > 0 and gw.distance_std > 0
    rho = m.background_rate
    assert gw.p_chance == pytest.approx(
        1 - np.exp(-rho * gw.searched_area * abs(gw.time_offset)), rel=1e-12)
    assert grb.distance_mean is None and grb.distance_std is None
    assert grb.credible_level < 0.01  # at the centre
    assert not gw.retracted


# -- live set ------------------------------------------------------------------------------------


def test_empty_batches_and_empty_live_set(maps, config):
    m = Matcher(config)
    assert m.match(AlertBatch.empty()) == []
    assert m.match(batch([10.0], [10.0], 60000.0)) == []
    m.set_events([gw_event("a", maps["MS181101ab"][0])])
    assert m.match(AlertBatch.empty()) == []
    assert len(m.match_arrays(AlertBatch.empty())) == 0


def test_events_without_localization_or_retracted_are_ignored(maps, config):
    loc = maps["MS181101ab"][0]
    m = Matcher(config)
    no_loc = Event("grb:x", EventKind.GRB, "X", T0, None, revision=1)
    retracted = gw_event("r", loc)
    retracted.action = NoticeAction.RETRACT
    m.set_events([no_loc, retracted, gw_event("a", loc)])
    assert m.event_ids == ["lvk:a"]
    m.upsert(Event("lvk:a", EventKind.GW, "LVK", T0, None, revision=2))
    assert m.event_ids == []


def test_set_events_reuses_unchanged_packing_and_repacks_new_revisions(maps, config):
    loc1, loc2 = maps["MS181101ab"][0], maps["S230518h"][0]
    m = Matcher(config)
    m.set_events([gw_event("a", loc1), gw_event("b", loc2)])
    number_a, rows = m._entries["lvk:a"].number, m.sky.n_pixels
    m.set_events([gw_event("a", loc1), gw_event("b", loc1, revision=2)])
    assert m._entries["lvk:a"].number == number_a  # kept, not repacked
    assert m.sky.n_pixels == 2 * (rows - len(pack_localization(loc2, max_credible_level=CL)))
    ra, dec = loc1.sample(200, np.random.default_rng(4))
    found = m.match(batch(ra, dec, T0.tai.mjd + 1))
    by_event = {}
    for x in found:
        by_event.setdefault(x.event_id, []).append((x.alert_id, x.credible_level))
    assert by_event["lvk:a"] == by_event["lvk:b"]  # b now carries loc1
    m.remove("lvk:a")
    m.remove("lvk:missing")
    assert {x.event_id for x in m.match(batch(ra, dec, T0.tai.mjd + 1))} == {"lvk:b"}
    m.upsert(gw_event("a", loc1, revision=2))
    assert m.event_ids == ["lvk:b", "lvk:a"]


def test_live_sky_cell_index_covers_every_packed_pixel(maps):
    loc = maps["S230518h"][0]
    packed = pack_localization(loc, max_credible_level=CL, cell_order=5)
    sky = LiveSky(CL, cell_order=5)
    numbers = [sky.add_pixels(packed, 0.0, 1.0) for _ in range(2)]
    assert sky.n_pixels == 2 * len(packed)
    # every pixel start falls in a cell whose slot list covers it, for both events
    shift = 2 * (29 - 5)
    for e in numbers:
        view = sky.view(e)
        np.testing.assert_array_equal(view.start, packed.start)
        np.testing.assert_array_equal(view.cells, packed.cells)
        rows = np.flatnonzero((sky.slots[:, 1] == e) & (sky.slot_head >= 0))
        for k in np.random.default_rng(0).choice(len(packed), 300):
            row = sky.rows(e).start + k
            c = packed.start[k] >> shift
            s = sky.head[sky.level_offset[5] + c]
            covered = False
            while s >= 0:
                nxt, event, lo, hi = sky.slots[s]
                covered |= bool(event == e and lo <= row < hi)
                s = nxt
            assert covered
        assert len(rows) == len(packed.cells)


def test_adding_and_removing_one_event_leaves_the_others_in_place(maps, config):
    """Incremental live set: an upsert or a removal touches only that event's entries."""
    loc = maps["S230518h"][0]
    m = Matcher(config)
    m.upsert(gw_event("a", loc))
    rows_a = m.sky.rows(m._entries["lvk:a"].number)
    for k in range(20):
        m.upsert(Event(f"grb:{k}", EventKind.GRB, "GBM", T0,
                       shapes.circle(10.0 * k, 5.0, 0.5 + k), revision=1))
    m.upsert(gw_event("b", loc))
    m.remove("grb:3")
    m.upsert(Event("grb:4", EventKind.GRB, "GBM", T0, shapes.circle(0.0, 0.0, 1.0),
                   revision=2))
    assert m.sky.rows(m._entries["lvk:a"].number) == rows_a  # not moved
    assert m.sky.n_pixels == 2 * len(pack_localization(loc, max_credible_level=CL))
    ra, dec = loc.sample(300, np.random.default_rng(5))
    found = m.match_arrays(batch(np.r_[ra, 0.0, 30.0], np.r_[dec, 0.0, 5.0], T0.tai.mjd + 1))
    ids = [found.event_ids[e] for e in found.event_index]
    assert "grb:3" not in ids and "grb:4" in ids
    assert ids.count("lvk:a") == ids.count("lvk:b") > 200


def test_live_events_hold_one_compact_copy_of_their_pixels(maps, config):
    """Steady state memory: 49 bytes per packed pixel of a pixel map, no localization caches
    left, and an analytic event well under 1 KB whatever its size."""
    loc = maps["S230518h"][0]
    circle = shapes.circle(30.0, 10.0, 1.0, 0.9)
    big = shapes.circle(30.0, 10.0, 15.0, 0.9)
    m = Matcher(config)
    m.set_events([gw_event("a", loc),
                  Event("grb:c", EventKind.GRB, "GBM", T0, circle, revision=1),
                  Event("grb:big", EventKind.GRB, "GBM", T0, big, revision=1)])
    n_gw = m.sky.n_pixels
    assert n_gw == int(np.sum(loc.credible_levels() <= CL))
    loc.release_caches()
    assert m.sky.event_nbytes(m._entries["lvk:a"].number) < 49 * n_gw + 40 * 2000
    for k in ("grb:c", "grb:big"):
        assert m.sky.event_nbytes(m._entries[k].number) < 1024
    assert loc.cache_nbytes == 0 and circle.cache_nbytes == 0 and big.cache_nbytes == 0
    ra, dec = loc.sample(300, np.random.default_rng(5))
    found = m.match_arrays(batch(ra, dec, T0.tai.mjd + 1))
    assert circle.cache_nbytes == 0  # matched without pixels
    gw = found.event_index == m._entries["lvk:a"].number
    assert np.all(np.isfinite(found.distance_mean[gw]))
    view = m.sky.view(m._entries["lvk:a"].number)
    start29, end29 = loc.ranges29()
    kept = loc.credible_levels() <= CL
    np.testing.assert_array_equal(view.start, start29[kept])
    np.testing.assert_array_equal(view.end, end29[kept])


@pytest.mark.parametrize("radius", [1 / 3600, 0.05, 60.0])
@pytest.mark.parametrize("ra,dec", [(0.0, 90.0), (359.999, 0.0), (123.0, -89.9999)])
def test_analytic_regions_match_exactly_their_credible_region(config, radius, ra, dec):
    """Tiny and huge circles, an ellipse and a box at the poles and across RA 0: the matched
    alerts are exactly those whose Fisher credible level (astropy separation, closed form)
    is <= the configured level."""
    circle = shapes.circle(ra, dec, radius)
    box = shapes.box(ra, dec, min(2 * radius, 80.0), radius, radius, min(1.5 * radius, 80.0),
                     0.9)
    ellipse = shapes.ellipse(ra, dec, min(2 * radius, 80.0), radius, 45.0, 0.9)
    events = [Event(f"e:{k}", EventKind.GRB, "x", T0, loc, revision=1)
              for k, loc in enumerate((circle, box, ellipse))]
    m = Matcher(config)
    m.set_events(events)
    rng = np.random.default_rng(8)
    for k, loc in enumerate((circle, box, ellipse)):
        sra, sdec = loc.sample(3000, rng)
        found = m.match_arrays(batch(sra, sdec, T0.tai.mjd + 0.1), only=[f"e:{k}"])
        cl = loc.credible_level_at(sra, sdec)
        assert np.array_equal(np.sort(found.alert_index), np.flatnonzero(cl <= CL))
        assert 2500 < len(found) < 2900  # ~90 % of the samples
    sra, sdec = circle.sample(3000, rng)
    sep = SkyCoord(sra * u.deg, sdec * u.deg).separation(SkyCoord(ra * u.deg, dec * u.deg)).rad
    kappa = circle.region.kappa
    exact = -np.expm1(-kappa * 2 * np.sin(sep / 2) ** 2) / -np.expm1(-2 * kappa)
    found = m.match_arrays(batch(sra, sdec, T0.tai.mjd + 0.1), only=["e:0"])
    clear = np.abs(exact - CL) > 1e-9
    got = np.zeros(len(sra), bool)
    got[found.alert_index] = True
    assert np.array_equal(got[clear], (exact <= CL)[clear])

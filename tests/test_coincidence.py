"""GW x external-trigger coincidences through the engine, against ligo-raven and gwcelery.

Real notices: the O4 LVK alert S230518h (with its sky map) and the real Fermi GBM 726773850
ground-position VOEvent, its trigger time and position moved into S230518h's window (as
GRB 170817A was 1.74 s after GW170817). The references are ligo-raven 3.3's ``coinc_far`` and
``skymap_overlap_integral`` and gwcelery 3.0's window choice, configuration and external
sky maps (loaded from its wheel).
"""

from __future__ import annotations

import re
from dataclasses import replace

import healpy as hp
import numpy as np
import pytest
from astropy.time import TimeDelta
from ligo.raven import search as raven_search
from ligo.skymap.io import fits as skymap_fits

from mmcross.app.demo import place_voevent
from mmcross.app.engine import Engine
from mmcross.listeners import read_notice_file
from mmcross.matchers.coincidence import CoincidenceSearch, ExternalSpec
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError
from mmcross.model.event import EventKind, NoticeAction
from mmcross.model.localization import uniq_to_order_ipix
from tests.helpers import GBM_NOTICE, GW_NOTICE, gwcelery_module

GW_MAP = "skymaps/fink-mm/S230518h_initial.multiorder.fits"
RTOL = 1e-6


class Collect:
    """A report sink and coincidence sink remembering everything written."""

    def __init__(self) -> None:
        self.matches: list = []
        self.coincidences: list = []

    def write(self, matches) -> None:
        self.matches += list(matches)

    def write_coincidences(self, records) -> None:
        self.coincidences += list(records)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def gwcelery():
    return {"raven": gwcelery_module("tasks.raven"),
            "skymaps": gwcelery_module("tasks.external_skymaps"),
            "conf": gwcelery_module("conf")}


@pytest.fixture(scope="module")
def gw(shared_file):
    return read_notice_file(shared_file(GW_NOTICE))


@pytest.fixture(scope="module")
def peak(gw):
    """The centre of the GW map's most probable pixel (deg)."""
    loc = gw.localization
    order, ipix = uniq_to_order_ipix(loc.uniq[np.argmax(loc.probdensity)])
    ra, dec = hp.pix2ang(1 << int(order), int(ipix), nest=True, lonlat=True)
    return float(ra), float(dec)


def grb(shared_file, tmp_path, gw, peak, dt_s: float, *, offset_deg: float = 2.0,
        delay_s: float = 47.0):
    """The real GBM notice placed so that t_GW - t_ext = dt_s, offset_deg from the GW peak."""
    xml = place_voevent(shared_file(GBM_NOTICE).read_bytes(),
                        gw.trigger_time - TimeDelta(dt_s, format="sec"),
                        peak[0] + offset_deg, peak[1], delay_s)
    path = tmp_path / f"gbm_{dt_s}_{offset_deg}_{delay_s}.xml"
    path.write_bytes(xml)
    return read_notice_file(path)


# ---------------------------------------------------------------- windows and sign convention

@pytest.mark.parametrize("group,gw_search,pipeline,search", [
    ("CBC", "AllSky", "Fermi", "GRB"), ("Burst", "AllSky", "Fermi", "GRB"),
    ("Burst", "BBH", "Swift", "GRB"), ("CBC", "AllSky", "IceCube", "HEN"),
    ("Burst", "AllSky", "IceCube", "HEN"), ("CBC", "AllSky", "CHIME", "FRB"),
    ("Burst", "AllSky", "CHIME", "FRB"), ("CBC", "AllSky", "Fermi", "SubGRB"),
    ("CBC", "AllSky", "Swift", "SubGRBTargeted"), ("Burst", "AllSky", "SNEWS", "Supernova"),
])
def test_window_is_gwcelerys_from_either_side(gwcelery, gw, group, gw_search, pipeline, search):
    """Ours bounds t_GW - t_ext; gwcelery's, searched from the external event, bounds the GW
    time relative to it (the same numbers) and, from the superevent, is flipped."""
    mine = CoincidenceSearch(Config.load()).time_window(
        replace(gw, significance={"group": group, "search": gw_search}),
        ExternalSpec(pipeline, search))
    from_ext = gwcelery["raven"]._time_window("E1", group, [pipeline], [search], [gw_search])
    from_gw = gwcelery["raven"]._time_window("S1", group, [pipeline], [search], [gw_search])
    assert mine == tuple(from_ext)
    assert (-mine[1], -mine[0]) == tuple(from_gw)


@pytest.mark.parametrize("group,gw_search,pipeline,search", [
    ("CBC", "AllSky", "SNEWS", "Supernova"), ("Burst", "IMBH", "Fermi", "GRB")])
def test_searches_gwcelery_does_not_launch_have_no_window(gw, group, gw_search, pipeline,
                                                          search):
    with pytest.raises(ConfigError):
        CoincidenceSearch(Config.load()).time_window(
            replace(gw, significance={"group": group, "search": gw_search}),
            ExternalSpec(pipeline, search))


def test_configuration_is_gwcelerys(gwcelery):
    conf = gwcelery["conf"]
    search = CoincidenceSearch(Config.load())
    assert search.windows == {k: tuple(v) for k, v in conf.raven_coincidence_windows.items()}
    assert search.rates == pytest.approx(conf.raven_ext_rates, rel=1e-15)
    assert search.trials == conf.significant_alert_trials_factor
    theirs = conf.significant_alert_far_threshold
    assert search.thresholds.keys() == theirs.keys()
    for group, values in theirs.items():
        assert search.thresholds[group] == pytest.approx(values, rel=1e-15)
    assert search.snews_threshold == conf.snews_gw_far_threshold
    assert search.targeted["gw"] == conf.raven_targeted_far_thresholds["GW"]
    assert search.targeted["grb"] == conf.raven_targeted_far_thresholds["GRB"]


@pytest.mark.parametrize("dt_s,inside", [(-1.74, True), (-4.9, True), (0.9, True),
                                         (1.2, False), (-5.2, False)])
def test_sign_convention_t_gw_minus_t_ext(shared_file, tmp_path, gw, peak, dt_s, inside):
    """CBC x GRB window [-5, 1] s bounds t_GW - t_ext: a GRB 1.74 s after the GW (GW170817)
    is inside, a GRB 1.2 s before it is not."""
    engine = Engine(Config.load())
    engine.on_notice(gw)
    out = engine.on_notice(grb(shared_file, tmp_path, gw, peak, dt_s))
    assert len(out.coincidences) == int(inside)
    if inside:
        assert out.coincidences[0].time_difference == pytest.approx(dt_s, abs=0.011)


# ---------------------------------------------------------------- FARs through the engine

def test_joint_fars_are_ligo_ravens(shared_file, tmp_path, gw, peak, gwcelery):
    sink = Collect()
    engine = Engine(Config.load(), sinks=[sink], coincidence_sinks=[sink])
    engine.on_notice(gw)
    ext = grb(shared_file, tmp_path, gw, peak, -1.74)
    out = engine.on_notice(ext)
    (c,) = out.coincidences
    tl, th = gwcelery["raven"]._time_window(ext.event_id, "CBC", ["Fermi"], ["GRB"], ["AllSky"])
    temporal = raven_search.coinc_far(
        "S230518h", "E1", tl, th, grb_search="GRB", gracedb=object(),
        se_dict={"preferred_event": "G1", "far": gw.significance["far"], "t_0": 0.0},
        ext_dict={"pipeline": "Fermi", "gpstime": 0.0},
        em_rate=gwcelery["conf"].raven_ext_rates["GRB"])["temporal_coinc_far"]
    table = skymap_fits.read_sky_map(str(shared_file(GW_MAP)), moc=True)
    ext_map = gwcelery["skymaps"].create_external_skymap(
        ext.ra, ext.dec, ext.error_radius, "Fermi", "FERMI_GBM_GROUND_POSITION")
    overlap = raven_search.skymap_overlap_integral(
        table["PROBDENSITY"], ext_map["PROBDENSITY"], table["UNIQ"], ext_map["UNIQ"])
    assert c.temporal_far == pytest.approx(temporal, rel=RTOL)
    assert c.overlap == pytest.approx(overlap, rel=RTOL)
    assert c.spacetime_far == pytest.approx(temporal / overlap, rel=RTOL)
    assert c.overlap_exact == pytest.approx(overlap, rel=0.05)
    # gwcelery trigger_raven_alert: CBC AllSky trials 7, threshold one per 30 days.
    trials = gwcelery["conf"].significant_alert_trials_factor["cbc"]["allsky"]
    threshold = gwcelery["conf"].significant_alert_far_threshold["cbc"]["allsky"]
    weighted = temporal / overlap * trials * (trials - 1.0)
    assert c.weighted_far == pytest.approx(weighted, rel=RTOL)
    assert c.publishable == (weighted <= threshold)
    assert sink.coincidences == [c]
    combined = engine.index.get(c.coincidence_id)
    assert combined.kind is EventKind.COINCIDENCE
    assert combined.significance["parents"] == [gw.event_id, ext.event_id]
    assert combined.localization.has_distance
    assert combined.localization.area(0.9) < min(gw.localization.area(0.9),
                                                 ext.localization.area(0.9))


def test_whichever_arrives_first(shared_file, tmp_path, gw, peak):
    """External first, then the GW (issued later): the same coincidence and FARs."""
    ext = grb(shared_file, tmp_path, gw, peak, -1.74)
    a, b = Engine(Config.load()), Engine(Config.load())
    a.on_notice(gw)
    (first,) = a.on_notice(ext).coincidences
    b.on_notice(ext)
    (second,) = b.on_notice(gw).coincidences
    assert second == first


# ---------------------------------------------------- counterparts, revisions, retraction

def _counterparts(engine, coinc_id: str, n: int, start: float, first_id: int) -> AlertBatch:
    loc = engine.index.get(coinc_id).localization
    ra, dec = loc.sample(n, np.random.default_rng(first_id))
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    return AlertBatch(alert_id=ids, object_id=np.array([str(i) for i in ids], dtype=object),
                      ra=ra, dec=dec, mjd_tai=start + np.linspace(0.001, 0.01, n),
                      is_new=np.ones(n, dtype=bool))


def test_counterparts_revision_and_retraction_exactly_once(shared_file, tmp_path, gw, peak):
    sink = Collect()
    engine = Engine(Config.load(), sinks=[sink], coincidence_sinks=[sink])
    engine.on_notice(gw)
    ext = grb(shared_file, tmp_path, gw, peak, -1.74)
    (c,) = engine.on_notice(ext).coincidences
    cid = c.coincidence_id
    t0 = gw.trigger_mjd_tai
    found = engine.on_alerts(_counterparts(engine, cid, 20, t0, 1_000))
    inside = {m.alert_id for m in found if m.event_id == cid}
    level = engine.config.credible_level
    combined = engine.index.get(cid).localization
    batch = _counterparts(engine, cid, 20, t0, 1_000)
    expected = set(batch.alert_id[combined.credible_level_at(batch.ra, batch.dec) <= level])
    assert inside == expected and inside
    # A new GW revision recomputes: coincidence revision 2, combined event revision 2, its
    # matches found again by retro-matching (none revoked: same map).
    gw2 = replace(gw, notice_time=gw.notice_time + TimeDelta(600, format="sec"), raw=b"r2")
    out = engine.on_notice(gw2)
    assert [x.revision for x in out.coincidences] == [2]
    assert engine.index.get(cid).revision == 2
    assert {m.alert_id for m in out.reports if m.event_id == cid and not m.retracted} == inside
    # Retraction of the GRB revokes the coincidence and the combined region's matches, once.
    retraction = replace(ext, action=NoticeAction.RETRACT, localization=None, raw=b"x",
                         notice_time=gw2.notice_time + TimeDelta(60, format="sec"))
    out = engine.on_notice(retraction)
    assert [(x.coincidence_id, x.retracted) for x in out.coincidences] == [(cid, True)]
    assert cid not in engine.index
    assert {m.alert_id for m in out.reports if m.event_id == cid and m.retracted} == inside
    engine.on_notice(replace(gw2, notice_time=retraction.notice_time
                             + TimeDelta(60, format="sec"), raw=b"r3"))
    revoked = [m for m in sink.matches if m.event_id == cid and m.retracted]
    assert sorted(m.alert_id for m in revoked) == sorted(inside)
    assert [x.retracted for x in sink.coincidences] == [False, False, True]
    assert engine.live_coincidences == []


def test_gw_retraction_revokes_too(shared_file, tmp_path, gw, peak):
    sink = Collect()
    engine = Engine(Config.load(), sinks=[sink], coincidence_sinks=[sink])
    ext = grb(shared_file, tmp_path, gw, peak, 0.5)
    engine.on_notice(ext)
    (c,) = engine.on_notice(gw).coincidences
    retraction = replace(gw, action=NoticeAction.RETRACT, localization=None, raw=b"x",
                         notice_time=gw.notice_time + TimeDelta(60, format="sec"))
    out = engine.on_notice(retraction)
    assert [x.retracted for x in out.coincidences] == [True]
    assert c.coincidence_id not in engine.index
    assert ext.event_id in engine.index


# ---------------------------------------------------- the LVK's own RAVEN result (external_coinc)

def test_lvk_external_coinc_reported_beside_ours(shared_file, tmp_path):
    """The LVK sample alert MS181101ab (IGWN Avro) carries RAVEN's result for a Fermi GBM
    burst 2.02 s after the merger. The real GBM notice, given that burst's IVORN and placed
    there, forms the same pair: mmcross reports its FARs and the LVK's side by side."""
    gw = read_notice_file(shared_file("gcn/avro/userguide/MS181101ab-ext-update.avro"),
                          roles=("observation", "test"))
    lvk = gw.significance["external_coinc"]
    xml = place_voevent(shared_file(GBM_NOTICE).read_bytes(),
                        gw.trigger_time + TimeDelta(lvk["time_difference"], format="sec"),
                        *(float(x[0]) for x in gw.localization.sample(
                            1, np.random.default_rng(2))), 60.0)
    xml = re.sub(rb'ivorn="[^"]*"', f'ivorn="{lvk["ivorn"]}"'.encode(), xml, count=1)
    path = tmp_path / "gbm.xml"
    path.write_bytes(xml)
    engine = Engine(Config.load())
    engine.on_notice(gw)
    (c,) = engine.on_notice(read_notice_file(path)).coincidences
    assert c.lvk_temporal_far == lvk["time_coincidence_far"]
    assert c.lvk_spacetime_far == lvk["time_sky_position_coincidence_far"]
    assert c.lvk_time_difference == lvk["time_difference"]
    assert c.time_difference == pytest.approx(-lvk["time_difference"], abs=0.011)
    assert c.lvk_combined_area90 == pytest.approx(lvk["combined_skymap_area90"])
    assert c.temporal_far is not None and c.spacetime_far is not None
    assert not c.publishable  # MS superevents are tests


def test_lvk_combined_map_area_is_ligo_skymaps(shared_file):
    """The area kept for the notice's combined map equals ligo.skymap's on the same map."""
    from ligo.skymap.postprocess.util import find_greedy_credible_levels

    gw = read_notice_file(shared_file("gcn/avro/userguide/MS181101ab-ext-update.avro"),
                          roles=("observation", "test"))
    table = skymap_fits.read_sky_map(
        str(shared_file("skymaps/userguide/MS181101ab_combined-ext.multiorder.fits")), moc=True)
    order, _ = uniq_to_order_ipix(np.asarray(table["UNIQ"]))
    area = 4 * np.pi / (12 * 4.0 ** order) * (180 / np.pi) ** 2
    prob = np.asarray(table["PROBDENSITY"]) * area / (180 / np.pi) ** 2
    cl = find_greedy_credible_levels(prob, np.asarray(table["PROBDENSITY"]))
    expected = float(np.sum(area[cl <= 0.9]))
    assert gw.significance["external_coinc"]["combined_skymap_area90"] == \
        pytest.approx(expected, rel=0.02)


def test_restart_keeps_coincidences_and_a_later_retraction_revokes_them(shared_file, tmp_path,
                                                                        gw, peak):
    from mmcross.catalogs import Store

    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    ext = grb(shared_file, tmp_path, gw, peak, -1.74)
    first = Engine(Config.load(), store=Store(db))
    first.on_notice(gw)
    (c,) = first.on_notice(ext).coincidences
    first.close()
    sink = Collect()
    second = Engine(Config.load(), store=Store(db), sinks=[sink], coincidence_sinks=[sink])
    second.restore()
    assert second.live_coincidences == [c]
    assert c.coincidence_id in second.index
    second.on_notice(replace(ext, action=NoticeAction.RETRACT, localization=None, raw=b"x",
                             notice_time=ext.notice_time + TimeDelta(60, format="sec")))
    assert sink.coincidences == [replace(c, retracted=True)]
    assert c.coincidence_id not in second.index
    second.close()


@pytest.mark.parametrize("notice,pipeline,search,dt_s", [
    ("gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml", "IceCube", "HEN", 8.0),
    ("gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml", "Swift", "GRB",
     -3.0),
])
def test_neutrino_and_swift_fars_are_ligo_ravens(shared_file, tmp_path, gw, peak, gwcelery,
                                                notice, pipeline, search, dt_s):
    """Real IceCube and Swift notices placed in S230518h's windows: gwcelery's window and
    rate for the search, ligo-raven's coinc_far (HEN as GRB, as gwcelery calls it) and
    overlap with gwcelery's Gaussian map of the notice."""
    path = tmp_path / "ext.xml"
    path.write_bytes(place_voevent(shared_file(notice).read_bytes(),
                                   gw.trigger_time - TimeDelta(dt_s, format="sec"),
                                   peak[0] + 1.0, peak[1], 60.0))
    ext = read_notice_file(path)
    engine = Engine(Config.load())
    engine.on_notice(gw)
    (c,) = engine.on_notice(ext).coincidences
    assert (c.ext_pipeline, c.ext_search) == (pipeline, search)
    tl, th = gwcelery["raven"]._time_window(ext.event_id, "CBC", [pipeline], [search],
                                            ["AllSky"])
    assert (c.window_lo, c.window_hi) == (tl, th)
    temporal = raven_search.coinc_far(
        "S230518h", "E1", tl, th, grb_search="GRB", gracedb=object(),
        se_dict={"preferred_event": "G1", "far": gw.significance["far"], "t_0": 0.0},
        ext_dict={"pipeline": pipeline, "gpstime": 0.0},
        em_rate=gwcelery["conf"].raven_ext_rates[search])["temporal_coinc_far"]
    table = skymap_fits.read_sky_map(str(shared_file(GW_MAP)), moc=True)
    ext_map = gwcelery["skymaps"].create_external_skymap(ext.ra, ext.dec, ext.error_radius,
                                                         pipeline)
    overlap = raven_search.skymap_overlap_integral(
        table["PROBDENSITY"], ext_map["PROBDENSITY"], table["UNIQ"], ext_map["UNIQ"])
    assert c.temporal_far == pytest.approx(temporal, rel=RTOL)
    assert c.overlap == pytest.approx(overlap, rel=RTOL)
    assert c.spacetime_far == pytest.approx(temporal / overlap, rel=RTOL)


def test_gw_without_sky_map_gives_temporal_far_only(shared_file, tmp_path, gw, peak):
    """An LVK VOEvent carries its map by URL only: the pair keeps its temporal FAR, has no
    space-time FAR nor combined map, and gwcelery does not publish it."""
    no_map = replace(gw, localization=None)
    engine = Engine(Config.load())
    engine.on_notice(no_map)
    (c,) = engine.on_notice(grb(shared_file, tmp_path, gw, peak, -1.74)).coincidences
    assert c.temporal_far is not None
    assert (c.spacetime_far, c.overlap, c.combined_area90) == (None, None, None)
    assert not c.publishable
    assert c.coincidence_id not in engine.index

"""The engine end to end on real notices: matching, retro-matching, updates, retractions,
restarts — credible levels checked against ligo.skymap's crossmatch."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.time import Time

from mmcross.app.engine import Engine
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model import shapes
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config, notice_options
from mmcross.model.event import Event, EventKind

FAST = {"localization": {"credible_level_tolerance": 1e-2},
        "listeners": {"roles": ["observation", "test"]}}


class ListSink:
    def __init__(self) -> None:
        self.reports = []

    def write(self, matches) -> None:
        self.reports.extend(matches)

    def close(self) -> None:
        pass


def _alerts(ra, dec, mjd, first_id=1):
    n = len(ra)
    return AlertBatch(np.arange(first_id, first_id + n), np.arange(n).astype(str),
                      ra, dec, np.broadcast_to(mjd, (n,)).astype(float))


def _engine(store=None, **over):
    config = Config.load(overrides={**FAST, **over})
    sink = ListSink()
    return Engine(config, store=store, sinks=[sink]), sink, config


def test_lvk_credible_levels_equal_ligo_skymap_crossmatch(shared_file):
    crossmatch = pytest.importorskip("ligo.skymap.postprocess").crossmatch
    read_sky_map = pytest.importorskip("ligo.skymap.io").read_sky_map
    engine, sink, config = _engine()
    event = read_notice_file(shared_file("gcn/json/fink-mm/S230518h-initial.json"),
                             **notice_options(config))
    engine.on_notice(event)
    rng = np.random.default_rng(7)
    ra, dec = event.localization.sample(400, rng)
    ra = np.concatenate([ra, rng.uniform(0, 360, 200)])
    dec = np.concatenate([dec, np.degrees(np.arcsin(rng.uniform(-1, 1, 200)))])
    matches = engine.on_alerts(_alerts(ra, dec, event.trigger_mjd_tai + 0.5))

    sky = read_sky_map(str(shared_file("skymaps/fink-mm/S230518h_initial.multiorder.fits")),
                       moc=True)
    ref = crossmatch(sky, SkyCoord(ra, dec, unit="deg"))
    expected = np.flatnonzero(ref.searched_prob <= config.credible_level) + 1
    by_id = {m.alert_id: m for m in matches}
    assert sorted(by_id) == list(expected)
    assert len(expected) > 300
    idx = expected - 1
    got = np.array([by_id[a].credible_level for a in expected])
    np.testing.assert_allclose(got, ref.searched_prob[idx], atol=1e-6)
    np.testing.assert_allclose([by_id[a].searched_area for a in expected],
                               ref.searched_area[idx], rtol=1e-6)
    np.testing.assert_allclose([by_id[a].prob_density for a in expected],
                               ref.probdensity[idx] * (np.pi / 180) ** 2, rtol=1e-6)
    assert all(m.distance_mean > 0 and m.distance_std > 0 for m in matches)
    assert sink.reports == matches


def test_alerts_seen_before_the_notice_are_retro_matched(shared_file):
    engine, sink, config = _engine()
    event = read_notice_file(shared_file("gcn/json/fink-mm/S230518h-initial.json"),
                             **notice_options(config))
    assert event.arrival_mjd_tai - event.trigger_mjd_tai > 0.1  # notice came ~3 h late
    ra, dec = event.localization.sample(50, np.random.default_rng(3))
    early = _alerts(ra, dec, event.trigger_mjd_tai + 0.05)
    assert engine.on_alerts(early) == []  # nothing live yet
    found = engine.on_notice(event).reports
    inside = event.localization.credible_level_at(ra, dec) <= config.credible_level
    assert sorted(m.alert_id for m in found) == list(early.alert_id[inside])
    # Alerts before the trigger window are not matched even though they are in history.
    too_early = _alerts(ra, dec, event.trigger_mjd_tai - 0.5, first_id=1000)
    engine2, _, _ = _engine()
    engine2.on_alerts(too_early)
    again = engine2.on_notice(event)
    assert again.reports == [] and again.change == "added"


def test_retraction_revokes_every_match(shared_file):
    engine, sink, config = _engine()
    options = notice_options(config)
    prelim = read_notice_file(shared_file("gcn/json/userguide/MS181101ab-preliminary.json"),
                              **options)
    engine.on_notice(prelim)
    ra, dec = prelim.localization.sample(30, np.random.default_rng(5))
    matched = engine.on_alerts(_alerts(ra, dec, prelim.trigger_mjd_tai + 0.02))
    assert matched and not any(m.retracted for m in matched)
    outcome = engine.on_notice(read_notice_file(
        shared_file("gcn/json/userguide/MS181101ab-retraction.json"), **options))
    assert outcome.change == "retracted" and outcome.event.retracted
    revoked = outcome.reports
    assert sorted(m.alert_id for m in revoked) == sorted(m.alert_id for m in matched)
    assert all(m.retracted for m in revoked)
    assert "lvk:MS181101ab" not in engine.index
    assert engine.on_alerts(_alerts(ra, dec, prelim.trigger_mjd_tai + 0.03, 100)) == []


def _circle_event(ra, dec, issued, event_id="grb:1"):
    return Event(event_id=event_id, kind=EventKind.GRB, instrument="test",
                 trigger_time=Time("2024-01-12T17:37:00", scale="utc"),
                 notice_time=Time(issued, scale="utc"), raw=issued.encode(),
                 localization=shapes.circle(ra, dec, 2.0, 0.9, tolerance=1e-2))


def test_update_rematches_history_and_revokes_what_no_longer_holds():
    engine, sink, _ = _engine()
    first = _circle_event(100.0, -30.0, "2024-01-12T17:38:00")
    engine.on_notice(first)
    t = first.trigger_mjd_tai + 0.1
    at_a = engine.on_alerts(_alerts([100.0, 100.5], [-30.0, -30.2], t))
    assert [m.event_revision for m in at_a] == [1, 1]
    at_b = _alerts([140.0], [10.0], t, first_id=50)
    assert engine.on_alerts(at_b) == []
    reports = engine.on_notice(_circle_event(140.0, 10.0, "2024-01-12T18:00:00")).reports
    revoked = sorted(m.alert_id for m in reports if m.retracted)
    new = [m for m in reports if not m.retracted]
    assert revoked == [1, 2]
    assert [(m.alert_id, m.event_revision) for m in new] == [(50, 2)]


def test_restart_restores_events_matches_and_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    engine, _, _ = _engine(store=Store(url))
    event = _circle_event(100.0, -30.0, "2024-01-12T17:38:00")
    engine.on_notice(event)
    t = event.trigger_mjd_tai + 0.1
    first = engine.on_alerts(_alerts([100.0], [-30.0], t))
    engine.on_alerts(_alerts([200.0], [40.0], t, first_id=7))  # unmatched, kept in history
    engine.close()

    again, sink, _ = _engine(store=Store(url))
    again.restore()
    assert [e.event_id for e in again.index.live()] == ["grb:1"]
    assert len(again.history) == 2
    # Re-delivery of an alert already matched before the restart is not reported twice.
    assert again.on_alerts(_alerts([100.0], [-30.0], t)) == []
    assert [m.alert_id for m in first] == [1]
    more = again.on_alerts(_alerts([100.2], [-30.1], t, first_id=9))
    assert [m.alert_id for m in more] == [9]
    # A new revision continues the numbering and re-matches the restored history.
    reports = again.on_notice(_circle_event(200.0, 40.0, "2024-01-12T18:00:00")).reports
    assert {(m.alert_id, m.event_revision, m.retracted) for m in reports} == {
        (1, 1, True), (9, 1, True), (7, 2, False)}
    again.close()


def test_an_update_supersedes_the_earlier_reports_and_each_cites_its_own_notice(shared_file):
    """Real Fermi GBM 726773850: the flight position, then the ground position. Alerts inside
    both circles are reported again for revision 2, superseding revision 1's packets, and each
    counterpart VOEvent cites the GCN notice it answers."""
    import voeventparse as vp
    from lxml import etree

    from mmcross.brokers.voevent_out import counterpart_ivorn, counterpart_voevent

    engine, sink, config = _engine()
    gcn = "gcn/voevent/fink-mm-kafka-2024-01"
    flt_path = shared_file(f"{gcn}/Fermi_GBM_Flt_Pos_726773850-264.xml")
    gnd_path = shared_file(f"{gcn}/Fermi_GBM_Gnd_Pos_726773850-268.xml")
    flt = read_notice_file(flt_path, **notice_options(config))
    gnd = read_notice_file(gnd_path, **notice_options(config))
    assert flt.event_id == gnd.event_id
    engine.on_notice(flt)
    # alerts near the ground position: inside both 90% regions
    ra = gnd.ra + np.linspace(-0.5, 0.5, 5)
    dec = np.full(5, gnd.dec)
    both = (flt.localization.credible_level_at(ra, dec) <= config.credible_level) & (
        gnd.localization.credible_level_at(ra, dec) <= config.credible_level)
    assert both.all()
    first = engine.on_alerts(_alerts(ra, dec, flt.trigger_mjd_tai + 0.1))
    assert len(first) == 5 and {m.event_revision for m in first} == {1}
    assert {m.notice_ivorn for m in first} == {etree.parse(str(flt_path)).getroot().get("ivorn")}
    assert all(m.supersedes_revision is None for m in first)
    second = engine.on_notice(gnd).reports
    assert sorted(m.alert_id for m in second) == sorted(m.alert_id for m in first)
    assert {(m.event_revision, m.supersedes_revision) for m in second} == {(2, 1)}
    gnd_ivorn = etree.parse(str(gnd_path)).getroot().get("ivorn")
    v = vp.loads(counterpart_voevent(second[0]))
    cites = {c.attrib["cite"]: c.text for c in v.Citations.EventIVORN}
    earlier = next(m for m in first if m.alert_id == second[0].alert_id)
    assert cites == {"followup": gnd_ivorn, "supersedes": counterpart_ivorn(earlier)}

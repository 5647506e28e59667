"""MatchBatch (columns), LiveMatches (the engine's live reports) and vectorised UTC text."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.time import Time

from mmcross.app.live_matches import LiveMatches
from mmcross.brokers.reports import match_records, match_to_json, record_to_json
from mmcross.model.match_batch import MatchBatch
from mmcross.model.timefmt import iso_utc_from_mjd_tai
from tests.helpers import make_match


def test_round_trip_keeps_every_field_and_none():
    matches = [make_match(0), make_match(1, distance_mean=None, distance_std=None,
                                         supersedes_revision=1, retracted=True,
                                         notice_ivorn="ivo://nasa.gsfc.gcn/x#1")]
    batch = MatchBatch.from_matches(matches)
    assert len(batch) == 2
    assert batch.matches() == matches
    assert list(batch) == matches and batch == matches
    assert batch[1] == matches[1] and batch[-1] == matches[1]
    assert batch.records() == [m.to_record() for m in matches]
    assert [record_to_json(r) for r in match_records(batch)] == [match_to_json(m)
                                                               for m in matches]
    assert batch.keys() == [m.key for m in matches]


def test_take_concatenate_retracted():
    batch = MatchBatch.from_matches([make_match(i) for i in range(5)])
    odd = batch.take(np.array([1, 3]))
    assert [m.alert_id for m in odd] == [make_match(1).alert_id, make_match(3).alert_id]
    both = odd + [make_match(9)]
    assert len(both) == 3 and both[2] == make_match(9)
    assert all(m.retracted for m in odd.retracted()) and not any(m.retracted for m in odd)
    assert len(MatchBatch.concatenate([MatchBatch.empty(), []])) == 0
    with pytest.raises(ValueError, match="missing columns"):
        MatchBatch({"alert_id": np.zeros(1)})


def test_live_matches_group_by_event_and_keep_latest_per_alert():
    live = LiveMatches()
    live.add(MatchBatch.from_matches([make_match(0, event_id="a"), make_match(1, event_id="b"),
                                      make_match(2, event_id="a")]))
    live.add(MatchBatch.from_matches([make_match(0, event_id="a", credible_level=0.1)]))
    a = live.of("a")
    assert [m.alert_id for m in a] == [make_match(0).alert_id, make_match(2).alert_id]
    assert a[0].credible_level == 0.1  # the latest report of alert 0, first-arrival order
    assert live.count() == 3
    gone = live.pop("a", [make_match(2).alert_id])
    assert [m.alert_id for m in gone] == [make_match(2).alert_id]
    assert len(live.of("a")) == 1 and len(live.pop("b")) == 1 and live.count() == 1


def test_utc_text_equals_astropy_to_the_millisecond():
    rng = np.random.default_rng(7)
    mjd = np.r_[60000 + rng.random(20_000) * 3000,  # the survey era
                60000.25 + (np.arange(200) + 0.5) / 86_400_000]  # half-millisecond edges
    expected = np.char.add(np.asarray(Time(mjd, format="mjd", scale="tai",
                                           precision=3).utc.isot, str), "Z")
    assert iso_utc_from_mjd_tai(mjd).tolist() == expected.tolist()


def test_utc_text_across_a_leap_second_goes_through_astropy():
    # 2016-12-31T23:59:60 UTC: TAI - UTC went from 36 to 37 s
    leap = Time("2016-12-31T23:59:59", scale="utc").tai.mjd
    mjd = leap + np.array([0.0, 1.5, 3.0]) / 86_400
    expected = np.char.add(np.asarray(Time(mjd, format="mjd", scale="tai",
                                           precision=3).utc.isot, str), "Z")
    assert iso_utc_from_mjd_tai(mjd).tolist() == expected.tolist()
    assert "23:59:60.500Z" in iso_utc_from_mjd_tai(mjd)[1]


def test_coded_columns_decode_like_plain_ones():
    from mmcross.model.match_batch import Coded

    plain = MatchBatch.from_matches([make_match(i) for i in range(4)])
    mjd = np.array([60083.2, 60083.3, 60083.4])
    codes = np.array([2, 0, 2, 1])
    coded = plain.with_columns()  # a copy
    coded._data["alert_time"] = Coded(codes, mjd, render=iso_utc_from_mjd_tai)
    coded._data["event_id"] = Coded(np.array([1, 1, 0, 1]), np.array(["a", "b"], object))
    expected_time = iso_utc_from_mjd_tai(mjd)[codes].tolist()
    assert [r["alert_time"] for r in coded.records()] == expected_time
    assert [m.event_id for m in coded] == ["b", "b", "a", "b"]
    part = coded.take(np.array([3, 0]))
    assert [m.alert_time for m in part] == [expected_time[3], expected_time[0]]
    assert coded.column("alert_time").tolist() == expected_time  # decoded once, kept
    assert coded.columns["event_id"].tolist() == ["b", "b", "a", "b"]


def test_pending_store_writes_keep_regions_as_parameters_and_batches_as_columns():
    """The pending-write record saved before each commit: an analytic region travels as its
    parameters (never rasterised: that cost seconds and tens of MB per circle), a pixel map
    as FITS, a match batch as its columns."""
    from astropy.time import Time

    from mmcross.app.staged_store import decode_writes, encode_writes
    from mmcross.model import shapes
    from mmcross.model.event import Event, EventKind

    circle = shapes.circle(10.0, -89.99, 0.05)  # small and at the pole: the costliest raster
    event = Event(event_id="swift:1", kind=EventKind.GRB, instrument="Swift",
                  trigger_time=Time(60000.0, format="mjd", scale="tai"), localization=circle)
    batch = MatchBatch.from_matches([make_match(i) for i in range(3)])
    payload = encode_writes([("event", event), ("matches", batch)])
    assert circle._pixels is None  # encoding did not rasterise it
    assert len(payload) < 10_000
    (_, again), (_, matches) = decode_writes(payload)
    assert again.localization.region == circle.region
    assert again.localization._pixels is None
    assert matches == batch.matches()

"""SkyIndex: revisions, staleness, duplicates, retraction and expiry."""

from __future__ import annotations

from astropy.time import Time

from mmcross.model.config import Config
from mmcross.model.event import Event, EventKind, NoticeAction
from mmcross.model.index import Change, SkyIndex


def _event(event_id="fermi-gbm:1", issued="2024-01-12T17:38:00", raw=b"a",
           action=NoticeAction.ADD, kind=EventKind.GRB, trigger="2024-01-12T17:37:00"):
    return Event(event_id=event_id, kind=kind, instrument="Fermi-GBM",
                 trigger_time=Time(trigger, scale="utc"), localization=None, action=action,
                 notice_time=Time(issued, scale="utc"), raw=raw)


def test_first_notice_adds_revision_one_and_updates_increment():
    index = SkyIndex(Config.load())
    change, e1 = index.apply(_event())
    assert change is Change.ADDED and e1.revision == 1
    change, e2 = index.apply(_event(issued="2024-01-12T17:40:00", raw=b"b"))
    assert change is Change.UPDATED and e2.revision == 2
    assert index.get("fermi-gbm:1").raw == b"b" and len(index) == 1


def test_notice_issued_before_the_live_revision_is_stale():
    index = SkyIndex(Config.load())
    index.apply(_event(issued="2024-01-12T17:40:00", raw=b"new"))
    change, _ = index.apply(_event(issued="2024-01-12T17:38:00", raw=b"old"))
    assert change is Change.STALE
    assert index.get("fermi-gbm:1").raw == b"new"


def test_identical_notice_is_a_duplicate_and_keeps_the_revision():
    index = SkyIndex(Config.load())
    index.apply(_event())
    change, live = index.apply(_event())
    assert change is Change.DUPLICATE and live.revision == 1


def test_retraction_removes_and_older_notices_stay_out():
    index = SkyIndex(Config.load())
    index.apply(_event())
    change, retraction = index.apply(
        _event(issued="2024-01-12T18:00:00", raw=b"r", action=NoticeAction.RETRACT))
    assert change is Change.RETRACTED and retraction.revision == 2
    assert "fermi-gbm:1" not in index
    change, _ = index.apply(_event(issued="2024-01-12T17:50:00", raw=b"late"))
    assert change is Change.STALE and "fermi-gbm:1" not in index


def test_events_expire_after_their_kind_window():
    config = Config.load()
    index = SkyIndex(config)
    index.apply(_event(event_id="grb", kind=EventKind.GRB))
    index.apply(_event(event_id="gw", kind=EventKind.GW))
    t0 = Time("2024-01-12T17:37:00", scale="utc").tai.mjd
    assert index.expire(t0 + config.time_window("grb").after - 1e-3) == []
    gone = index.expire(t0 + config.time_window("grb").after + 1e-3)
    assert [e.event_id for e in gone] == ["grb"]
    assert [e.event_id for e in index.live()] == ["gw"]


def test_revision_numbers_continue_from_the_store_after_restart():
    index = SkyIndex(Config.load(), latest_revision=lambda event_id: 4)
    _, event = index.apply(_event())
    assert event.revision == 5

"""catalogs.Store against SQLite (a temp file) and PostgreSQL (MMCROSS_TEST_POSTGRES_URL).

Every test taking ``store``/``url`` runs on both back ends; the PostgreSQL variant is marked
``postgres`` and skipped when MMCROSS_TEST_POSTGRES_URL is unset (failed under CI=true).
Start a server with ``eval "$(scripts/postgres_local.sh start)"``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time
from sqlalchemy import create_engine, func, select, text

import mmcross.catalogs.store as store_module
from mmcross.catalogs import Store
from mmcross.catalogs.models import Base, EventRevisionRow, EventRow, MatchRow
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import StoreError
from mmcross.model.event import Event, EventKind, NoticeAction
from mmcross.model.match import Match

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ENV = "MMCROSS_TEST_POSTGRES_URL"


def _drop_all(url: str) -> None:
    # lock_timeout: a connection a test forgot to close fails the test instead of hanging it
    engine = create_engine(url, connect_args={"options": "-c lock_timeout=20000"})
    try:
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    """A fresh, empty database URL on each back end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
        return
    pg = os.environ.get(PG_ENV)
    if not pg:
        message = (f"{PG_ENV} is not set: start a server with "
                   f'eval "$(scripts/postgres_local.sh start)"')
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    _drop_all(pg)
    yield pg
    _drop_all(pg)


@pytest.fixture
def store(url):
    s = Store(url)
    yield s
    s.close()


@pytest.fixture(scope="module")
def Localization():  # noqa: N802 - the class itself
    try:
        from mmcross.model.localization import Localization
    except ImportError as exc:
        message = f"mmcross.model.localization is not available yet: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return Localization


def make_localization(Localization, seed: int):
    """A normalised multi-order map: order-2 pixels, the first one split into order 3.

    PROBDENSITY is per steradian; sum(probdensity * pixel area) = 1.
    """
    rng = np.random.default_rng(seed)
    uniq = np.concatenate([4 * 4**3 + np.arange(4), 4 * 4**2 + np.arange(1, 192)])
    order = np.where(uniq >= 4 * 4**3, 3, 2)
    area_sr = 4 * np.pi / (12 * 4.0**order)
    density = rng.uniform(0.1, 1.0, uniq.size)
    density /= np.sum(density * area_sr)
    return Localization(uniq.astype(np.int64), density)


def make_event(event_id="lvk:S230518h", revision=1, localization=None, *,
               notice="2023-05-18T13:00:08.5", action=NoticeAction.ADD, **kw) -> Event:
    fields = dict(
        event_id=event_id, kind=EventKind.GW, instrument="LVK",
        trigger_time=Time("2023-05-18T12:59:08.167254", scale="utc"),
        localization=localization, revision=revision, serial=3, action=action,
        notice_type="PRELIMINARY", notice_time=Time(notice, scale="utc"),
        significance={"far": np.float64(1.6e-10), "p_astro": {"NSBH": 0.86, "Terrestrial": 0.14},
                      "snr": np.float32(12.5), "significant": True, "flags": [1, 2]},
        ra=None, dec=None, error_radius=None, containment=None,
        raw=b'{"superevent_id": "S230518h", "bytes": "\x00\xff"}', notice_format="json",
        source="gcn.notices.igwn.gwalert/0/42",
    )
    fields.update(kw)
    return Event(**fields)


def make_match(event_id="lvk:S230518h", revision=1, alert_id=1001, **kw) -> Match:
    fields = dict(
        event_id=event_id, event_revision=revision, event_kind="gw", instrument="LVK",
        event_time="2023-05-18T12:59:08.167Z", alert_id=alert_id, object_id=f"obj{alert_id}",
        ra=123.25, dec=-45.5, alert_time="2023-05-19T03:00:00.000Z", time_offset=0.584,
        credible_level=0.42, searched_area=310.5, prob_density=1.2e-3,
        distance_mean=250.0, distance_std=60.0, p_chance=0.03,
    )
    fields.update(kw)
    return Match(**fields)


def seconds_between(a: Time, b: Time) -> float:
    return abs(float((a - b).to_value("s")))


# -- events -------------------------------------------------------------------------------

def test_event_round_trip_keeps_fields_times_raw_bytes_and_skymap(url, Localization):
    loc = make_localization(Localization, seed=1)
    event = make_event(localization=loc, ra=10.5, dec=-20.25, error_radius=3.0,
                       containment=0.9)
    with Store(url) as s:
        assert s.save_event(event) == 1
    with Store(url) as s:  # a new process would see the same: reopen the database
        (loaded,) = s.load_live_events()
        with s.engine.connect() as conn:
            stored_fits = conn.execute(select(EventRevisionRow.localization)).scalar_one()
    assert loaded.event_id == event.event_id and loaded.revision == 1
    assert loaded.kind is EventKind.GW and loaded.instrument == "LVK"
    assert loaded.action is NoticeAction.ADD and loaded.serial == 3
    assert loaded.trigger_time.scale == "utc"
    assert seconds_between(loaded.trigger_time, event.trigger_time) < 1e-6
    assert seconds_between(loaded.notice_time, event.notice_time) < 1e-6
    assert loaded.trigger_mjd_tai == pytest.approx(event.trigger_time.tai.mjd, abs=1e-11)
    assert loaded.raw == event.raw and loaded.notice_format == "json"
    assert loaded.source == event.source and loaded.notice_type == "PRELIMINARY"
    assert (loaded.ra, loaded.dec, loaded.error_radius, loaded.containment) == (
        10.5, -20.25, 3.0, 0.9)
    assert loaded.significance == {
        "far": 1.6e-10, "p_astro": {"NSBH": 0.86, "Terrestrial": 0.14}, "snr": 12.5,
        "significant": True, "flags": [1, 2]}
    np.testing.assert_array_equal(loaded.localization.uniq, loc.uniq)
    np.testing.assert_array_equal(loaded.localization.probdensity, loc.probdensity)
    # The stored bytes are a multi-order FITS table an independent reader understands.
    table = Table.read(io.BytesIO(stored_fits), format="fits")
    assert sorted(np.asarray(table["UNIQ"]).tolist()) == sorted(loc.uniq.tolist())


def test_real_lvk_multiorder_map_with_distance_survives_the_store(store, Localization,
                                                                  shared_file):
    path = shared_file("skymaps/fink-mm/S230518h_initial.multiorder.fits")
    loc = Localization.from_fits(path)
    store.save_event(make_event(localization=loc))
    (loaded,) = store.load_live_events()
    got = loaded.localization
    for name in ("uniq", "probdensity", "distmu", "distsigma", "distnorm"):
        np.testing.assert_array_equal(getattr(got, name), getattr(loc, name))
    # and against the file itself, read independently by astropy (order-free, by UNIQ)
    table = Table.read(path, format="fits")
    order = np.argsort(np.asarray(table["UNIQ"]))
    mine = np.argsort(got.uniq)
    np.testing.assert_array_equal(got.uniq[mine], np.asarray(table["UNIQ"])[order])
    for name in ("DISTMU", "DISTSIGMA", "DISTNORM"):
        np.testing.assert_allclose(getattr(got, name.lower())[mine],
                                   np.asarray(table[name], float)[order], rtol=1e-12)
    np.testing.assert_allclose(got.probdensity[mine],
                               np.asarray(table["PROBDENSITY"], float)[order], rtol=1e-6)


def test_revisions_latest_revision_and_event_summary(store, Localization):
    assert store.latest_revision("lvk:S230518h") == 0
    loc1, loc2 = make_localization(Localization, 1), make_localization(Localization, 2)
    store.save_event(make_event(revision=1, localization=loc1, notice="2023-05-18T13:00:00"))
    store.save_event(make_event(revision=2, localization=loc2, notice="2023-05-18T14:00:00",
                                notice_type="INITIAL"))
    assert store.latest_revision("lvk:S230518h") == 2
    (live,) = store.load_live_events()
    assert live.revision == 2 and live.notice_type == "INITIAL"
    np.testing.assert_array_equal(live.localization.probdensity, loc2.probdensity)
    # revision 0 means "next": the store assigns latest + 1
    assert store.save_event(make_event(revision=0, localization=loc1,
                                       notice="2023-05-18T15:00:00")) == 3
    (summary,) = store.events()
    assert summary["revision"] == 3 and summary["revisions"] == 3
    assert summary["first_notice_time"].startswith("2023-05-18T13:00:00")
    assert summary["last_notice_time"].startswith("2023-05-18T15:00:00")
    assert summary["trigger_time"].startswith("2023-05-18T12:59:08.167254")
    assert summary["retracted"] is False


def test_retracted_events_are_not_loaded_as_live(store, Localization):
    loc = make_localization(Localization, 3)
    store.save_event(make_event("lvk:S1", 1, loc, notice="2023-05-18T13:00:00"))
    store.save_event(make_event("lvk:S2", 1, loc, notice="2023-05-18T13:10:00"))
    store.save_event(make_event("lvk:S2", 2, None, notice="2023-05-18T16:00:00",
                                action=NoticeAction.RETRACT, notice_type="RETRACTION"))
    assert [e.event_id for e in store.load_live_events()] == ["lvk:S1"]
    assert [e["event_id"] for e in store.events(include_retracted=False)] == ["lvk:S1"]
    assert {e["event_id"]: e["retracted"] for e in store.events()} == {
        "lvk:S1": False, "lvk:S2": True}
    assert store.latest_revision("lvk:S2") == 2
    # As known before the retraction arrived, S2 was live at revision 1.
    before = Time("2023-05-18T15:00:00", scale="utc").tai.mjd
    assert [(e.event_id, e.revision) for e in store.load_live_events(before)] == [
        ("lvk:S1", 1), ("lvk:S2", 1)]
    early = Time("2023-05-18T13:05:00", scale="utc").tai.mjd
    assert [e.event_id for e in store.load_live_events(early)] == ["lvk:S1"]


# -- matches ------------------------------------------------------------------------------

def test_save_matches_is_idempotent_and_returns_only_new(store):
    first = [make_match(alert_id=a) for a in (1, 2, 3)]
    assert store.save_matches(first) == first
    again = [make_match(alert_id=2), make_match(alert_id=4, distance_mean=None,
                                                distance_std=None),
             make_match(alert_id=4), make_match(revision=2, alert_id=1)]
    new = store.save_matches(again)
    assert [(m.event_revision, m.alert_id) for m in new] == [(1, 4), (2, 1)]
    assert store.save_matches(again) == []
    stored = store.matches("lvk:S230518h")
    assert [(m.event_revision, m.alert_id) for m in stored] == [
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 1)]
    assert stored[3].distance_mean is None and stored[0] == first[0]


def test_save_matches_accepts_numpy_scalars(store):
    m = make_match(alert_id=np.int64(2**62 + 7), ra=np.float64(1.5), dec=np.float32(-2.5),
                   event_revision=np.int32(1))
    (new,) = store.save_matches([m])
    (stored,) = store.matches()
    assert stored.alert_id == 2**62 + 7 and stored.dec == -2.5
    assert isinstance(stored.alert_id, int)


def test_revoke_matches_marks_them_retracted_and_returns_them(store):
    store.save_matches([make_match(alert_id=a) for a in (1, 2, 3)]
                       + [make_match("fermi:1", alert_id=1)])
    revoked = store.revoke_matches("lvk:S230518h", [2, 99])
    assert [(m.alert_id, m.retracted) for m in revoked] == [(2, True)]
    assert [m.alert_id for m in store.matches("lvk:S230518h", include_retracted=False)] == [1, 3]
    assert store.revoke_matches("lvk:S230518h", [2]) == []
    rest = store.revoke_matches("lvk:S230518h")
    assert [(m.alert_id, m.retracted) for m in rest] == [(1, True), (3, True)]
    assert store.matches("lvk:S230518h", include_retracted=False) == []
    assert len(store.matches("lvk:S230518h")) == 3
    assert [m.retracted for m in store.matches("fermi:1")] == [False]
    summary = {e["event_id"]: e for e in store.events()}
    assert summary == {}  # matches alone do not create events


def test_pending_writes_are_kept_per_owner_until_dropped(store):
    assert store.pending("g.a") is None
    store.save_pending("g.a", "t1", b"\x00one")
    store.save_pending("g.b", "t9", b"other")
    store.save_pending("g.a", "t2", b"\x00two")  # a newer transaction replaces the older
    assert store.pending("g.a") == ("t2", b"\x00two")
    store.drop_pending("g.a")
    store.drop_pending("g.a")  # dropping twice is harmless
    assert store.pending("g.a") is None
    assert store.pending("g.b") == ("t9", b"other")


def test_alert_history_round_trip_and_prune(store):
    n = 2000
    rng = np.random.default_rng(5)
    batch = AlertBatch(np.arange(n, dtype=np.int64) + 10**15,
                       np.array([str(10**17 + i) for i in range(n)], dtype=object),
                       rng.uniform(0, 360, n), rng.uniform(-90, 90, n),
                       60000.0 + rng.uniform(0, 10, n), is_new=rng.random(n) < 0.3,
                       mag=np.where(rng.random(n) < 0.2, np.nan, rng.uniform(16, 25, n)))
    store.save_alert_history(batch)
    store.save_alert_history(batch.take(np.arange(0, n, 2)))  # duplicates are skipped
    loaded = store.load_alert_history(0.0)
    order = np.argsort(batch.mjd_tai, kind="stable")
    for name in ("alert_id", "object_id", "ra", "dec", "mjd_tai", "is_new", "mag"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(batch, name)[order])
    cut = 60005.0
    assert len(store.load_alert_history(cut)) == int(np.sum(batch.mjd_tai >= cut))
    assert store.prune_alert_history(cut) == int(np.sum(batch.mjd_tai < cut))
    assert float(store.load_alert_history(0.0).mjd_tai.min()) >= cut


# -- atomicity ----------------------------------------------------------------------------

def _count(url: str, table) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def test_failure_between_writes_of_save_event_leaves_nothing(store, url, monkeypatch):
    store.save_event(make_event("lvk:S1", 1, None, notice="2023-05-18T13:00:00"))

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the events row was written")

    monkeypatch.setattr(store_module, "_revision_row", crash)
    with pytest.raises(RuntimeError):
        store.save_event(make_event("lvk:S2", 1, None))  # new event
    with pytest.raises(RuntimeError):
        store.save_event(make_event("lvk:S1", 2, None, notice="2023-05-18T20:00:00",
                                    action=NoticeAction.RETRACT))
    assert _count(url, EventRow) == 1 and _count(url, EventRevisionRow) == 1
    (summary,) = store.events()
    assert summary["revision"] == 1 and summary["retracted"] is False
    assert summary["last_notice_time"].startswith("2023-05-18T13:00:00")
    assert store.latest_revision("lvk:S2") == 0


def test_database_error_mid_batch_saves_no_match(store, url, monkeypatch):
    real = store_module._match_record_values

    def second_breaks(m):
        values = real(m)
        if values["alert_id"] == 2:
            values["event_kind"] = None  # NOT NULL violation inside the INSERT
        return values

    monkeypatch.setattr(store_module, "_match_record_values", second_breaks)
    with pytest.raises(StoreError, match="saving 3 matches"):
        store.save_matches([make_match(alert_id=a) for a in (1, 2, 3)])
    assert _count(url, MatchRow) == 0
    monkeypatch.setattr(store_module, "_match_record_values", real)
    assert len(store.save_matches([make_match(alert_id=a) for a in (1, 2, 3)])) == 3


def test_process_killed_mid_transaction_leaves_nothing(url):
    with Store(url) as s:
        s.save_event(make_event("lvk:S1", 1, None))
    script = textwrap.dedent(f"""
        import os
        from astropy.time import Time
        import mmcross.catalogs.store as m
        from mmcross.model.event import Event, EventKind

        def die(*args, **kwargs):
            os._exit(17)  # no rollback, no close: like a kill -9 mid-transaction

        store = m.Store({url!r})
        m._revision_row = die
        store.save_event(Event("lvk:S2", EventKind.GW, "LVK", Time.now(), None, revision=1))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 17, proc.stderr.decode()
    with Store(url) as s:
        assert [e["event_id"] for e in s.events()] == ["lvk:S1"]
        assert s.latest_revision("lvk:S2") == 0
        s.save_event(make_event("lvk:S2", 1, None))  # nothing is left locked
        assert s.latest_revision("lvk:S2") == 1


# -- configuration and errors -------------------------------------------------------------

def test_sqlite_uses_wal_and_foreign_keys(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'x.sqlite'}") as s, s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


@pytest.mark.parametrize("bad", [
    "nosuchdialect://user:s3cret@host/db",
    "sqlite:////nonexistent-mmcross-dir/sub/store.sqlite",
    "postgresql+psycopg2://user:s3cret@127.0.0.1:1/db",
    "not a url at all",
])
def test_bad_url_raises_store_error_with_masked_password(bad):
    with pytest.raises(StoreError) as info:
        Store(bad)
    message = str(info.value)
    assert "s3cret" not in message
    assert "cannot open the store" in message
    if "s3cret" in bad:
        assert "***" in message


def test_store_error_names_the_operation_and_masks_the_password(url, monkeypatch):
    with Store(url) as s:
        s.close()
        monkeypatch.setattr(s, "engine", create_engine(
            "postgresql+psycopg2://user:s3cret@127.0.0.1:1/db"))
        s._sessions.configure(bind=s.engine)
        with pytest.raises(StoreError, match="reading matches") as info:
            s.matches()
    assert "s3cret" not in str(info.value)


def test_match_round_trip_equals_the_dataclass(store):
    m = make_match(alert_id=7)
    store.save_matches([m])
    assert store.matches() == [m]
    assert store.revoke_matches(m.event_id) == [replace(m, retracted=True)]


def test_load_event_returns_latest_revision_and_latest_map(store, Localization):
    """load_event: the newest revision; with_localization: the newest that has a sky map."""
    loc = make_localization(Localization, 3)
    store.save_event(make_event("lvk:S1", 1, loc))
    store.save_event(make_event("lvk:S1", 2, None, notice="2023-05-18T14:00:00",
                                action=NoticeAction.RETRACT, raw=b"r"))
    latest = store.load_event("lvk:S1")
    assert latest.revision == 2 and latest.retracted and latest.localization is None
    with_map = store.load_event("lvk:S1", with_localization=True)
    assert with_map.revision == 1
    np.testing.assert_array_equal(with_map.localization.uniq, loc.uniq)
    assert store.load_event("nope") is None


# -- analytic regions ---------------------------------------------------------------------

def test_analytic_region_is_stored_as_its_parameters_and_restored_exactly(url):
    from mmcross.model import shapes

    loc = shapes.box(273.48, 22.16, 1.5, 0.8, 0.6, 1.1, 0.9)
    event = make_event("icecube:1", localization=loc, kind=EventKind.NEUTRINO,
                       instrument="IceCube")
    with Store(url) as s:
        s.save_event(event)
        with s.engine.connect() as conn:
            fits_blob, region = conn.execute(
                select(EventRevisionRow.localization, EventRevisionRow.region)).one()
        loaded = s.load_event("icecube:1", with_localization=True)
    assert fits_blob is None  # no pixels written
    assert region["shape"] == "box" and region["east"] == loc.region.east
    assert loaded.localization.region == loc.region
    ra, dec = loc.sample(50, np.random.default_rng(1))
    np.testing.assert_array_equal(loaded.localization.credible_level_at(ra, dec),
                                  loc.credible_level_at(ra, dec))


def test_a_store_from_before_regions_opens_and_its_fits_circles_still_load(tmp_path, caplog):
    from mmcross.model import shapes

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with Store(url) as s:
        circle = shapes.circle(10.0, 20.0, 2.0, 0.9, tolerance=3e-2)
        s.save_event(make_event("swift:1", localization=circle.pixels()))  # a FITS blob
    engine = create_engine(url)
    with engine.begin() as conn:  # as stores written before the region column
        conn.execute(text("ALTER TABLE event_revisions DROP COLUMN region"))
    engine.dispose()
    with caplog.at_level("INFO", logger="mmcross.catalogs.store"), Store(url) as s:
        live = s.load_live_events()
    assert "adding column event_revisions.region" in caplog.text
    (event,) = live
    assert event.localization.region is None
    assert event.localization.area(0.9) == pytest.approx(circle.area(0.9), rel=0.03)


def test_a_store_from_before_voevent_identity_opens_and_its_matches_still_load(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with Store(url) as s:
        s.save_matches([make_match(alert_id=1), make_match(alert_id=2, notice_ivorn="ivo://x/y#z")])
    engine = create_engine(url)
    with engine.begin() as conn:  # as stores written before the two columns
        conn.execute(text("ALTER TABLE matches DROP COLUMN notice_ivorn"))
        conn.execute(text("ALTER TABLE matches DROP COLUMN supersedes_revision"))
    engine.dispose()
    with caplog.at_level("INFO", logger="mmcross.catalogs.store"), Store(url) as s:
        old = s.matches()
        s.save_matches([make_match(revision=2, alert_id=1, notice_ivorn="ivo://x/y#w",
                                   supersedes_revision=1)])
        new = s.matches()[-1]
    assert "adding column matches.notice_ivorn" in caplog.text
    assert [m.notice_ivorn for m in old] == ["", ""]
    assert all(m.supersedes_revision is None for m in old)
    assert (new.notice_ivorn, new.supersedes_revision) == ("ivo://x/y#w", 1)


def test_a_voevent_notice_keeps_its_ivorn_across_a_restart(tmp_path, shared_file):
    from mmcross.listeners import read_notice_file

    path = shared_file("gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml")
    event = read_notice_file(path, tolerance=1e-2)
    assert event.ivorn == "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_1208389-262"
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with Store(url) as s:
        s.save_event(event)
    with Store(url) as s:
        (restored,) = s.load_live_events()
    assert restored.ivorn == event.ivorn

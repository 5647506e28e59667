"""`mmcross serve`: every page and API route with its filters (FastAPI TestClient), against a
store filled by the engine from real notices (tests/helpers.py: build_web_store), checked
against the store's own API, the notices, ligo.skymap and astropy."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import warnings

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from lxml import etree, html

from mmcross.catalogs import Store
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError, StoreError
from tests.helpers import DEADLINE, REPO, WEB_NOTICES, build_web_store, make_match

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from mmcross.app.web import create_app  # noqa: E402

OBJECT_URL = "https://example.org/rubin/{object_id}?from=mmcross"
CONFIG = {"web": {"object_url": OBJECT_URL, "refresh_seconds": 0.5}}
GW_MAP = "skymaps/fink-mm/S230518h_initial.multiorder.fits"


@pytest.fixture(scope="module")
def web_store(tmp_path_factory, shared_file):
    path = tmp_path_factory.mktemp("web") / "store.sqlite"
    url = f"sqlite:///{path}"
    return url, build_web_store(url, shared_file)


@pytest.fixture(scope="module")
def client(web_store):
    with TestClient(create_app(web_store[0], Config.load(overrides=CONFIG))) as c:
        yield c


def _copy(url: str, tmp_path) -> str:
    """A copy of the SQLite store at ``url`` (sqlite3's backup), for tests that write."""
    target = tmp_path / "copy.sqlite"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(target) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


def _current(url: str) -> list:
    """The store's matches (Store.matches), keeping per (event, alert) the latest revision."""
    with Store(url) as store:
        records = store.matches(include_retracted=True)
    latest = {}
    for m in records:
        key = (m.event_id, m.alert_id)
        if key not in latest or m.event_revision > latest[key].event_revision:
            latest[key] = m
    return list(latest.values())


def _alert_mjd_tai(m) -> float:
    return float(Time(m.alert_time.rstrip("Z"), format="isot", scale="utc").tai.mjd)


def _greedy_area90(path) -> float:
    """90% credible area (deg^2) of a multi-order FITS map: pixels by decreasing density
    until their probability reaches 0.9 (ligo.skymap's greedy recipe, with healpy)."""
    table = Table.read(path)
    uniq = np.asarray(table["UNIQ"], np.int64)
    order = (np.log2(uniq).astype(int) - 2) // 2
    area = np.array([hp.nside2pixarea(1 << int(o)) for o in order])  # sr
    density = np.asarray(table["PROBDENSITY"], float)
    rank = np.argsort(density)[::-1]
    prob = np.cumsum((density * area)[rank])
    n = int(np.searchsorted(prob, 0.9 * prob[-1])) + 1
    return float(area[rank][:n].sum() * (180 / np.pi) ** 2)


def _keys(rows) -> set:
    return {(r["event_id"], r["alert_id"]) for r in rows}


# -- /api/events -----------------------------------------------------------------------------

def test_api_events_have_status_far_area_and_distance_from_the_notices(client, shared_file):
    rows = client.get("/api/events").json()
    by_id = {r["event_id"]: r for r in rows}
    assert sorted(r["status"] for r in rows) == sorted(f for _, f in WEB_NOTICES if f)
    assert by_id["lvk:S240115k"]["status"] == "updated"
    assert by_id["lvk:S240115k"]["revisions"] == 2
    assert by_id["swift:1208389"]["status"] == "retracted"
    assert by_id["fermi-gbm:726773850"]["status"] == "live"
    assert by_id["lvk:S230518h"]["status"] == "expired"
    assert by_id["icecube:136918_45252263"]["status"] == "expired"
    triggers = [r["trigger_mjd_tai"] for r in rows]
    assert triggers == sorted(triggers, reverse=True)

    gw = by_id["lvk:S230518h"]
    notice = json.loads(shared_file("gcn/json/fink-mm/S230518h-initial.json").read_text())
    assert gw["far"] == pytest.approx(notice["event"]["far"], rel=1e-12)
    assert gw["trigger_time"].startswith(notice["event"]["time"].rstrip("Z"))
    header = fits.getheader(shared_file(GW_MAP), 1)
    assert gw["distance_mean"] == pytest.approx(header["DISTMEAN"], rel=1e-9)
    assert gw["distance_std"] == pytest.approx(header["DISTSTD"], rel=1e-9)
    assert gw["area90"] == pytest.approx(_greedy_area90(shared_file(GW_MAP)), rel=1e-4)
    # a circle: 90% area of a Swift BAT 90%-containment radius r is pi r^2 (small cap)
    swift = by_id["swift:1208389"]
    r = client.get("/api/events/swift:1208389").json()["revision_history"][0]["error_radius"]
    assert swift["area90"] == pytest.approx(2 * np.pi * (1 - np.cos(np.radians(r)))
                                            * (180 / np.pi) ** 2, rel=2e-2)
    assert swift["distance_mean"] is None and swift["far"] is None
    # IceCube gives its FAR per year (VOEvent Param FAR, unit yr^-1): the API says Hz
    voevent = etree.parse(str(shared_file(WEB_NOTICES[0][0])))
    per_year = float(voevent.xpath("//Param[@name='FAR']/@value")[0])
    assert voevent.xpath("//Param[@name='FAR']/@unit")[0] == "yr^-1"
    assert by_id["icecube:136918_45252263"]["far"] == pytest.approx(
        per_year / (365.25 * 86400), rel=1e-12)


@pytest.mark.parametrize("status", ["live", "updated", "retracted", "expired"])
def test_api_events_filter_by_status(client, status):
    every = client.get("/api/events").json()
    rows = client.get("/api/events", params={"status": status}).json()
    assert rows and [r["event_id"] for r in rows] == [r["event_id"] for r in every
                                                      if r["status"] == status]


def test_api_events_filter_by_kind_instrument_time_and_limit(client):
    every = client.get("/api/events").json()
    gw = client.get("/api/events", params={"kind": "gw"}).json()
    assert {r["event_id"] for r in gw} == {"lvk:S230518h", "lvk:S240115k"}
    gbm = client.get("/api/events", params={"instrument": "Fermi-GBM"}).json()
    assert [r["event_id"] for r in gbm] == ["fermi-gbm:726773850"]
    # since/until bound the trigger time; ISO UTC and MJD TAI say the same
    iso = {"since": "2023-01-01T00:00:00Z", "until": "2024-01-13"}
    mjd = {k: str(Time(v.rstrip("Z"), scale="utc").tai.mjd) for k, v in iso.items()}
    by_iso = client.get("/api/events", params=iso).json()
    assert by_iso == client.get("/api/events", params=mjd).json()
    lo, hi = float(mjd["since"]), float(mjd["until"])
    assert [r["event_id"] for r in by_iso] == [r["event_id"] for r in every
                                               if lo <= r["trigger_mjd_tai"] <= hi]
    assert {r["event_id"] for r in by_iso} == {"lvk:S230518h", "fermi-gbm:726773850",
                                               "swift:1208389"}
    assert client.get("/api/events", params={"limit": 2}).json() == every[:2]
    for bad in ({"since": "yesterday"}, {"until": "nan"}, {"limit": 0}, {"status": "gone"}):
        assert client.get("/api/events", params=bad).status_code == 422


def test_api_event_has_its_revisions(client):
    detail = client.get("/api/events/lvk:S240115k").json()
    history = detail["revision_history"]
    assert [h["revision"] for h in history] == [1, 2]
    assert [h["notice_time"][:19] for h in history] == ["2024-01-15T09:30:04",
                                                        "2024-01-15T09:35:05"]
    assert all(h["notice_type"] == "PRELIMINARY" for h in history)
    swift = client.get("/api/events/swift:1208389").json()["revision_history"]
    assert [h["action"] for h in swift] == ["add", "retract"]
    assert swift[0]["ra"] == pytest.approx(270.6441, abs=1e-3)
    reply = client.get("/api/events/lvk:S000000x")
    assert reply.status_code == 404 and "not in the store" in reply.json()["detail"]


# -- /api/matches ----------------------------------------------------------------------------

def test_api_matches_are_the_latest_record_of_each_event_and_alert(client, web_store):
    url, injected = web_store
    current = _current(url)
    rows = client.get("/api/matches", params={"limit": 10_000}).json()
    assert _keys(rows) == {(m.event_id, m.alert_id) for m in current if not m.retracted}
    with_revoked = client.get("/api/matches", params={"limit": 10_000,
                                                      "include_revoked": "true"}).json()
    assert _keys(with_revoked) == {(m.event_id, m.alert_id) for m in current}
    by_key = {(m.event_id, m.alert_id): m for m in current}
    for row in with_revoked:
        record = by_key[(row["event_id"], row["alert_id"])].to_record()
        assert {k: row[k] for k in record} == record
        assert row["object_url"] == OBJECT_URL.format(object_id=row["object_id"])
    # every injected counterpart of a live-matched event is there; the retracted one's revoked
    for event_id, ids in injected.items():
        mine = client.get("/api/matches", params={"event_id": event_id,
                                                  "include_revoked": "true"}).json()
        found = {r["alert_id"]: r for r in mine}
        latest_ids = ids[-4:]  # counterparts of the latest revision's map
        assert set(latest_ids) <= set(found), event_id
        revoked = {a for a, r in found.items() if r["retracted"]}
        assert (revoked == set(found)) if event_id == "swift:1208389" else not revoked
        counts = client.get(f"/api/events/{event_id}").json()
        assert (counts["matches"], counts["matches_revoked"]) == (len(found) - len(revoked),
                                                                  len(revoked))


def test_api_matches_filters(client, web_store):
    url, _ = web_store
    current = [m for m in _current(url) if not m.retracted]
    get = client.get

    def ask(**params):
        return _keys(get("/api/matches", params={"limit": 10_000, **params}).json())

    def want(pred):
        return {(m.event_id, m.alert_id) for m in current if pred(m)}

    assert ask(event_id="lvk:S230518h") == want(lambda m: m.event_id == "lvk:S230518h")
    assert ask(kind="grb") == want(lambda m: m.event_kind == "grb")
    assert ask(instrument="IceCube") == want(lambda m: m.instrument == "IceCube")
    assert ask(max_credible_level=0.5) == want(lambda m: m.credible_level <= 0.5)
    assert ask(max_p_chance=0.01) == want(lambda m: m.p_chance <= 0.01)
    assert ask(event_id="lvk:S240115k", max_credible_level=0.7, max_p_chance=0.5) == want(
        lambda m: m.event_id == "lvk:S240115k" and m.credible_level <= 0.7
        and m.p_chance <= 0.5)
    t = sorted(_alert_mjd_tai(m) for m in current)
    lo, hi = t[len(t) // 4], t[3 * len(t) // 4]
    # alert times from their ISO UTC strings (astropy), the API from trigger + offset
    inside = want(lambda m: lo - 1e-6 <= _alert_mjd_tai(m) <= hi + 1e-6)
    got = ask(since=str(lo - 1e-6), until=str(hi + 1e-6))
    assert got == inside and 0 < len(got) < len(current)
    iso = Time(lo - 1e-6, format="mjd", scale="tai").utc.isot + "Z"
    assert ask(since=iso) == want(lambda m: _alert_mjd_tai(m) >= lo - 1e-6)
    assert len(get("/api/matches", params={"limit": 3}).json()) == 3
    for bad in ({"max_credible_level": 1.5}, {"max_p_chance": -1}, {"since": "soon"},
                {"limit": 10_001}):
        assert get("/api/matches", params=bad).status_code == 422


# -- pages -----------------------------------------------------------------------------------

def test_index_lists_every_event_with_its_status(client):
    reply = client.get("/")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    doc = html.fromstring(reply.text)
    rows = doc.xpath("//table[@id='events']/tbody/tr")
    api = client.get("/api/events").json()
    assert [r.get("data-event-id") for r in rows] == [e["event_id"] for e in api]
    for row, event in zip(rows, api, strict=True):
        cells = [c.text_content().strip() for c in row.xpath("td")]
        assert cells[0] == event["event_id"] and cells[-1] == event["status"]
        assert row.xpath(".//a/@href")[0] == f"/events/{event['event_id']}"
    gw = next(r for r in rows if r.get("data-event-id") == "lvk:S230518h")
    assert "FAR 3.22e-10 Hz (1 per 98.5 yr)" in gw.text_content()
    assert "NSBH 0.86" in gw.text_content()  # the notice's most probable class
    icecube = next(r for r in rows if r.get("data-event-id") == "icecube:136918_45252263")
    assert "1 per 0.533 yr" in icecube.text_content()  # FAR 1.8772 per year
    assert "\u00b1" in gw.text_content()  # distance mean ± std


@pytest.mark.parametrize("sort,attr", [("credible_level", "data-credible-level"),
                                       ("p_chance", "data-p-chance"),
                                       ("time_offset", "data-time-offset"),
                                       ("distance", "data-distance")])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_event_page_sorts_counterparts(client, sort, attr, order):
    reply = client.get("/events/lvk:S230518h", params={"sort": sort, "order": order})
    assert reply.status_code == 200
    rows = html.fromstring(reply.text).xpath("//table[@id='counterparts']/tbody/tr")
    values = [float(r.get(attr)) for r in rows]
    assert len(values) >= 4
    assert values == sorted(values, reverse=order == "desc")
    api = client.get("/api/matches", params={"event_id": "lvk:S230518h"}).json()
    key = "distance_mean" if sort == "distance" else sort
    assert values == sorted((m[key] for m in api), reverse=order == "desc")


def test_event_page_shows_counterparts_revisions_and_links(client, web_store):
    _, injected = web_store
    reply = client.get("/events/lvk:S240115k")
    doc = html.fromstring(reply.text)
    rows = doc.xpath("//table[@id='counterparts']/tbody/tr")
    shown = {int(r.get("data-alert-id")): r for r in rows}
    assert set(injected["lvk:S240115k"][-4:]) <= set(shown)
    for alert_id, row in shown.items():
        link = row.xpath(".//a/@href")[0]
        assert link == OBJECT_URL.format(object_id=row.get("data-object-id"))
        assert row.get("data-object-id") == str(alert_id + 9_000_000_000)
    assert [r.get("data-revision") for r in doc.xpath("//table[@id='revisions']/tbody/tr")] \
        == ["1", "2"]
    img = doc.xpath("//img[@id='skymap']")[0]
    assert img.get("src").startswith("/events/lvk:S240115k/skymap.png?v=")
    # the retracted event: revoked matches only with ?revoked=true
    swift = html.fromstring(client.get("/events/swift:1208389").text)
    assert swift.xpath("//table[@id='counterparts']/tbody/tr[@data-alert-id]") == []
    swift = html.fromstring(client.get("/events/swift:1208389?revoked=true").text)
    revoked = swift.xpath("//table[@id='counterparts']/tbody/tr[@data-alert-id]")
    assert {int(r.get("data-alert-id")) for r in revoked} >= set(injected["swift:1208389"])
    assert all(r.get("class") == "revoked" for r in revoked)
    assert client.get("/events/nothing:here").status_code == 404


def test_skymap_png_is_drawn_once_per_state(client):
    from PIL import Image

    first = client.get("/events/lvk:S230518h/skymap.png")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(first.content)).convert("L"))
    assert image.shape == (720, 1600)
    assert image.min() < 100 and (image < 250).mean() > 0.05  # drawn, not blank
    again = client.get("/events/lvk:S230518h/skymap.png")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert client.get("/events/nothing:here/skymap.png").status_code == 404


def test_new_matches_change_the_polled_table_and_the_figure(web_store, tmp_path):
    url = _copy(web_store[0], tmp_path)
    with TestClient(create_app(url, Config.load(overrides=CONFIG))) as c:
        path = "/events/lvk:S230518h/counterparts"
        before = html.fromstring(c.get(path).text)
        etag = c.get("/events/lvk:S230518h/skymap.png").headers["etag"]
        new = make_match(1, event_id="lvk:S230518h", event_revision=1, alert_id=777,
                         object_id="rubin-777", credible_level=0.3)
        with Store(url) as store:
            store.save_matches([new])
        after = html.fromstring(c.get(path).text)
        assert after.get("data-fingerprint") != before.get("data-fingerprint")
        ids = after.xpath("//tr/@data-object-id")
        assert "rubin-777" in ids and "rubin-777" not in before.xpath("//tr/@data-object-id")
        assert c.get("/events/lvk:S230518h/skymap.png").headers["etag"] != etag


def test_an_event_id_with_slash_space_and_hash_has_its_pages(web_store, tmp_path):
    from dataclasses import replace
    from urllib.parse import quote

    url = _copy(web_store[0], tmp_path)
    odd = "gcn:GRB 230220A/b#2"
    with Store(url) as store:
        event = store.load_event("swift:1208389", with_localization=True)
        store.save_event(replace(event, event_id=odd, revision=0))
        store.save_matches([make_match(2, event_id=odd, event_revision=1, alert_id=4242,
                                       object_id="rubin-4242", ra=event.ra, dec=event.dec)])
    with TestClient(create_app(url, Config.load(overrides=CONFIG))) as c:
        href = html.fromstring(c.get("/").text).xpath(
            f"//tr[@data-event-id='{odd}']//a/@href")[0]
        assert href == f"/events/{quote(odd, safe=':@/')}"
        page = html.fromstring(c.get(href).text)
        assert page.xpath("//h1")[0].text.strip() == odd
        assert page.xpath("//tr/@data-object-id") == ["rubin-4242"]
        assert c.get(href + "/counterparts").status_code == 200
        assert c.get(href + "/skymap.png").headers["content-type"] == "image/png"
        assert c.get(f"/api/events/{quote(odd, safe=':/')}").json()["event_id"] == odd


# -- read-only, secrets, configuration -------------------------------------------------------

def test_every_route_only_reads(client, web_store):
    methods = {m for route in client.app.routes for m in getattr(route, "methods", ())}
    assert methods <= {"GET", "HEAD"}
    assert client.post("/api/events").status_code == 405
    catalog = client.app.state.catalog
    with pytest.raises(Exception, match="readonly"), catalog.store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM matches")


def test_a_missing_store_is_not_created(tmp_path):
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(StoreError):
        create_app(f"sqlite:///{missing}", Config.load())
    assert not missing.exists()


def test_an_older_store_is_not_migrated_by_the_web_app(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    Store(url).close()
    listing = "SELECT name FROM sqlite_master WHERE type='table'"
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        extra = sorted({r[0] for r in db.execute(listing)}
                       - {"events", "event_revisions", "matches"})[0]
        db.execute(f"DROP TABLE {extra}")  # as written by an mmcross before that table
    with pytest.raises(StoreError, match="open it once for writing"):
        create_app(url, Config.load())
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        tables = {r[0] for r in db.execute(listing)}
    assert extra not in tables and "matches" in tables


def test_object_url_must_name_the_object(web_store):
    with pytest.raises(ConfigError, match="object_id"):
        create_app(web_store[0], Config.load(overrides={"web": {"object_url": "https://x/"}}))


def _drop_all(url: str) -> None:
    from sqlalchemy import create_engine

    from mmcross.catalogs.models import Base

    engine = create_engine(url, connect_args={"options": "-c lock_timeout=20000"})
    try:
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_store_is_read_only_and_its_password_masked(shared_file):
    url = os.environ.get("MMCROSS_TEST_POSTGRES_URL")
    if not url:
        message = "MMCROSS_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    _drop_all(url)
    try:
        build_web_store(url, shared_file, n_background=20, n_inject=1)
        with TestClient(create_app(url, Config.load(overrides=CONFIG))) as c:
            page = c.get("/").text
            assert "lvk:S230518h" in page
            if password:
                assert password not in page and "***" in page
            with pytest.raises(Exception, match="read-only"), \
                    c.app.state.catalog.store.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM matches")
    finally:
        _drop_all(url)


def test_listen_serves_the_web_page_beside_the_service(tmp_path):
    """`mmcross listen --serve 0` (embedded mode) answers on the printed URL."""
    import urllib.request

    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmcross", "-q", "listen", "--db", db, "--spool",
         str(tmp_path / "spool"), "--serve", "0"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(DEADLINE)
    try:
        line = first[0] if first else ""
        assert line.startswith("web page and JSON API: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        with urllib.request.urlopen(url + "api/events", timeout=DEADLINE) as reply:
            assert reply.status == 200 and json.load(reply) == []
    finally:
        proc.terminate()
        proc.wait(DEADLINE)

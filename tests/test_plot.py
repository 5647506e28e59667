"""``mmcross plot``: the real S230518h sky map with synthetic matches from a SQLite store.

The PNG is checked as a file (signature and IHDR read with ``struct``) and as a picture: the
marker colours are found where healpy's Mollweide projector (all-sky panel) and the zenithal
equal-area formula on astropy separations/position angles (zoom panel) put the alerts.
"""

from __future__ import annotations

import math
import struct
from dataclasses import replace

import healpy as hp
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time
from PIL import Image

from mmcross.app import cli_observe
from mmcross.app.plot import MATCH_COLOR, REVOKED_COLOR, load_event, plot_stored_event
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.errors import MmcrossError
from mmcross.model.event import Event, NoticeAction
from mmcross.model.match import Match

NOTICE = "gcn/json/fink-mm/S230518h-initial.json"
EVENT_ID = "lvk:S230518h"


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)


@pytest.fixture(scope="module")
def event(shared_file) -> Event:
    return read_notice_file(shared_file(NOTICE))


def _matches(event: Event) -> list[Match]:
    """Three matches inside the 90% region, far apart on the sky (first two live, last
    revoked) plus one outside the map's support region."""
    loc = event.localization
    levels = loc.credible_levels()
    from mmcross.model.localization import uniq_to_order_ipix

    order, ipix = uniq_to_order_ipix(loc.uniq)
    ra, dec = np.empty(loc.n_pixels), np.empty(loc.n_pixels)
    for o in np.unique(order):
        sel = order == o
        ra[sel], dec[sel] = hp.pix2ang(1 << int(o), ipix[sel], nest=True, lonlat=True)
    best = int(np.argmax(loc.probdensity))
    inside = np.flatnonzero(levels < 0.85)
    # the region pixel farthest from the best one, and one far from both
    sep = hp.rotator.angdist([ra[best], dec[best]], [ra[inside], dec[inside]], lonlat=True)
    far = int(inside[np.argmax(sep)])
    sep2 = np.minimum(sep, hp.rotator.angdist([ra[far], dec[far]], [ra[inside], dec[inside]],
                                              lonlat=True))
    third = int(inside[np.argmax(sep2)])
    out = []
    for i, k in enumerate((best, far, third)):
        out.append(Match(
            event_id=EVENT_ID, event_revision=1, event_kind="gw", instrument="LVK",
            event_time="2023-05-18T12:59:08.167Z", alert_id=1000 + i, object_id=str(500 + i),
            ra=float(ra[k]), dec=float(dec[k]), alert_time="2023-05-19T03:00:00.000Z",
            time_offset=0.58, credible_level=float(levels[k]), searched_area=100.0,
            prob_density=1e-3, distance_mean=None, distance_std=None, p_chance=1e-3))
    return out


@pytest.fixture
def store(tmp_path, event) -> Store:
    with Store(f"sqlite:///{tmp_path / 'plot.sqlite'}") as s:
        s.save_event(replace(event, revision=1))
        matches = _matches(event)
        s.save_matches(matches)
        s.revoke_matches(EVENT_ID, [matches[2].alert_id])
        yield s


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def _near(pixels: np.ndarray, x: float, y: float, color: str, radius: int = 3,
          tol: float = 40.0) -> bool:
    """True when a pixel within ``radius`` of (x, y) (PNG pixels, top-left origin) has
    ``color`` (each RGB channel within ``tol``)."""
    xi, yi = int(round(x)), int(round(y))
    patch = pixels[yi - radius:yi + radius + 1, xi - radius:xi + radius + 1, :3].astype(float)
    return bool(np.any(np.all(np.abs(patch - _rgb(color)) <= tol, axis=-1)))


def _mollweide_xy(box, ra: float, dec: float) -> tuple[float, float]:
    """PNG position of (ra, dec) in the all-sky panel by healpy's Mollweide projector
    (centre RA 180 deg, east to the left): x in [-2, 2], y in [-1, 1] fill the box."""
    x, y = hp.projector.MollweideProj(rot=(180, 0, 0), flipconv="astro").ang2xy(
        ra, dec, lonlat=True)
    left, top, right, bottom = box
    return left + (x + 2) / 4 * (right - left), top + (1 - y) / 2 * (bottom - top)


def _zoom_xy(result, ra: float, dec: float) -> tuple[float, float]:
    """PNG position in the zenithal equal-area panel (north up, east left): projected radius
    2 sin(d/2) at position angle PA, the panel's half-width being that of zoom_radius."""
    centre = SkyCoord(*result.zoom_center, unit="deg")
    target = SkyCoord(ra, dec, unit="deg")
    r = 2 * math.sin(centre.separation(target).rad / 2)
    half = 2 * math.sin(math.radians(result.zoom_radius) / 2)
    pa = centre.position_angle(target).rad
    left, top, right, bottom = result.zoom_box
    return (left + (0.5 - r * math.sin(pa) / (2 * half)) * (right - left),
            top + (0.5 - r * math.cos(pa) / (2 * half)) * (bottom - top))


def test_plot_command_writes_a_png_of_sensible_size(store, tmp_path, capsys) -> None:
    png = tmp_path / "out" / "s230518h.png"
    rc = cli_observe.main(["-q", "plot", EVENT_ID, "--db", f"sqlite:///{tmp_path / 'plot.sqlite'}",
                           "--out", str(png), "--credible-levels", "0.5", "0.9"])
    assert rc == 0
    width, height = _png_size(png.read_bytes())
    assert 1000 <= width <= 4000 and 500 <= height <= 3000
    assert "2 matched alerts, 1 revoked" in capsys.readouterr().out


def test_matched_and_revoked_alerts_are_drawn_where_the_projections_put_them(
        store, event, tmp_path) -> None:
    result = plot_stored_event(store, EVENT_ID, tmp_path / "s.png")
    assert (result.n_matches, result.n_revoked) == (2, 1)
    pixels = np.asarray(Image.open(result.path).convert("RGB"))
    assert pixels.shape[:2] == (result.height, result.width)
    live0, live1, revoked = _matches(event)
    for m in (live0, live1):
        assert _near(pixels, *_mollweide_xy(result.allsky_box, m.ra, m.dec), MATCH_COLOR), m
        assert _near(pixels, *_zoom_xy(result, m.ra, m.dec), MATCH_COLOR), m
    for xy in (_mollweide_xy(result.allsky_box, revoked.ra, revoked.dec),
               _zoom_xy(result, revoked.ra, revoked.dec)):
        assert _near(pixels, *xy, REVOKED_COLOR)
        assert not _near(pixels, *xy, MATCH_COLOR, radius=2)
    # control: an empty part of the sky has no marker colour
    empty = _mollweide_xy(result.allsky_box, 200.0, 45.0)
    assert not _near(pixels, *empty, MATCH_COLOR, radius=6)
    assert not _near(pixels, *empty, REVOKED_COLOR, radius=6, tol=15)


def test_retracted_event_is_drawn_from_its_last_revision_before_the_retraction(
        store, event, tmp_path) -> None:
    later = Time(event.trigger_time.mjd + 0.2, format="mjd", scale="utc")
    store.save_event(Event(event_id=EVENT_ID, kind=event.kind, instrument="LVK",
                           trigger_time=event.trigger_time, localization=None,
                           action=NoticeAction.RETRACT, notice_time=later))
    assert EVENT_ID not in {e.event_id for e in store.load_live_events()}
    loaded = load_event(store, EVENT_ID)
    assert loaded.revision == 1
    assert loaded.localization.area(0.9) == pytest.approx(event.localization.area(0.9))
    result = plot_stored_event(store, EVENT_ID, tmp_path / "r.png")
    assert result.path.exists()


def test_unknown_event_is_refused_with_the_store_named(store) -> None:
    with pytest.raises(MmcrossError, match="lvk:S000000x.*plot.sqlite"):
        load_event(store, "lvk:S000000x")


def test_zoom_panel_centres_on_the_credible_region(event) -> None:
    from mmcross.app.plot import zoom_region

    ra, dec, radius = zoom_region(event.localization)
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    # every 90%-region pixel lies within the radius (healpy pixel centres)
    loc = event.localization
    from mmcross.model.localization import uniq_to_order_ipix

    order, ipix = uniq_to_order_ipix(loc.uniq[loc.region_mask(0.9)])
    ras, decs = np.empty(len(ipix)), np.empty(len(ipix))
    for o in np.unique(order):
        sel = order == o
        ras[sel], decs[sel] = hp.pix2ang(1 << int(o), ipix[sel], nest=True, lonlat=True)
    assert np.max(centre.separation(SkyCoord(ras * u.deg, decs * u.deg)).deg) < radius

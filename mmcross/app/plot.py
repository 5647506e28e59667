"""The observer's skymap picture: an event's localization, credible contours and matched alerts.

One PNG (matplotlib, Agg backend) with two panels drawn with astropy's WCSAxes:

- an all-sky Mollweide view (RA increasing to the left, centre RA 180 deg), and
- a zenithal equal-area (ZEA) view zoomed on the 90% credible region and the matched alerts,

both showing the probability density (per deg^2), contours at the requested credible levels
(searched probability, as ligo.skymap's ``find_greedy_credible_levels``), matched alerts (orange
stars) and revoked matches (grey crosses). The multi-order map is sampled at each image pixel's
centre through :meth:`~mmcross.model.localization.Localization.density_at` and
:meth:`~mmcross.model.localization.Localization.credible_level_at`, so no flat-map resolution is
imposed. Positions are degrees ICRS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import healpy as hp
import matplotlib
import numpy as np
from astropy.time import Time
from astropy.wcs import WCS

from mmcross.model.errors import MmcrossError
from mmcross.model.event import Event, EventKind
from mmcross.model.localization import SR_TO_DEG2, Localization, uniq_to_order_ipix
from mmcross.model.match import Match

matplotlib.use("Agg")

from astropy.visualization.wcsaxes.frame import EllipticalFrame  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

MATCH_COLOR = "#ff7f0e"
"""Face colour of matched-alert markers (orange)."""
REVOKED_COLOR = "#8c8c8c"
"""Colour of revoked-match markers (grey)."""
CONTOUR_COLORS = ("#08306b", "#d62728", "#2ca02c", "#9467bd")
"""Contour colours by increasing credible level."""
PARENT_COLORS = ("#17becf", "#bcbd22")
"""Colours of the dotted 90 % contours of a coincidence's parents (GW, external)."""
CMAP = "Blues"

_MOL_WIDTH_DEG = 4.0 * math.sqrt(2.0) * 180.0 / math.pi  # full width of the Mollweide plane


@dataclass(frozen=True)
class SkymapPlot:
    """What :func:`plot_event` drew.

    Attributes:
        path: the PNG written.
        width, height: image size, pixels.
        allsky_box, zoom_box: each panel's image area in PNG pixels ``(left, top, right,
            bottom)`` (origin top-left); the Mollweide ellipse fills ``allsky_box``.
        zoom_center: ``(ra, dec)`` of the zoomed panel's centre, degrees ICRS.
        zoom_radius: angular radius covered by the zoomed panel along its axes, degrees.
        area90: area of the 90% credible region, deg^2.
        n_matches, n_revoked: live and revoked matched alerts drawn.
    """

    path: Path
    width: int
    height: int
    allsky_box: tuple[float, float, float, float]
    zoom_box: tuple[float, float, float, float]
    zoom_center: tuple[float, float]
    zoom_radius: float
    area90: float
    n_matches: int
    n_revoked: int


# -- loading -----------------------------------------------------------------------------


def load_event(store: Any, event_id: str) -> Event:
    """The latest revision with a sky map of ``event_id`` from a :class:`catalogs.Store`
    (for a retracted event, the last revision before the retraction).

    Raises:
        MmcrossError: the event is unknown to the store, or none of its revisions has a map.
    """
    event = store.load_event(event_id, with_localization=True)
    if event is not None:
        return event
    if store.load_event(event_id) is None:
        raise MmcrossError(f"event {event_id!r} is not in the store at {store.url} "
                           "(see `mmcross events`)")
    raise MmcrossError(f"event {event_id!r} in the store at {store.url} has no stored sky map "
                       "to draw (retracted before any localization)")


def plot_stored_event(store: Any, event_id: str, out: str | Path, *,
                      credible_levels: Sequence[float] = (0.5, 0.9)) -> SkymapPlot:
    """Draw a stored event with all its stored matches (live and revoked) to ``out`` (PNG)."""
    event = load_event(store, event_id)
    parents = [load_event(store, p) for p in event.significance.get("parents", [])
               if event.kind is EventKind.COINCIDENCE]
    return plot_event(event, store.matches(event_id, include_retracted=True), out,
                      credible_levels=credible_levels, parents=parents)


# -- geometry ----------------------------------------------------------------------------


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    return np.asarray(hp.ang2vec(np.asarray(ra, float), np.asarray(dec, float), lonlat=True))


def zoom_region(loc: Localization, alerts_ra: Sequence[float] = (),
                alerts_dec: Sequence[float] = (), credible_level: float = 0.9
                ) -> tuple[float, float, float]:
    """``(ra, dec, radius)`` in degrees ICRS of a cap holding the ``credible_level`` region's
    pixel centres and the given alert positions, with a 15% margin (at least 0.05 deg, at
    most 120 deg). Centred on the probability-weighted mean direction of the region, or on
    the most probable pixel when the region is too spread out for a mean. An analytic region
    uses its centre and the cap holding its credible region (no pixels made)."""
    if loc.region is not None:
        region = loc.region
        mean = _unit(region.ra, region.dec).reshape(3)
        reach = region.cap_radius(credible_level)
        if len(alerts_ra):
            points = _unit(alerts_ra, alerts_dec).reshape(-1, 3)
            reach = max(reach, float(np.degrees(np.arccos(np.clip(points @ mean, -1, 1)))
                                     .max()))
        return region.ra % 360.0, region.dec, min(max(1.15 * reach, 0.05), 120.0)
    mask = loc.region_mask(credible_level)
    order, ipix = uniq_to_order_ipix(loc.uniq[mask])
    vec = np.empty((len(ipix), 3))
    for o in np.unique(order):
        sel = order == o
        vec[sel] = np.column_stack(hp.pix2vec(1 << int(o), ipix[sel], nest=True))
    prob = loc.probabilities()[mask]
    mean = (vec * prob[:, None]).sum(axis=0)
    if np.linalg.norm(mean) < 0.3 * prob.sum():
        mean = vec[np.argmax(loc.probdensity[mask])]
    mean = mean / np.linalg.norm(mean)
    pixel_size = float(np.degrees(np.sqrt(loc.pixel_area_sr()[mask].max())))
    points = vec
    if len(alerts_ra):
        points = np.vstack([vec, _unit(alerts_ra, alerts_dec).reshape(-1, 3)])
    reach = float(np.degrees(np.arccos(np.clip(points @ mean, -1, 1))).max()) + pixel_size
    radius = min(max(1.15 * reach, 0.05), 120.0)
    ra, dec = hp.vec2ang(mean, lonlat=True)
    return float(ra[0]) % 360.0, float(dec[0]), radius


def mollweide_wcs(width: int) -> WCS:
    """An all-sky Mollweide WCS of ``width`` x ``width/2`` pixels whose ellipse fills the
    image: centre RA 180 deg, RA increasing to the left (degrees ICRS)."""
    height = width // 2
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---MOL", "DEC--MOL"]
    w.wcs.crval = [180.0, 0.0]
    w.wcs.crpix = [width / 2 + 0.5, height / 2 + 0.5]
    w.wcs.cdelt = [-_MOL_WIDTH_DEG / width, _MOL_WIDTH_DEG / 2 / height]
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (width, height)
    return w


def zoom_wcs(ra: float, dec: float, radius: float, size: int) -> WCS:
    """A ``size`` x ``size`` zenithal equal-area WCS centred on (``ra``, ``dec``) whose
    half-width is the projected distance of ``radius`` degrees (north up, east left)."""
    half = 2.0 * math.sin(math.radians(radius) / 2) * 180.0 / math.pi
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---ZEA", "DEC--ZEA"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    w.wcs.cdelt = [-2 * half / size, 2 * half / size]
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (size, size)
    return w


def _sample(loc: Localization, wcs: WCS) -> tuple[np.ndarray, np.ndarray]:
    """(density per deg^2, credible level) images on ``wcs``'s pixel grid (NaN off-sky)."""
    nx, ny = wcs.pixel_shape
    x, y = np.meshgrid(np.arange(nx), np.arange(ny))
    with np.errstate(invalid="ignore"):
        ra, dec = wcs.pixel_to_world_values(x.ravel(), y.ravel())
    ok = np.isfinite(ra) & np.isfinite(dec)
    density = np.full(ra.shape, np.nan)
    level = np.full(ra.shape, np.nan)
    ra_ok = np.mod(ra[ok], 360.0)
    dec_ok = np.clip(dec[ok], -90.0, 90.0)
    density[ok] = loc.density_at(ra_ok, dec_ok) / SR_TO_DEG2
    level[ok] = loc.credible_level_at(ra_ok, dec_ok)
    return density.reshape(ny, nx), level.reshape(ny, nx)


# -- drawing -----------------------------------------------------------------------------


def _panel(ax: Any, loc: Localization, wcs: WCS, levels: Sequence[float],
           live: Sequence[Match], revoked: Sequence[Match], *, marker_scale: float,
           vmax: float | None) -> Any:
    density, level = _sample(loc, wcs)
    shown = np.where(density > 0, density, np.nan)
    image = ax.imshow(shown, origin="lower", cmap=CMAP, vmin=0,
                      vmax=vmax if vmax is not None else np.nanmax(density),
                      interpolation="nearest")
    finite = np.where(np.isfinite(level), level, 1.0)
    for k, lev in enumerate(sorted(levels)):
        cs = ax.contour(finite, levels=[lev], colors=[CONTOUR_COLORS[k % len(CONTOUR_COLORS)]],
                        linewidths=1.3, linestyles="solid" if lev <= 0.5 else "dashed")
        ax.clabel(cs, fmt={lev: f"{100 * lev:g}%"}, fontsize=8, inline=True)
    world = ax.get_transform("world")
    if revoked:
        ax.scatter([m.ra for m in revoked], [m.dec for m in revoked], transform=world,
                   marker="X", s=70 * marker_scale, c=REVOKED_COLOR, edgecolors="black",
                   linewidths=0.4, zorder=5, label=f"revoked matches ({len(revoked)})")
    if live:
        ax.scatter([m.ra for m in live], [m.dec for m in live], transform=world,
                   marker="*", s=160 * marker_scale, c=MATCH_COLOR, edgecolors="black",
                   linewidths=0.4, zorder=6, label=f"matched alerts ({len(live)})")
    nx, ny = wcs.pixel_shape
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.coords.grid(True, color="0.55", linestyle=":", linewidth=0.6)
    return image


def _parent_contours(ax: Any, parents: Sequence[Event], wcs: WCS) -> list[Any]:
    """The 90 % contour of each parent of a coincidence (its own map), as legend handles."""
    handles = []
    for k, parent in enumerate(parents):
        if parent.localization is None:
            continue
        _, level = _sample(parent.localization, wcs)
        color = PARENT_COLORS[k % len(PARENT_COLORS)]
        ax.contour(np.where(np.isfinite(level), level, 1.0), levels=[0.9], colors=[color],
                   linewidths=1.1, linestyles="dotted")
        handles.append(plt.Line2D([], [], color=color, linestyle="dotted",
                                  label=f"{parent.event_id} 90% region"))
    return handles


def _title(event: Event, loc: Localization) -> str:
    when = Time(event.trigger_time.utc, precision=1).iso
    parts = [f"{event.event_id} rev {event.revision}",
             f"{event.kind.value.upper()} / {event.instrument}",
             f"trigger {when} UTC",
             f"90% area {loc.area(0.9):,.4g} deg\u00b2"]
    dist, std = loc.meta.get("DISTMEAN"), loc.meta.get("DISTSTD")
    if isinstance(dist, int | float) and isinstance(std, int | float):
        parts.append(f"distance {dist:.0f} \u00b1 {std:.0f} Mpc")
    if event.retracted:
        parts.append("RETRACTED")
    return "   \u2022   ".join(parts)


def plot_event(event: Event, matches: Sequence[Match], out: str | Path, *,
               credible_levels: Sequence[float] = (0.5, 0.9), dpi: int = 100,
               allsky_width: int = 900, zoom_size: int = 600,
               parents: Sequence[Event] = ()) -> SkymapPlot:
    """Draw ``event``'s localization with its credible contours and ``matches`` to a PNG.

    Args:
        event: the event (its ``localization`` is drawn).
        matches: matched alerts of this event; ``retracted`` ones are drawn as revoked.
        parents: for a coincidence's combined map, its GW and external parents, whose 90 %
            contours are drawn beside the combined map's.
        out: PNG path (parent folders are created).
        credible_levels: contour levels, searched probability in (0, 1].
        dpi: image resolution; the figure is 16 x 7.2 inches.
        allsky_width, zoom_size: sampling grids (pixels) of the two panels.

    Raises:
        MmcrossError: the event has no localization or a level is outside (0, 1].
    """
    loc = event.localization
    if loc is None:
        raise MmcrossError(f"event {event.event_id} revision {event.revision} has no sky map")
    levels = sorted(float(v) for v in credible_levels)
    if not levels or any(not 0 < v <= 1 for v in levels):
        raise MmcrossError(f"credible levels must be in (0, 1], got {list(credible_levels)}")
    mine = [m for m in matches if m.event_id == event.event_id]
    latest: dict[int, Match] = {}  # per alert, its record of the latest revision
    for m in mine:
        seen = latest.get(m.alert_id)
        if seen is None or (m.event_revision, m.retracted) > (seen.event_revision, seen.retracted):
            latest[m.alert_id] = m
    live = [m for m in latest.values() if not m.retracted]
    revoked = [m for m in latest.values() if m.retracted]
    inside = [m for m in live if m.credible_level <= max(levels[-1], 0.9)]
    zra, zdec, zrad = zoom_region(loc, [m.ra for m in inside], [m.dec for m in inside],
                                  max(0.9, levels[-1] if levels[-1] < 1 else 0.9))

    fig = plt.figure(figsize=(16, 7.2), dpi=dpi)
    try:
        sky = mollweide_wcs(allsky_width)
        ax1 = fig.add_axes((0.02, 0.17, 0.56, 0.68), projection=sky,
                           frame_class=EllipticalFrame)
        image = _panel(ax1, loc, sky, levels, live, revoked, marker_scale=0.6, vmax=None)
        _parent_contours(ax1, parents, sky)
        ax1.coords[0].set_format_unit("hourangle")
        ax1.coords[0].set_major_formatter("hh")
        ax1.coords[0].set_ticks(spacing=30 * _deg())
        ax1.coords[1].set_ticks(spacing=30 * _deg())
        ax1.coords[0].set_ticklabel(color="0.3", fontsize=8)
        ax1.coords[1].set_ticklabel(fontsize=8)
        ax1.coords[0].set_axislabel(" ")
        ax1.coords[1].set_axislabel(" ")
        ax1.set_title("all sky (Mollweide)", fontsize=10)
        cax = fig.add_axes((0.12, 0.08, 0.36, 0.025))
        bar = fig.colorbar(image, cax=cax, orientation="horizontal")
        bar.set_label("probability per deg\u00b2", fontsize=9)

        zoom = zoom_wcs(zra, zdec, zrad, zoom_size)
        ax2 = fig.add_axes((0.62, 0.1, 0.34, 0.75), projection=zoom)
        _panel(ax2, loc, zoom, levels, live, revoked, marker_scale=1.0, vmax=None)
        parent_handles = _parent_contours(ax2, parents, zoom)
        ax2.coords[0].set_format_unit("deg", decimal=True)
        wide = zrad > 25.0  # tick labels on a wide zenithal frame are unreadable
        spacing = _grid_spacing(zrad)
        for coord, name, side in ((ax2.coords[0], "RA (deg, ICRS)", "b"),
                                  (ax2.coords[1], "Dec (deg, ICRS)", "l")):
            coord.set_ticks(spacing=spacing * _deg())
            coord.set_ticks_position(side)
            coord.set_ticklabel_position("" if wide else side)
            coord.set_axislabel_position(side)
            coord.set_axislabel_visibility_rule("always")
            coord.set_axislabel(f"{name}, grid every {spacing:g}\u00b0" if wide else name,
                                fontsize=9)
            coord.set_ticklabel(fontsize=8)
        if len(live) <= 12:
            for m in live:
                ax2.annotate(str(m.object_id), (m.ra, m.dec), xycoords=ax2.get_transform("world"),
                             xytext=(6, 6), textcoords="offset points", fontsize=7,
                             color="black", zorder=7, annotation_clip=True)
        ax2.set_title(f"zoom: {zrad:.3g}\u00b0 around RA {zra:.3f}\u00b0, "
                      f"Dec {zdec:+.3f}\u00b0 (ZEA)", fontsize=10,
                      pad=8)
        handles = [plt.Line2D([], [], color=CONTOUR_COLORS[k % len(CONTOUR_COLORS)],
                              linestyle="solid" if lev <= 0.5 else "dashed",
                              label=f"{100 * lev:g}% credible region")
                   for k, lev in enumerate(levels)]
        handles += parent_handles + ax2.get_legend_handles_labels()[0]
        ax2.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
        fig.suptitle(_title(event, loc), fontsize=12, y=0.97)

        fig.canvas.draw()
        width, height = (int(round(v)) for v in fig.canvas.get_width_height())
        boxes = []
        for ax in (ax1, ax2):
            x0, y0, x1, y1 = ax.bbox.extents
            boxes.append((float(x0), float(height - y1), float(x1), float(height - y0)))
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    log.info("wrote the skymap of %s (%d matches, %d revoked) to %s", event.event_id,
             len(live), len(revoked), path)
    return SkymapPlot(path=path, width=width, height=height, allsky_box=boxes[0],
                      zoom_box=boxes[1], zoom_center=(zra, zdec), zoom_radius=zrad,
                      area90=loc.area(0.9), n_matches=len(live), n_revoked=len(revoked))


def _grid_spacing(radius: float) -> float:
    """A round grid spacing (degrees) giving a few lines across a field of ``radius`` deg."""
    for step in (30, 15, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001):
        if radius / step >= 2.5:
            return float(step)
    return 0.0005


def _deg() -> Any:
    from astropy import units as u

    return u.deg

"""The public matcher: a batch of optical alerts against all live event localizations at once.

An alert matches an event when both hold:

* it lies inside the event's credible region at the configured level: its credible level is
  ``<= config.credible_level`` (for a pixel map, ligo.skymap's ``searched_prob`` of its pixel;
  for an analytic circle, ellipse or box, the exact credible level of the region at the
  alert's position);
* its time is inside the event kind's window: ``trigger + before <= t <= trigger + after``
  (MJD TAI, days; ``config.time_window(kind)``).

How: alert positions are turned once into order-29 NESTED indices (healpy) and unit
vectors, and grouped by cell (a counting sort); each alert's cells list the live events
whose matchable region touches them (:class:`LiveSky`); the time window filters those; for
a pixel map a binary search in the event's pixels inside that cell finds the pixel, whose
credible level, searched area, density and distance moments were precomputed when the event
was packed; an analytic region is evaluated in closed form
(:func:`mmcross.model.regions.evaluate`).

Events are added, replaced and removed one at a time (:meth:`Matcher.upsert`,
:meth:`Matcher.remove`): nothing else is repacked. An unchanged (event_id, revision,
localization) keeps its entry. Once a pixel map is packed, the localization's credible-region
caches are released (:meth:`~mmcross.model.localization.Localization.release_caches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import healpy as hp
import numpy as np

from mmcross.matchers import kernels
from mmcross.matchers.chance import BackgroundRate, p_chance
from mmcross.matchers.history_match import pixel_hits
from mmcross.matchers.packed import (
    DEFAULT_CELL_ORDER,
    VALUE_COLUMNS,
    LiveSky,
    pack_localization,
)
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.errors import MmcrossError
from mmcross.model.event import Event
from mmcross.model.history import AlertHistory, SortedRun
from mmcross.model.match_batch import NO_REVISION, Coded, MatchBatch
from mmcross.model.timefmt import iso_utc_from_mjd_tai

log = logging.getLogger(__name__)

NSIDE_MAX = 2**kernels.ORDER_MAX
_EVENT_COLUMNS = {"event_id": object, "event_revision": np.int64, "event_kind": object,
                  "instrument": object, "event_time": object, "notice_ivorn": object}


def alert_pixels(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Order-29 HEALPix NESTED index (int64) of positions in degrees ICRS."""
    ra = np.asarray(ra, np.float64)
    if len(ra) == 0:
        return np.empty(0, np.int64)
    return np.asarray(hp.ang2pix(NSIDE_MAX, ra, np.asarray(dec, np.float64), nest=True,
                                 lonlat=True), dtype=np.int64)


@dataclass
class MatchArrays:
    """Matches of one batch as columns, one row per (alert, event) pair, grouped by alert
    (alerts grouped by their cell of the spatial lookup; within an alert, events in index
    order).

    Attributes:
        alert_index: row of the alert in the batch.
        event_index: event number, a position in ``event_ids``.
        event_ids: the event id of each event number (``""`` for a free number).
        credible_level: 0..1; searched_area: deg^2; prob_density: per deg^2.
        distance_mean, distance_std: Mpc, NaN when the map has no distance.
        time_offset: alert time minus trigger time, days.
        p_chance: 1 - exp(-rho * searched_area * |time_offset|).
    """

    alert_index: np.ndarray
    event_index: np.ndarray
    event_ids: list[str]
    credible_level: np.ndarray
    searched_area: np.ndarray
    prob_density: np.ndarray
    distance_mean: np.ndarray
    distance_std: np.ndarray
    time_offset: np.ndarray
    p_chance: np.ndarray

    def __len__(self) -> int:
        return len(self.alert_index)


@dataclass
class _Entry:
    event: Event
    number: int  # event number in the live sky
    fields: dict[str, object]  # the event's columns of its match reports


def _report_fields(event: Event) -> dict[str, object]:
    """The columns a match report takes from its event (see :class:`Match`)."""
    return {"event_id": event.event_id, "event_revision": int(event.revision),
            "event_kind": str(event.kind), "instrument": event.instrument,
            "event_time": iso_utc_from_mjd_tai(event.trigger_mjd_tai)[0],
            "notice_ivorn": event.ivorn}


class Matcher:
    """Matches alert batches against the live events (see module docstring).

    Args:
        config: supplies ``credible_level``, ``time_window(kind)``, ``background_rate`` and
            ``match.rho_min_new_alerts``.
        cell_order: HEALPix order of the cells of the spatial lookup (default 6,
            ~0.84 deg^2); analytic regions larger than a cell use coarser cells.
    """

    def __init__(self, config: Config, cell_order: int = DEFAULT_CELL_ORDER) -> None:
        self.config = config
        self.cell_order = cell_order
        self._entries: dict[str, _Entry] = {}
        self.sky = LiveSky(config.credible_level, cell_order)
        self._ids: list[str] = []  # event id of each event number ("" when free)
        self._trigger = np.empty(0)
        self._capacity_hint = 0  # output size of the last batch, to size the next one
        self._rate = BackgroundRate(config.background_rate,
                                    int(config.get("match.rho_min_new_alerts", 1000)))

    # -- the live set --------------------------------------------------------------------

    def _add(self, event: Event) -> _Entry | None:
        """Index ``event`` in the live sky (``None``: nothing to match)."""
        loc = event.localization
        if loc is None or event.retracted:
            return None
        window = self.config.time_window(event.kind)
        trigger = event.trigger_mjd_tai
        tmin, tmax = trigger + window.before, trigger + window.after
        if loc.region is not None:
            number = self.sky.add_region(loc.region, tmin, tmax)
        else:
            try:
                packed = pack_localization(loc, max_credible_level=self.config.credible_level,
                                           cell_order=self.cell_order)
            except MmcrossError as exc:
                log.warning("event %s revision %d not matched: %s", event.event_id,
                            event.revision, exc)
                return None
            finally:
                loc.release_caches()  # the greedy caches are not needed once packed
            number = self.sky.add_pixels(packed, tmin, tmax)
            log.debug("packed %s rev %d: %d pixels, %d cells", event.event_id, event.revision,
                      len(packed), len(packed.cells))
        if number >= len(self._ids):
            self._ids.extend([""] * (number + 1 - len(self._ids)))
            self._trigger = np.resize(self._trigger, len(self._ids))
        self._ids[number] = event.event_id
        self._trigger[number] = trigger
        return _Entry(event, number, _report_fields(event))

    def set_events(self, events: Iterable[Event]) -> None:
        """Replace the live set. Events without localization (or retracted) are ignored;
        unchanged (event_id, revision, localization) keep their entry."""
        events = list(events)
        keep = {e.event_id for e in events}
        for event_id in [k for k in self._entries if k not in keep]:
            self.remove(event_id)
        for event in events:
            self.upsert(event)

    def upsert(self, event: Event) -> None:
        """Add or replace one event (an event without localization is removed)."""
        previous = self._entries.get(event.event_id)
        if (previous is not None and previous.event.revision == event.revision
                and previous.event.localization is event.localization
                and event.localization is not None and not event.retracted):
            previous.event = event
            previous.fields = _report_fields(event)
            return
        self.remove(event.event_id)
        entry = self._add(event)
        if entry is not None:
            self._entries[event.event_id] = entry

    def remove(self, event_id: str) -> None:
        """Drop an event from the live set (no error if absent)."""
        entry = self._entries.pop(event_id, None)
        if entry is not None:
            self.sky.remove(entry.number)
            self._ids[entry.number] = ""

    @property
    def event_ids(self) -> list[str]:
        """The ids of the events being matched."""
        return list(self._entries)

    # -- matching ------------------------------------------------------------------------

    def match_arrays(self, alerts: AlertBatch,
                     only: Iterable[str] | None = None) -> MatchArrays:
        """Matches of a batch as columns (the fast path; :meth:`match` builds records)."""
        n_numbers = self.sky.capacity
        if only is None:
            active = np.ones(n_numbers, dtype=bool)
        else:
            active = np.zeros(n_numbers, dtype=bool)
            for event_id in set(only):
                entry = self._entries.get(event_id)
                if entry is not None:
                    active[entry.number] = True
        if len(alerts) and self.sky.n_events and active.any():
            pix = alert_pixels(alerts.ra, alerts.dec)
            by_pixel = kernels.group_by_cell(pix, self.cell_order)  # locality: shared cells
            ra, dec = alerts.ra[by_pixel], alerts.dec[by_pixel]
            ai, ei, values = self.sky.match(
                pix[by_pixel], kernels.unit_vectors(np.ascontiguousarray(ra, np.float64),
                                                    np.ascontiguousarray(dec, np.float64)),
                np.ascontiguousarray(alerts.mjd_tai[by_pixel], np.float64), active,
                max(len(alerts), self._capacity_hint))
            self._capacity_hint = int(1.25 * len(ai))
            ai = by_pixel[ai]
            columns = dict(zip(VALUE_COLUMNS, values, strict=True))
        else:
            ai = ei = np.empty(0, np.int64)
            columns = {name: np.empty(0) for name in VALUE_COLUMNS}
        dt = alerts.mjd_tai[ai] - self._trigger[ei]
        return MatchArrays(
            alert_index=ai, event_index=ei, event_ids=list(self._ids), time_offset=dt,
            p_chance=p_chance(self.background_rate, columns["searched_area"], dt), **columns)

    def match(self, alerts: AlertBatch, only: Iterable[str] | None = None) -> MatchBatch:
        """All (alert, event) matches of a batch as report columns (:class:`MatchBatch`:
        no per-match Python object is made).

        Args:
            alerts: the batch (degrees ICRS, MJD TAI).
            only: if given, match only against these event ids (e.g. retro-matching a newly
                announced event against the alert history).
        """
        found = self.match_arrays(alerts, only)
        if len(found) == 0:
            return MatchBatch.empty()
        a, e = found.alert_index, found.event_index
        table = {name: np.empty(len(self._ids), dtype)
                 for name, dtype in _EVENT_COLUMNS.items()}
        for number in np.flatnonzero(np.bincount(e)).tolist():
            fields = self._entries[found.event_ids[number]].fields
            for name, value in fields.items():
                table[name][number] = value
        has_distance = np.isfinite(found.distance_mean) & np.isfinite(found.distance_std)
        return MatchBatch({
            **{name: Coded(e, column) for name, column in table.items()},
            "alert_id": alerts.alert_id[a], "object_id": Coded(a, _as_text(alerts.object_id)),
            "ra": alerts.ra[a], "dec": alerts.dec[a],
            "alert_time": Coded(a, alerts.mjd_tai, render=iso_utc_from_mjd_tai),
            "time_offset": found.time_offset, "credible_level": found.credible_level,
            "searched_area": found.searched_area, "prob_density": found.prob_density,
            "distance_mean": np.where(has_distance, found.distance_mean, np.nan),
            "distance_std": np.where(has_distance, found.distance_std, np.nan),
            "p_chance": found.p_chance, "retracted": np.zeros(len(a), bool),
            "supersedes_revision": np.full(len(a), NO_REVISION, np.int64),
        })

    def retro(self, history: AlertHistory, event_id: str) -> MatchBatch:
        """The remembered alerts that match live event ``event_id``, scored (retro-matching
        a newly announced or revised event; ``MatchBatch`` as :meth:`match` makes).

        A pixel map is intersected with the sorted history directly: its packed pixels are
        order-29 ranges, searched in each sorted run (:func:`~mmcross.matchers.
        history_match.pixel_hits`), and each hit takes its pixel's precomputed credible
        level, area, density and distance (nothing is done per remembered alert, nothing is
        re-projected). An analytic region is evaluated in closed form over the alerts of its
        time window (:meth:`match`).
        """
        entry = self._entries.get(event_id)
        if entry is None:
            return MatchBatch.empty()
        number = entry.number
        tmin, tmax = float(self.sky.tmin[number]), float(self.sky.tmax[number])
        rows = self.sky.rows(number)
        if rows is None:
            past = history.between(tmin, tmax)
            return self.match(past, only=[event_id]) if len(past) else MatchBatch.empty()
        hits = pixel_hits(history, self.sky.start[rows], self.sky.log2_width[rows], tmin, tmax)
        if not hits:
            return MatchBatch.empty()
        pixel = rows.start + np.concatenate([p for _, _, p in hits])
        positions = [history.positions_of(run, r) for run, r, _ in hits]
        mjd = np.concatenate([run.mjd_tai[r] for run, r, _ in hits])
        n = len(pixel)
        values = self.sky.values[pixel]
        distance = self.sky.distance[pixel]
        has_distance = np.isfinite(distance[:, 0]) & np.isfinite(distance[:, 1])
        dt = mjd - self._trigger[number]
        area = values[:, 1]
        one = np.zeros(n, np.int64)
        return MatchBatch({
            **{name: Coded(one, np.array([value], _EVENT_COLUMNS[name]))
               for name, value in entry.fields.items()},
            "alert_id": np.concatenate([run.alert_id[r] for run, r, _ in hits]),
            "object_id": Coded(np.arange(n), np.arange(n),
                               render=_object_ids(history, [(run, r) for run, r, _ in hits])),
            "ra": np.concatenate([ra for ra, _ in positions]),
            "dec": np.concatenate([dec for _, dec in positions]),
            "alert_time": Coded(np.arange(n), mjd, render=iso_utc_from_mjd_tai),
            "time_offset": dt, "credible_level": values[:, 0], "searched_area": area,
            "prob_density": values[:, 2],
            "distance_mean": np.where(has_distance, distance[:, 0], np.nan),
            "distance_std": np.where(has_distance, distance[:, 1], np.nan),
            "p_chance": p_chance(self.background_rate, area, dt),
            "retracted": np.zeros(n, bool),
            "supersedes_revision": np.full(n, NO_REVISION, np.int64),
        })

    # -- background rate -----------------------------------------------------------------

    def observe(self, alerts: AlertBatch) -> None:
        """Feed a batch to the background-rate estimator (see :mod:`mmcross.matchers.chance`)."""
        self._rate.observe(alerts.ra, alerts.dec, alerts.mjd_tai, alerts.is_new)

    @property
    def background_rate(self) -> float:
        """rho, new transients per deg^2 per day: measured once enough new alerts were
        observed, else ``config.background_rate``."""
        return self._rate.rate


def _as_text(values: np.ndarray) -> np.ndarray:
    """An object array of Python ``str`` (the alert batch's ``object_id`` is text by contract;
    a batch built by hand with numbers is converted)."""
    if len(values) == 0 or isinstance(values[0], str):
        return values
    return np.array([str(v) for v in values], dtype=object)


def _object_ids(history: AlertHistory, parts: list[tuple[SortedRun, np.ndarray]]
                ) -> Callable[[np.ndarray], np.ndarray]:
    """A renderer of the object ids of the hits ``parts`` (rows of sorted runs, concatenated
    in order): positions in the concatenation -> object id text, made only when read."""
    offsets = np.cumsum([0] + [len(rows) for _, rows in parts])

    def render(positions: np.ndarray) -> np.ndarray:
        out = np.empty(len(positions), object)
        part = np.searchsorted(offsets, positions, side="right") - 1
        for k in np.unique(part).tolist():
            chosen = part == k
            run, rows = parts[k]
            out[chosen] = history.object_ids_of(run, rows[positions[chosen] - offsets[k]])
        return out

    return render

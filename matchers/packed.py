"""The live events in flat arrays with an incremental HEALPix cell index.

Pixel maps (LVK): only the pixels that can match are kept, those whose credible level
(ligo.skymap's ``searched_prob``) is at most the configured level. Each kept pixel is stored
as its order-29 NESTED range ``[start, start + 2**log2_width)`` (int64 start, int8 log2 of
the width) with precomputed per-pixel values:

* ``credible_level`` (0..1) and ``searched_area`` (deg^2) of the smallest credible region
  containing the pixel (greedy ordering by probability density, as ligo.skymap);
* ``prob_density`` per deg^2 (the map's PROBDENSITY per sr times ``(pi/180)^2``);
* ``distance_mean``/``distance_std`` (Mpc), conditional on the pixel, NaN without distance.

Analytic regions (circles, ellipses, boxes) keep only their parameters and are evaluated in
closed form for the alerts of the few cells their credible region's cap overlaps.

:class:`LiveSky` holds every live event and indexes them by cells (see
:mod:`mmcross.matchers.kernels`) so that an alert only visits the events whose matchable
region touches its cell; adding or removing one event touches only that event's entries.
Memory: 49 bytes per kept pixel of a pixel map; an analytic region ~250 bytes plus 40 bytes
per cell (a handful).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import healpy as hp
import numpy as np

from mmcross.matchers import kernels
from mmcross.matchers.distance import conditional_distance_moments
from mmcross.model.errors import BadSkymapError
from mmcross.model.regions import GL_NODES, N_PARAMS, AnalyticRegion

if TYPE_CHECKING:
    from mmcross.model.localization import Localization

log = logging.getLogger(__name__)

DEG2_PER_SR = (180.0 / math.pi) ** 2
DEFAULT_CELL_ORDER = 6  # coarse cells of ~0.84 deg^2 (0.92 deg across)


_PIXRAD = np.array([hp.max_pixrad(1 << k) for k in range(kernels.ORDER_MAX + 1)])
"""Largest pixel radius (rad) of each order: a cap no larger touches a handful of cells."""


def cell_shift(cell_order: int) -> int:
    """Right shift turning an order-29 NESTED index into its coarse cell at ``cell_order``."""
    if not 0 <= cell_order <= kernels.ORDER_MAX:
        raise ValueError(f"cell order must be in [0, 29], got {cell_order}")
    return 2 * (kernels.ORDER_MAX - cell_order)


@dataclass(frozen=True, eq=False)
class PackedLocalization:
    """The matchable pixels of one localization (see module docstring), sorted by start.

    Attributes:
        start: int64 first order-29 NESTED index of each pixel.
        log2_width: int8, each pixel is ``[start, start + 2**log2_width)`` at order 29.
        credible_level: float64, 0..1.
        searched_area: float64, deg^2.
        prob_density: float64, per deg^2.
        distance_mean, distance_std: float64 Mpc, NaN where the map has no distance (a
            read-only zero-stride NaN array when ``has_distance`` is false).
        cells: int64 coarse cells (order ``cell_order``) touched, ascending.
        cell_lo, cell_hi: int64, local pixel index range ``[lo, hi)`` inside each cell.
        cell_order: order of ``cells``.
        has_distance: whether the map had distance layers.
    """

    start: np.ndarray
    log2_width: np.ndarray
    credible_level: np.ndarray
    searched_area: np.ndarray
    prob_density: np.ndarray
    distance_mean: np.ndarray
    distance_std: np.ndarray
    cells: np.ndarray
    cell_lo: np.ndarray
    cell_hi: np.ndarray
    cell_order: int
    has_distance: bool = True

    def __len__(self) -> int:
        return len(self.start)

    @property
    def end(self) -> np.ndarray:
        """int64 end (exclusive) of each pixel's order-29 range (computed)."""
        return self.start + (np.int64(1) << self.log2_width.astype(np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the per-pixel arrays (the NaN distance views of maps without distance
        take none)."""
        names = _ARRAYS if self.has_distance else _ARRAYS_NO_DISTANCE
        return sum(getattr(self, name).nbytes for name in names)


VALUE_COLUMNS = ("credible_level", "searched_area", "prob_density", "distance_mean",
                 "distance_std")
"""Per-pixel values reported for a match (see :meth:`PackedSky.gather`)."""
_SKY_COLUMNS = VALUE_COLUMNS[:3]
"""The columns of :attr:`PackedSky.values`; the distance columns live in ``distance``."""
_ARRAYS = ("start", "log2_width", *VALUE_COLUMNS, "cells", "cell_lo", "cell_hi")
_ARRAYS_NO_DISTANCE = tuple(a for a in _ARRAYS if not a.startswith("distance_"))


def _nan_view(n: int) -> np.ndarray:
    """A read-only float64 array of ``n`` NaN taking no memory per element."""
    return np.broadcast_to(np.float64(np.nan), (n,))


def _log2_width(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """int8 log2 of ``end - start``, which must be powers of 2 (HEALPix pixels)."""
    width = end - start
    if np.any(width <= 0):
        raise BadSkymapError("localization has empty or reversed pixel ranges")
    log2 = np.frexp(width.astype(np.float64))[1].astype(np.int8) - np.int8(1)
    if np.any((np.int64(1) << log2.astype(np.int64)) != width):
        raise BadSkymapError("localization pixel ranges are not HEALPix pixels (width not a "
                             "power of 2)")
    return log2


def pack_pixels(start: np.ndarray, end: np.ndarray, credible_level: np.ndarray,
                searched_area: np.ndarray, probdensity: np.ndarray,
                distmu: np.ndarray | None, distsigma: np.ndarray | None, *,
                max_credible_level: float,
                cell_order: int = DEFAULT_CELL_ORDER) -> PackedLocalization:
    """Pack the pixels of one multi-order map whose credible level is <= ``max_credible_level``.

    Args:
        start, end: order-29 NESTED ranges ``[start, end)`` of the map's pixels (any order).
        credible_level: per pixel, ligo.skymap's ``searched_prob`` (0..1).
        searched_area: per pixel, ligo.skymap's ``searched_area`` (deg^2).
        probdensity: per pixel probability density, per sr.
        distmu, distsigma: per pixel distance ansatz parameters (Mpc) or ``None``.
        max_credible_level: keep pixels with ``credible_level <= max_credible_level``.
        cell_order: order of the coarse cells of the spatial lookup.
    """
    start = np.asarray(start, dtype=np.int64)
    n = len(start)
    arrays = {"end": end, "credible_level": credible_level, "searched_area": searched_area,
              "probdensity": probdensity}
    for name, value in arrays.items():
        if len(value) != n:
            raise BadSkymapError(f"localization has {n} pixel ranges but {len(value)} {name}")
    keep = np.flatnonzero(np.asarray(credible_level) <= max_credible_level)
    if len(keep) > 1 and np.any(start[keep[1:]] < start[keep[:-1]]):
        keep = keep[np.argsort(start[keep], kind="stable")]
    k_start = start[keep]
    k_end = np.asarray(end, dtype=np.int64)[keep]
    if len(keep) > 1 and np.any(k_start[1:] < k_end[:-1]):
        raise BadSkymapError("localization pixels overlap (order-29 ranges not disjoint)")
    log2_width = _log2_width(k_start, k_end)
    cells, lo, hi = kernels.cell_pairs(k_start, k_end, cell_shift(cell_order))
    del k_end
    has_distance = distmu is not None and distsigma is not None
    if has_distance:
        mean, std = conditional_distance_moments(np.asarray(distmu, np.float64)[keep],
                                                 np.asarray(distsigma, np.float64)[keep])
    else:
        mean = std = _nan_view(len(keep))
    return PackedLocalization(
        start=k_start, log2_width=log2_width,
        credible_level=np.asarray(credible_level, np.float64)[keep],
        searched_area=np.asarray(searched_area, np.float64)[keep],
        prob_density=np.asarray(probdensity, np.float64)[keep] / DEG2_PER_SR,
        distance_mean=mean, distance_std=std,
        cells=cells, cell_lo=lo, cell_hi=hi, cell_order=cell_order, has_distance=has_distance,
    )


def pack_localization(localization: Localization, *, max_credible_level: float,
                      cell_order: int = DEFAULT_CELL_ORDER) -> PackedLocalization:
    """:func:`pack_pixels` of a :class:`mmcross.model.localization.Localization`.

    Leaves the localization's credible-region caches in place; a caller that keeps only
    the packed pixels may call ``localization.release_caches()`` afterwards."""
    start, end = localization.ranges29()
    return pack_pixels(
        start, end, localization.credible_levels(), localization.searched_areas_deg2(),
        localization.probdensity, localization.distmu, localization.distsigma,
        max_credible_level=max_credible_level, cell_order=cell_order,
    )


def _grown(a: np.ndarray, n: int, fill: float | int | None = None) -> np.ndarray:
    """``a`` (first axis) grown to at least ``n`` rows, capacity doubled; new rows ``fill``."""
    if len(a) >= n:
        return a
    out = np.empty((max(n, 2 * len(a), 16),) + a.shape[1:], a.dtype)
    out[:len(a)] = a
    if fill is not None:
        out[len(a):] = fill
    return out


@dataclass
class _Slots:
    """The index entries of one live event: its slots, and its pixel rows (pixel maps)."""

    slots: np.ndarray
    order: int
    rows: slice | None


class LiveSky:
    """The live events, added and removed one at a time, with their cell index.

    Event numbers are slots reused after removal. Per event: ``kind`` (int8,
    :data:`kernels.PIXEL_MAP` or the analytic region's kind), ``params`` (the region's kernel
    parameters), ``chord2`` (squared chord of the cap holding the region's credible region at
    ``max_credible_level``), ``tmin``/``tmax`` (MJD TAI window), ``alive``.

    Pixel maps keep their packed pixels (only those with credible level <= the configured
    level) in pooled rows: ``start``, ``log2_width``, ``values`` (credible level, searched
    area deg^2, density per deg^2), ``distance`` (mean, std Mpc; NaN without), indexed by
    cells of order ``cell_order``. An analytic region keeps no pixels: it is indexed by the
    cells of the coarsest order (<= ``cell_order``) whose pixels are at least as large as its
    cap, i.e. a handful of cells, and matched in closed form
    (:func:`mmcross.model.regions.evaluate`).

    Adding or removing an event costs its own pixels and cells only. Pixel rows freed by
    removals are reclaimed by compacting the pool once they outnumber the live rows (the
    pixel maps' rows are moved and their slots shifted; nothing is recomputed).
    """

    def __init__(self, max_credible_level: float,
                 cell_order: int = DEFAULT_CELL_ORDER) -> None:
        cell_shift(cell_order)
        self.max_credible_level = float(max_credible_level)
        self.cell_order = cell_order
        self.level_offset = np.zeros(cell_order + 2, np.int64)
        for k in range(cell_order + 1):
            self.level_offset[k + 1] = self.level_offset[k] + 12 * 4**k
        self.head = np.full(int(self.level_offset[-1]), -1, np.int64)
        self._level_count = np.zeros(cell_order + 1, np.int64)
        # slots
        self.slots = np.empty((0, 4), np.int64)  # columns kernels.NEXT, EVENT, LO, HI
        self.slot_head = np.empty(0, np.int64)
        self._free_slots: list[int] = []
        self._n_slots = 0
        # events
        self.kind = np.empty(0, np.int8)
        self.params = np.empty((0, N_PARAMS), np.float64)
        self.chord2 = np.empty(0, np.float64)
        self.tmin = np.empty(0, np.float64)
        self.tmax = np.empty(0, np.float64)
        self.alive = np.empty(0, np.bool_)
        self._event_slots: dict[int, _Slots] = {}
        self._free_events: list[int] = []
        self._n_events = 0
        # pixel rows
        self.start = np.empty(0, np.int64)
        self.log2_width = np.empty(0, np.int8)
        self.values = np.empty((0, 3), np.float64)
        self.distance = np.empty((0, 2), np.float64)
        self._n_rows = 0
        self._live_rows = 0

    # -- bookkeeping -----------------------------------------------------------------------

    @property
    def n_events(self) -> int:
        """Number of live events."""
        return len(self._event_slots)

    @property
    def capacity(self) -> int:
        """Number of event numbers in use or free (the length of the per-event arrays)."""
        return self._n_events

    @property
    def n_pixels(self) -> int:
        """Packed pixel rows of the live pixel maps."""
        return self._live_rows

    @property
    def levels(self) -> np.ndarray:
        """The cell orders that index at least one event (int64, ascending)."""
        return np.flatnonzero(self._level_count).astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index, the per-event arrays and the pixel pool."""
        arrays = ("head", "slots", "slot_head", "kind", "params", "chord2", "tmin", "tmax",
                  "alive", "start", "log2_width", "values", "distance")
        return sum(getattr(self, a).nbytes for a in arrays)

    def event_nbytes(self, e: int) -> int:
        """Bytes used by event ``e``: its per-event entries, slots and pixel rows."""
        per_event = (self.kind.itemsize + self.params[0].nbytes + self.chord2.itemsize
                     + self.tmin.itemsize + self.tmax.itemsize + self.alive.itemsize)
        entry = self._event_slots[e]
        per_slot = self.slots[0].nbytes + self.slot_head.itemsize
        rows = 0 if entry.rows is None else entry.rows.stop - entry.rows.start
        per_row = 8 + 1 + 3 * 8 + 2 * 8
        return per_event + per_slot * len(entry.slots) + per_row * rows

    def _new_event(self, kind: int, tmin: float, tmax: float) -> int:
        if self._free_events:
            e = self._free_events.pop()
        else:
            e = self._n_events
            self._n_events += 1
            n = self._n_events
            self.kind = _grown(self.kind, n, kernels.PIXEL_MAP)
            self.params = _grown(self.params, n, 0.0)
            self.chord2 = _grown(self.chord2, n, -1.0)
            self.tmin = _grown(self.tmin, n, np.inf)
            self.tmax = _grown(self.tmax, n, -np.inf)
            self.alive = _grown(self.alive, n, False)
        self.kind[e] = kind
        self.tmin[e], self.tmax[e] = tmin, tmax
        self.alive[e] = True
        return e

    def _link(self, e: int, order: int, cells: np.ndarray, lo: np.ndarray,
              hi: np.ndarray, rows: slice | None) -> None:
        k = len(cells)
        free = self._free_slots[-k:] if k else []
        del self._free_slots[len(self._free_slots) - len(free):]
        fresh = k - len(free)
        first = self._n_slots
        self._n_slots += fresh
        n = self._n_slots
        self.slots = _grown(self.slots, n, -1)
        self.slot_head = _grown(self.slot_head, n, -1)
        slots = np.concatenate([np.asarray(free, np.int64),
                                np.arange(first, first + fresh, dtype=np.int64)])
        self.slots[slots, kernels.EVENT] = e
        self.slots[slots, kernels.LO] = lo
        self.slots[slots, kernels.HI] = hi
        kernels.link_slots(self.head, self.slots, self.slot_head, slots,
                           self.level_offset[order] + np.asarray(cells, np.int64))
        self._level_count[order] += 1
        self._event_slots[e] = _Slots(slots, order, rows)

    # -- adding and removing ---------------------------------------------------------------

    def add_pixels(self, packed: PackedLocalization, tmin: float, tmax: float) -> int:
        """Add a packed pixel map with time window [tmin, tmax] (MJD TAI); returns its event
        number."""
        if packed.cell_order != self.cell_order:
            raise ValueError(f"localization packed at cell order {packed.cell_order}, not "
                             f"{self.cell_order}")
        e = self._new_event(kernels.PIXEL_MAP, tmin, tmax)
        n = len(packed)
        r0 = self._n_rows
        self._n_rows += n
        self._live_rows += n
        self.start = _grown(self.start, self._n_rows)
        self.log2_width = _grown(self.log2_width, self._n_rows)
        self.values = _grown(self.values, self._n_rows)
        self.distance = _grown(self.distance, self._n_rows)
        rows = slice(r0, r0 + n)
        self.start[rows] = packed.start
        self.log2_width[rows] = packed.log2_width
        for k, name in enumerate(_SKY_COLUMNS):
            self.values[rows, k] = getattr(packed, name)
        self.distance[rows, 0] = packed.distance_mean
        self.distance[rows, 1] = packed.distance_std
        self._link(e, self.cell_order, packed.cells, packed.cell_lo + r0, packed.cell_hi + r0,
                   rows)
        return e

    def region_cells(self, region: AnalyticRegion) -> tuple[int, np.ndarray, float]:
        """(cell order, cells overlapping the cap of ``region``'s credible region at the
        configured level, squared chord of that cap)."""
        radius = math.radians(region.cap_radius(self.max_credible_level))
        radius = min(radius * (1 + 1e-9) + 1e-12, math.pi)
        order = self.cell_order
        while order > 0 and _PIXRAD[order] < radius:
            order -= 1
        vec = region.params[0:3]
        cells = hp.query_disc(1 << order, vec, radius, inclusive=True, nest=True)
        chord2 = (2.0 * math.sin(0.5 * radius)) ** 2
        return order, np.sort(np.asarray(cells, np.int64)), chord2

    def add_region(self, region: AnalyticRegion, tmin: float, tmax: float) -> int:
        """Add an analytic region with time window [tmin, tmax] (MJD TAI); returns its event
        number."""
        order, cells, chord2 = self.region_cells(region)
        e = self._new_event(region.kind, tmin, tmax)
        self.params[e] = region.params
        self.chord2[e] = chord2
        zeros = np.zeros(len(cells), np.int64)
        self._link(e, order, cells, zeros, zeros, None)
        return e

    def remove(self, e: int) -> None:
        """Remove event ``e`` (its number becomes free)."""
        entry = self._event_slots.pop(e)
        kernels.unlink_slots(self.head, self.slots, self.slot_head, entry.slots)
        self._level_count[entry.order] -= 1
        self._free_slots.extend(entry.slots.tolist())
        self.alive[e] = False
        self.kind[e] = kernels.PIXEL_MAP
        self.chord2[e] = -1.0
        self.tmin[e], self.tmax[e] = np.inf, -np.inf
        self._free_events.append(e)
        if entry.rows is not None:
            self._live_rows -= entry.rows.stop - entry.rows.start
            if self._n_rows - self._live_rows > max(self._live_rows, 1 << 16):
                self._compact()

    def _compact(self) -> None:
        """Move the live pixel maps' rows to the front of the pool and shift their slots."""
        shift = np.zeros(self._n_events, np.int64)
        at = 0
        for e, entry in sorted(self._event_slots.items(), key=lambda kv: (
                kv[1].rows.start if kv[1].rows is not None else -1)):
            if entry.rows is None:
                continue
            n = entry.rows.stop - entry.rows.start
            src, dst = entry.rows, slice(at, at + n)
            for a in (self.start, self.log2_width, self.values, self.distance):
                a[dst] = a[src]
            shift[e] = at - src.start
            self.slots[entry.slots, kernels.LO] += shift[e]
            self.slots[entry.slots, kernels.HI] += shift[e]
            entry.rows = dst
            at += n
        log.debug("pixel pool compacted: %d -> %d rows", self._n_rows, at)
        self._n_rows = at

    def rows(self, e: int) -> slice | None:
        """Pixel map ``e``'s rows in the pool (``None`` for an analytic region)."""
        return self._event_slots[e].rows

    def view(self, e: int) -> PackedLocalization | None:
        """Pixel map ``e``'s packed pixels as views into the pool (``None`` for a region)."""
        entry = self._event_slots[e]
        if entry.rows is None:
            return None
        rows = entry.rows
        lo = self.slots[entry.slots, kernels.LO]
        order = np.argsort(lo, kind="stable")
        cells = (self.slot_head[entry.slots] - self.level_offset[self.cell_order])[order]
        has = bool(rows.stop > rows.start and np.isfinite(self.distance[rows.start, 0]))
        return PackedLocalization(
            start=self.start[rows], log2_width=self.log2_width[rows],
            credible_level=self.values[rows, 0], searched_area=self.values[rows, 1],
            prob_density=self.values[rows, 2], distance_mean=self.distance[rows, 0],
            distance_std=self.distance[rows, 1], cells=cells,
            cell_lo=lo[order] - rows.start,
            cell_hi=self.slots[entry.slots, kernels.HI][order] - rows.start,
            cell_order=self.cell_order, has_distance=has)

    # -- matching --------------------------------------------------------------------------

    def match(self, ipix: np.ndarray, vec: np.ndarray, mjd: np.ndarray, active: np.ndarray,
              capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`kernels.match_kernel` over the live events (``active`` per event number)."""
        return kernels.match_kernel(
            ipix, vec, mjd, self.levels, self.level_offset, self.head, self.slots, self.kind,
            self.params, self.chord2,
            self.tmin, self.tmax, active & self.alive[:self._n_events], self.start,
            self.log2_width, self.values, self.distance, self.max_credible_level, *GL_NODES,
            capacity)

"""Packing many localizations into flat arrays with a coarse HEALPix cell lookup.

Only the pixels that can match are kept: those whose credible level (ligo.skymap's
``searched_prob``) is at most the configured level. Each kept pixel is stored as its
order-29 NESTED range ``[start, start + 2**log2_width)`` (int64 start, int8 log2 of the
width) with precomputed per-pixel values:

* ``credible_level`` (0..1) and ``searched_area`` (deg^2) of the smallest credible region
  containing the pixel (greedy ordering by probability density, as ligo.skymap);
* ``prob_density`` per deg^2 (the map's PROBDENSITY per sr times ``(pi/180)^2``);
* ``distance_mean``/``distance_std`` (Mpc), conditional on the pixel, NaN without distance
  (stored only for maps with distance layers; a zero-memory NaN view otherwise).

:class:`PackedSky` concatenates the packed localizations of the live events and indexes them
by coarse NESTED cells of order ``cell_order`` (sorted (cell, event) pairs, CSR layout), so
that an alert only visits the events whose matchable region touches its cell, and there only
the few pixels of that event inside the cell. Memory: 33 bytes per kept pixel (49 with
distance); :meth:`PackedSky.view` gives each event's pixels as views into the concatenated
arrays, so that a caller can keep those instead of a second copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmcross.matchers import kernels
from mmcross.matchers.distance import conditional_distance_moments
from mmcross.model.errors import BadSkymapError

if TYPE_CHECKING:
    from mmcross.model.localization import Localization

DEG2_PER_SR = (180.0 / math.pi) ** 2
DEFAULT_CELL_ORDER = 6  # coarse cells of ~0.84 deg^2 (0.92 deg across)


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


class PackedSky:
    """Packed localizations of many events, concatenated, with the coarse cell lookup.

    Event number ``e`` is the position in the sequence given to the constructor. Pixel
    rows are the concatenation of the events' pixels (``pixel_offset[e]:pixel_offset[e+1]``
    are event ``e``'s): ``start`` (int64) and ``log2_width`` (int8) give each row's order-29
    range, ``values`` (float64, row-major, columns ``credible_level``, ``searched_area``,
    ``prob_density``, also available as column views) the per-pixel values. Distance
    moments are stored only for events with distance: ``distance`` (float64, ``(m, 2)``:
    mean, std), event ``e``'s rows from ``distance_offset[e]`` (-1: no distance).
    :meth:`gather` reads all :data:`VALUE_COLUMNS` of chosen rows. The pairs of coarse cell
    ``c`` are ``cell_ptr[c]:cell_ptr[c+1]`` in ``pair_event``/``pair_lo``/``pair_hi``
    (global pixel numbers), in event order within a cell.
    """

    def __init__(self, items: Sequence[PackedLocalization],
                 cell_order: int = DEFAULT_CELL_ORDER) -> None:
        for i, item in enumerate(items):
            if item.cell_order != cell_order:
                raise ValueError(f"localization {i} packed at cell order {item.cell_order}, "
                                 f"not {cell_order}")
        self.cell_order = cell_order
        self.shift = cell_shift(cell_order)
        self.n_events = len(items)
        sizes = np.array([len(it) for it in items], dtype=np.int64)
        self.pixel_offset = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        n = self.n_pixels
        self.start = np.empty(n, np.int64)
        self.log2_width = np.empty(n, np.int8)
        # row-major values: one match reads one row (cache friendly)
        self.values = np.empty((n, len(_SKY_COLUMNS)), np.float64)
        with_distance = [it.has_distance for it in items]
        dist_sizes = np.where(with_distance, sizes, 0)
        dist_start = np.concatenate(([0], np.cumsum(dist_sizes)))
        self.distance_offset = np.where(with_distance, dist_start[:-1], -1).astype(np.int64)
        self.distance = np.empty((int(dist_start[-1]), 2), np.float64)
        for e, it in enumerate(items):
            rows = slice(self.pixel_offset[e], self.pixel_offset[e + 1])
            self.start[rows] = it.start
            self.log2_width[rows] = it.log2_width
            for k, name in enumerate(_SKY_COLUMNS):
                self.values[rows, k] = getattr(it, name)
            if it.has_distance:
                d = slice(dist_start[e], dist_start[e + 1])
                self.distance[d, 0] = it.distance_mean
                self.distance[d, 1] = it.distance_std
        for k, name in enumerate(_SKY_COLUMNS):
            setattr(self, name, self.values[:, k])
        n_pairs = np.array([len(it.cells) for it in items], dtype=np.int64)
        self._cells = [it.cells for it in items]
        self._cell_lo = [it.cell_lo for it in items]
        self._cell_hi = [it.cell_hi for it in items]
        if items:
            cells = np.concatenate(self._cells)
            event = np.repeat(np.arange(len(items), dtype=np.int64), n_pairs)
            shift_by = np.repeat(self.pixel_offset[:-1], n_pairs)
            lo = np.concatenate(self._cell_lo) + shift_by
            hi = np.concatenate(self._cell_hi) + shift_by
        else:
            cells = event = lo = hi = np.empty(0, np.int64)
        ncell = 12 * 4**cell_order
        self.cell_ptr, order = kernels.group_by_cell(cells, ncell)
        self.pair_event = event[order]
        self.pair_lo = lo[order]
        self.pair_hi = hi[order]

    @property
    def n_pixels(self) -> int:
        return int(self.pixel_offset[-1])

    @property
    def end(self) -> np.ndarray:
        """int64 end (exclusive) of each row's order-29 range (computed)."""
        return self.start + (np.int64(1) << self.log2_width.astype(np.int64))

    def gather(self, event: np.ndarray, row: np.ndarray) -> dict[str, np.ndarray]:
        """The :data:`VALUE_COLUMNS` (new float64 arrays) of global pixel rows ``row``
        belonging to events ``event`` (distance NaN for events without distance)."""
        out = kernels.gather_kernel(np.asarray(event, np.int64), np.asarray(row, np.int64),
                                    self.values, self.distance, self.distance_offset,
                                    self.pixel_offset)
        return dict(zip(VALUE_COLUMNS, out, strict=True))

    def view(self, e: int) -> PackedLocalization:
        """Event ``e``'s packed pixels as views into this sky's arrays (no copy)."""
        rows = slice(self.pixel_offset[e], self.pixel_offset[e + 1])
        n = rows.stop - rows.start
        off = self.distance_offset[e]
        if off >= 0:
            mean, std = self.distance[off:off + n, 0], self.distance[off:off + n, 1]
        else:
            mean = std = _nan_view(n)
        return PackedLocalization(
            start=self.start[rows], log2_width=self.log2_width[rows],
            credible_level=self.credible_level[rows], searched_area=self.searched_area[rows],
            prob_density=self.prob_density[rows], distance_mean=mean, distance_std=std,
            cells=self._cells[e], cell_lo=self._cell_lo[e], cell_hi=self._cell_hi[e],
            cell_order=self.cell_order, has_distance=bool(off >= 0))

    @property
    def nbytes(self) -> int:
        arrays = ["start", "log2_width", "values", "distance", "cell_ptr", "pair_event",
                  "pair_lo", "pair_hi"]
        return sum(getattr(self, name).nbytes for name in arrays)

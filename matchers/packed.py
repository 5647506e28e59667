"""Packing many localizations into flat arrays with a coarse HEALPix cell lookup.

Only the pixels that can match are kept: those whose credible level (ligo.skymap's
``searched_prob``) is at most the configured level. Each kept pixel is stored as its
order-29 NESTED range ``[start, end)`` with precomputed per-pixel values:

* ``credible_level`` (0..1) and ``searched_area`` (deg^2) of the smallest credible region
  containing the pixel (greedy ordering by probability density, as ligo.skymap);
* ``prob_density`` per deg^2 (the map's PROBDENSITY per sr times ``(pi/180)^2``);
* ``distance_mean``/``distance_std`` (Mpc), conditional on the pixel, NaN without distance.

:class:`PackedSky` concatenates the packed localizations of the live events and indexes them
by coarse NESTED cells of order ``cell_order`` (sorted (cell, event) pairs, CSR layout), so
that an alert only visits the events whose matchable region touches its cell, and there only
the few pixels of that event inside the cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from matchers import kernels
from matchers.distance import conditional_distance_moments
from mmcross.errors import BadSkymapError

if TYPE_CHECKING:
    from mmcross.localization import Localization

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
        start, end: int64 order-29 NESTED ranges ``[start, end)``.
        credible_level: float64, 0..1.
        searched_area: float64, deg^2.
        prob_density: float64, per deg^2.
        distance_mean, distance_std: float64 Mpc, NaN where the map has no distance.
        cells: int64 coarse cells (order ``cell_order``) touched, ascending.
        cell_lo, cell_hi: int64, local pixel index range ``[lo, hi)`` inside each cell.
        cell_order: order of ``cells``.
    """

    start: np.ndarray
    end: np.ndarray
    credible_level: np.ndarray
    searched_area: np.ndarray
    prob_density: np.ndarray
    distance_mean: np.ndarray
    distance_std: np.ndarray
    cells: np.ndarray
    cell_lo: np.ndarray
    cell_hi: np.ndarray
    cell_order: int

    def __len__(self) -> int:
        return len(self.start)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in _ARRAYS)


VALUE_COLUMNS = ("credible_level", "searched_area", "prob_density", "distance_mean",
                 "distance_std")
"""Per-pixel values reported for a match, the columns of :attr:`PackedSky.values`."""
_ARRAYS = ("start", "end", *VALUE_COLUMNS, "cells", "cell_lo", "cell_hi")


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
    keep = keep[np.argsort(start[keep], kind="stable")]
    k_start = start[keep]
    k_end = np.asarray(end, dtype=np.int64)[keep]
    if len(keep) > 1 and np.any(k_start[1:] < k_end[:-1]):
        raise BadSkymapError("localization pixels overlap (order-29 ranges not disjoint)")
    if distmu is not None and distsigma is not None:
        mean, std = conditional_distance_moments(np.asarray(distmu, np.float64)[keep],
                                                 np.asarray(distsigma, np.float64)[keep])
    else:
        mean = np.full(len(keep), np.nan)
        std = np.full(len(keep), np.nan)
    cells, lo, hi = kernels.cell_pairs(k_start, k_end, cell_shift(cell_order))
    return PackedLocalization(
        start=k_start, end=k_end,
        credible_level=np.asarray(credible_level, np.float64)[keep],
        searched_area=np.asarray(searched_area, np.float64)[keep],
        prob_density=np.asarray(probdensity, np.float64)[keep] / DEG2_PER_SR,
        distance_mean=mean, distance_std=std,
        cells=cells, cell_lo=lo, cell_hi=hi, cell_order=cell_order,
    )


def pack_localization(localization: Localization, *, max_credible_level: float,
                      cell_order: int = DEFAULT_CELL_ORDER) -> PackedLocalization:
    """:func:`pack_pixels` of a :class:`mmcross.localization.Localization`."""
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
    are event ``e``'s): ``ranges`` (int64, ``[start, end)`` per row) and ``values`` (float64,
    columns :data:`VALUE_COLUMNS`); ``start``, ``end``, ``credible_level``... are column
    views. The pairs of coarse cell ``c`` are ``cell_ptr[c]:cell_ptr[c+1]`` in
    ``pair_event``/``pair_lo``/``pair_hi`` (global pixel numbers), in event order within a
    cell.
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
        # row-major tables: one alert lookup touches one row of each (cache friendly)
        self.ranges = np.empty((self.n_pixels, 2), np.int64)
        self.values = np.empty((self.n_pixels, len(VALUE_COLUMNS)), np.float64)
        for e, it in enumerate(items):
            rows = slice(self.pixel_offset[e], self.pixel_offset[e + 1])
            self.ranges[rows, 0] = it.start
            self.ranges[rows, 1] = it.end
            for k, name in enumerate(VALUE_COLUMNS):
                self.values[rows, k] = getattr(it, name)
        self.start, self.end = self.ranges[:, 0], self.ranges[:, 1]
        for k, name in enumerate(VALUE_COLUMNS):
            setattr(self, name, self.values[:, k])
        n_pairs = np.array([len(it.cells) for it in items], dtype=np.int64)
        if items:
            cells = np.concatenate([it.cells for it in items])
            event = np.repeat(np.arange(len(items), dtype=np.int64), n_pairs)
            shift_by = np.repeat(self.pixel_offset[:-1], n_pairs)
            lo = np.concatenate([it.cell_lo for it in items]) + shift_by
            hi = np.concatenate([it.cell_hi for it in items]) + shift_by
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
    def nbytes(self) -> int:
        arrays = ["ranges", "values", "cell_ptr", "pair_event", "pair_lo", "pair_hi"]
        return sum(getattr(self, name).nbytes for name in arrays)

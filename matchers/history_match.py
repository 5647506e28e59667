"""Retro-matching: the remembered alerts inside a new localization, by range search.

The alert history (:class:`~mmcross.model.history.AlertHistory`) is sorted by order-29
HEALPix NESTED index. A multi-order sky map is a set of order-29 index ranges (one per NUNIQ
pixel), so the alerts inside its matchable pixels (credible level at most the configured
one, as the matcher packs them) are found by two binary searches per range over each sorted
run; only those hits are filtered by time and handed to the matcher for scoring. Nothing is
done per remembered alert: the cost grows with the number of ranges and hits, not with the
size of the history.
"""

from __future__ import annotations

import numba
import numpy as np

from mmcross.model.alert import AlertBatch
from mmcross.model.history import AlertHistory, SortedRun
from mmcross.model.localization import Localization


def credible_ranges(localization: Localization, max_credible_level: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Order-29 NESTED ranges ``[start, end)`` (int64, sorted, adjacent ones merged) of the
    pixels whose credible level (ligo.skymap's ``searched_prob``) is at most
    ``max_credible_level``."""
    keep = localization.credible_levels() <= max_credible_level
    start, end = localization.ranges29()
    start, end = start[keep], end[keep]
    if len(start) == 0:
        return start, end
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    first = np.r_[True, start[1:] != end[:-1]]  # a range not continuing the previous one
    last = np.r_[first[1:], True]
    return start[first], end[last]


@numba.njit(cache=True, nogil=True)
def _hits_kernel(pix, mjd, starts, ends, tmin, tmax):
    """Rows of ``pix`` (sorted) inside any ``[starts[k], ends[k])`` with tmin <= mjd <= tmax,
    ascending."""
    lo = np.searchsorted(pix, starts)
    hi = np.searchsorted(pix, ends)
    total = 0
    for k in range(lo.shape[0]):
        total += hi[k] - lo[k]
    out = np.empty(total, np.int64)
    n = 0
    for k in range(lo.shape[0]):
        for j in range(lo[k], hi[k]):
            t = mjd[j]
            if t >= tmin and t <= tmax:
                out[n] = j
                n += 1
    return out[:n]


def range_hits(pix: np.ndarray, mjd_tai: np.ndarray, starts: np.ndarray, ends: np.ndarray,
               start_mjd_tai: float, end_mjd_tai: float) -> np.ndarray:
    """Positions (int64, ascending) of the sorted ``pix`` inside the sorted, disjoint ranges
    ``[starts, ends)`` whose time is in ``[start_mjd_tai, end_mjd_tai]`` (MJD TAI)."""
    if len(pix) == 0 or len(starts) == 0:
        return np.empty(0, np.int64)
    return _hits_kernel(pix, mjd_tai, np.asarray(starts, np.int64), np.asarray(ends, np.int64),
                        float(start_mjd_tai), float(end_mjd_tai))


def history_hits(history: AlertHistory, starts: np.ndarray, ends: np.ndarray,
                 start_mjd_tai: float, end_mjd_tai: float) -> list[tuple[SortedRun, np.ndarray]]:
    """(run, rows) of the remembered alerts inside the order-29 ranges and the time interval
    (MJD TAI, edges included; expired alerts never), runs without hits left out."""
    start_mjd_tai = max(start_mjd_tai, history.oldest_kept_mjd_tai)
    out = []
    for run in history.runs:
        if run.tmax < start_mjd_tai or run.tmin > end_mjd_tai:
            continue
        rows = range_hits(run.pix, run.mjd_tai, starts, ends, start_mjd_tai, end_mjd_tai)
        if len(rows):
            out.append((run, rows))
    return out


@numba.njit(cache=True, nogil=True)
def _pixel_hits_kernel(pix, mjd, start, log2_width, tmin, tmax):
    """(row, pixel) of the rows of ``pix`` (sorted) inside packed pixel
    ``[start[k], start[k] + 2**log2_width[k])`` with tmin <= mjd <= tmax, by pixel."""
    end = start + (np.int64(1) << log2_width.astype(np.int64))
    lo = np.searchsorted(pix, start)
    hi = np.searchsorted(pix, end)
    total = 0
    for k in range(lo.shape[0]):
        total += hi[k] - lo[k]
    rows = np.empty(total, np.int64)
    pixels = np.empty(total, np.int64)
    n = 0
    for k in range(lo.shape[0]):
        for j in range(lo[k], hi[k]):
            t = mjd[j]
            if t >= tmin and t <= tmax:
                rows[n] = j
                pixels[n] = k
                n += 1
    return rows[:n], pixels[:n]


def pixel_hits(history: AlertHistory, start: np.ndarray, log2_width: np.ndarray,
               start_mjd_tai: float, end_mjd_tai: float
               ) -> list[tuple[SortedRun, np.ndarray, np.ndarray]]:
    """(run, rows, pixel) of the remembered alerts inside packed pixels (order-29 starts and
    log2 widths, sorted by start, disjoint: :class:`~mmcross.matchers.packed.
    PackedLocalization`) and the time interval (MJD TAI, edges included; expired alerts
    never): ``pixel[i]`` is the position in ``start`` of the pixel holding ``rows[i]``. The
    scores of a packed pixel map are then read per pixel, with no per-alert lookup."""
    start_mjd_tai = max(start_mjd_tai, history.oldest_kept_mjd_tai)
    out = []
    if len(start) == 0:
        return out
    start = np.asarray(start, np.int64)
    log2_width = np.asarray(log2_width, np.int8)
    for run in history.runs:
        if run.tmax < start_mjd_tai or run.tmin > end_mjd_tai:
            continue
        rows, pixels = _pixel_hits_kernel(run.pix, run.mjd_tai, start, log2_width,
                                          float(start_mjd_tai), float(end_mjd_tai))
        if len(rows):
            out.append((run, rows, pixels))
    return out


def history_in_ranges(history: AlertHistory, starts: np.ndarray, ends: np.ndarray,
                      start_mjd_tai: float, end_mjd_tai: float) -> AlertBatch:
    """The remembered alerts of :func:`history_hits` as one batch without packets."""
    out = AlertBatch.concatenate([
        history.batch_of(run, rows)
        for run, rows in history_hits(history, starts, ends, start_mjd_tai, end_mjd_tai)])
    out.packets = out.sources = None
    return out


def retro_candidates(history: AlertHistory, localization: Localization | None,
                     max_credible_level: float, start_mjd_tai: float,
                     end_mjd_tai: float) -> AlertBatch:
    """The remembered alerts that may match a newly announced localization in the time
    interval (MJD TAI): for a multi-order sky map, those inside its pixels at credible level
    at most ``max_credible_level`` (range search); for an analytic region (evaluated in
    closed form by the matcher, never rasterised here) every alert of the interval. The
    matcher scores them (and decides: this is a superset of its matches)."""
    if not isinstance(localization, Localization) or localization.region is not None:
        return history.between(start_mjd_tai, end_mjd_tai)
    starts, ends = credible_ranges(localization, max_credible_level)
    return history_in_ranges(history, starts, ends, start_mjd_tai, end_mjd_tai)

"""Retro-matching: the remembered alerts inside a new sky map, by range search.

The alert history (:class:`~mmcross.model.history.AlertHistory`) is sorted by order-29
HEALPix NESTED index. A packed multi-order sky map is a set of disjoint order-29 index
ranges, one per matchable pixel (credible level at most the configured one), so the alerts
inside it are found by two binary searches per pixel over each sorted run, filtered by
time; each hit comes with its pixel, whose scores the matcher precomputed
(:meth:`~mmcross.matchers.matcher.Matcher.retro`). Nothing is done per remembered alert: the
cost grows with the number of pixels and hits, not with the size of the history.
"""

from __future__ import annotations

import numba
import numpy as np

from mmcross.model.history import AlertHistory, SortedRun


@numba.njit(cache=True, nogil=True)
def _range_rows(pix, mjd, starts, ends, tmin, tmax):
    """(row, range) of the rows of ``pix`` (sorted) inside ``[starts[k], ends[k])`` (sorted,
    disjoint) with tmin <= mjd <= tmax, range by range."""
    lo = np.searchsorted(pix, starts)
    hi = np.searchsorted(pix, ends)
    total = 0
    for k in range(lo.shape[0]):
        total += hi[k] - lo[k]
    rows = np.empty(total, np.int64)
    which = np.empty(total, np.int64)
    n = 0
    for k in range(lo.shape[0]):
        for j in range(lo[k], hi[k]):
            t = mjd[j]
            if t >= tmin and t <= tmax:
                rows[n] = j
                which[n] = k
                n += 1
    return rows[:n], which[:n]


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
    end = start + (np.int64(1) << np.asarray(log2_width, np.int64))
    for run in history.runs:
        if run.tmax < start_mjd_tai or run.tmin > end_mjd_tai:
            continue
        rows, pixels = _range_rows(run.pix, run.mjd_tai, start, end, float(start_mjd_tai),
                                   float(end_mjd_tai))
        if len(rows):
            out.append((run, rows, pixels))
    return out

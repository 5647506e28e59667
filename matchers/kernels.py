"""Private numba kernels of the matcher, on plain arrays (no mmcross types).

Sky positions are HEALPix NESTED pixel indices at order 29 (``nside = 2**29``), the finest
level, so any multi-order pixel of order ``k`` is the half-open range of order-29 indices
``[ipix << 2(29-k), (ipix + 1) << 2(29-k))``. A "coarse cell" is a NESTED pixel at a small
order ``K``: the cell of an order-29 index ``x`` is ``x >> 2(29-K)``.

All kernels are ``@njit(cache=True)``: compiled once per machine, then loaded from
``__pycache__`` at the next start.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ORDER_MAX = 29


@njit(cache=True)
def cell_pairs(start: np.ndarray, end: np.ndarray,
               shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse cells touched by a set of disjoint order-29 ranges sorted by start.

    Args:
        start, end: int64 order-29 ranges ``[start, end)``, sorted, disjoint.
        shift: ``2 * (29 - K)`` for coarse cells of order ``K``.

    Returns:
        ``(cells, lo, hi)``: the distinct cells (ascending, int64) and for each the index range
        ``[lo, hi)`` of the ranges that overlap it.
    """
    n = start.shape[0]
    total = 0
    for j in range(n):
        total += ((end[j] - 1) >> shift) - (start[j] >> shift) + 1
    cells = np.empty(total, np.int64)
    lo = np.empty(total, np.int64)
    hi = np.empty(total, np.int64)
    m = 0
    for j in range(n):
        c0 = start[j] >> shift
        c1 = (end[j] - 1) >> shift
        for c in range(c0, c1 + 1):
            if m > 0 and cells[m - 1] == c:
                hi[m - 1] = j + 1
            else:
                cells[m] = c
                lo[m] = j
                hi[m] = j + 1
                m += 1
    return cells[:m], lo[:m], hi[:m]


@njit(cache=True)
def match_kernel(ipix: np.ndarray, mjd: np.ndarray, shift: int,
                 cell_ptr: np.ndarray, pair_event: np.ndarray, pair_lo: np.ndarray,
                 pair_hi: np.ndarray, tmin: np.ndarray, tmax: np.ndarray,
                 active: np.ndarray, start: np.ndarray, log2_width: np.ndarray,
                 capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (alert, event) pairs where the alert lies in a packed pixel of the event and
    inside the event's time window, with the number of that pixel.

    Args:
        ipix: int64 order-29 NESTED index of each alert (sorting the alerts by it first
            makes memory access much more local).
        mjd: float64 alert time (MJD TAI, days).
        shift: ``2 * (29 - K)`` for the coarse cell order ``K`` of the index.
        cell_ptr: int64, size ``12 * 4**K + 1``; the pairs of cell ``c`` are
            ``cell_ptr[c]:cell_ptr[c + 1]``.
        pair_event: int64 event number of each (cell, event) pair.
        pair_lo, pair_hi: int64 range of global pixel numbers of that event inside that cell.
        tmin, tmax: float64 per event, window ``tmin <= mjd <= tmax`` (MJD TAI).
        active: bool per event; inactive events are skipped.
        start: int64 ``(npix,)``, first order-29 index of every packed pixel (per event
            sorted; the pixels are disjoint).
        log2_width: int8 ``(npix,)``, the pixel spans ``2**log2_width`` order-29 indices
            (``2 * (29 - order)``), i.e. ``[start, start + 2**log2_width)``.
        capacity: initial size of the outputs (they grow by doubling when full).

    Returns:
        ``(alert_index, event_index, pixel_index)``: int64 arrays in the order of the alerts;
        the caller gathers the per-pixel values with ``pixel_index``.
    """
    n = ipix.shape[0]
    cap = max(16, capacity)
    out = np.empty((cap, 3), np.int64)
    m = 0
    for i in range(n):
        x = ipix[i]
        t = mjd[i]
        c = x >> shift
        for p in range(cell_ptr[c], cell_ptr[c + 1]):
            e = pair_event[p]
            if not active[e] or t < tmin[e] or t > tmax[e]:
                continue
            lo = pair_lo[p]
            a = lo
            b = pair_hi[p]
            while a < b:  # first pixel starting after x
                mid = (a + b) >> 1
                if start[mid] <= x:
                    a = mid + 1
                else:
                    b = mid
            j = a - 1
            if j < lo or x - start[j] >= (np.int64(1) << np.int64(log2_width[j])):
                continue
            if m == cap:
                cap *= 2
                grown = np.empty((cap, 3), np.int64)
                grown[:m] = out[:m]
                out = grown
            out[m, 0] = i
            out[m, 1] = e
            out[m, 2] = j
            m += 1
    return out[:m, 0].copy(), out[:m, 1].copy(), out[:m, 2].copy()


@njit(cache=True)
def group_by_cell(cells: np.ndarray, ncell: int) -> tuple[np.ndarray, np.ndarray]:
    """Counting sort of pair numbers by cell (stable: pairs keep their order within a cell).

    Returns ``(cell_ptr, order)``: the pairs of cell ``c`` are ``order[cell_ptr[c]:cell_ptr[c+1]]``.
    """
    ptr = np.zeros(ncell + 1, np.int64)
    for c in cells:
        ptr[c + 1] += 1
    for c in range(ncell):
        ptr[c + 1] += ptr[c]
    fill = ptr[:-1].copy()
    order = np.empty(cells.shape[0], np.int64)
    for k in range(cells.shape[0]):
        c = cells[k]
        order[fill[c]] = k
        fill[c] += 1
    return ptr, order


@njit(cache=True)
def gather_kernel(event: np.ndarray, row: np.ndarray, values: np.ndarray,
                  distance: np.ndarray, distance_offset: np.ndarray,
                  pixel_offset: np.ndarray) -> np.ndarray:
    """Per-pixel values of matched rows in one pass.

    Args:
        event, row: int64 event number and global pixel row of each match.
        values: float64 ``(npix, 3)`` credible level, searched area (deg^2), density (per deg^2).
        distance: float64 ``(ndist, 2)`` conditional distance mean and std (Mpc) of the events
            that have distance layers; ``distance_offset[e]`` is event ``e``'s first row there
            (-1 when it has none) and ``pixel_offset[e]`` its first global pixel row.

    Returns:
        float64 ``(5, nmatch)``: credible level, searched area, density, distance mean and std
        (NaN without distance).
    """
    n = row.shape[0]
    out = np.empty((5, n), np.float64)
    for k in range(n):
        j = row[k]
        out[0, k] = values[j, 0]
        out[1, k] = values[j, 1]
        out[2, k] = values[j, 2]
        e = event[k]
        off = distance_offset[e]
        if off >= 0:
            r = off + j - pixel_offset[e]
            out[3, k] = distance[r, 0]
            out[4, k] = distance[r, 1]
        else:
            out[3, k] = np.nan
            out[4, k] = np.nan
    return out

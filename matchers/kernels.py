"""Private numba kernels of the matcher, on plain arrays (no mmcross types).

Sky positions are HEALPix NESTED pixel indices at order 29 (``nside = 2**29``), the finest
level, so any multi-order pixel of order ``k`` is the half-open range of order-29 indices
``[ipix << 2(29-k), (ipix + 1) << 2(29-k))``. A "cell" is a NESTED pixel at a small order
``K``: the cell of an order-29 index ``x`` is ``x >> 2(29-K)``.

The cell index of the live events is a set of singly linked lists, one per cell of each
order 0..K in use (``head[level_offset[K] + cell]`` is the first slot of the cell, ``-1``
when empty), so that adding or removing one event touches only its own slots. A slot is a
row of ``slots`` (int64, one cache line per slot): the next slot of its list
(:data:`NEXT`, -1 at the end), its event (:data:`EVENT`) and, for pixel maps, the range
``[LO, HI)`` of the event's pixel rows inside the cell.

All kernels are ``@njit(cache=True)``: compiled once per machine, then loaded from
``__pycache__`` at the next start.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from mmcross.model.regions import evaluate

ORDER_MAX = 29
PIXEL_MAP = -1
NEXT, EVENT, LO, HI = 0, 1, 2, 3
"""Columns of the ``slots`` array."""
"""``kind`` of an event matched through its packed pixels (other kinds: analytic regions)."""


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
def link_slots(head: np.ndarray, slots: np.ndarray, slot_head: np.ndarray, ids: np.ndarray,
               heads: np.ndarray) -> None:
    """Push slot ``ids[k]`` at the front of the list ``heads[k]`` (an index into ``head``);
    ``slot_head`` remembers each slot's list for :func:`unlink_slots`."""
    for k in range(ids.shape[0]):
        s, h = ids[k], heads[k]
        slots[s, NEXT] = head[h]
        head[h] = s
        slot_head[s] = h


@njit(cache=True)
def unlink_slots(head: np.ndarray, slots: np.ndarray, slot_head: np.ndarray,
                 ids: np.ndarray) -> None:
    """Remove slots ``ids`` from their lists (a walk of each slot's own cell list)."""
    for k in range(ids.shape[0]):
        s = ids[k]
        h = slot_head[s]
        prev = -1
        cur = head[h]
        while cur != s:
            prev = cur
            cur = slots[cur, NEXT]
        if prev < 0:
            head[h] = slots[s, NEXT]
        else:
            slots[prev, NEXT] = slots[s, NEXT]
        slots[s, NEXT] = -1
        slot_head[s] = -1


@njit(cache=True)
def _grow1(a: np.ndarray, n: int, cap: int) -> np.ndarray:
    out = np.empty(cap, a.dtype)
    out[:n] = a[:n]
    return out


@njit(cache=True)
def group_by_cell(ipix: np.ndarray, cell_order: int) -> np.ndarray:
    """Positions of ``ipix`` (order-29 NESTED) grouped by their order-``cell_order`` cell,
    cells ascending, original order within a cell (a stable counting sort, O(n)): alerts
    that share cells are matched one after the other, so the cell lists stay in cache."""
    shift = 2 * (ORDER_MAX - cell_order)
    n_cells = 12 * (np.int64(1) << (2 * cell_order))
    first = np.zeros(n_cells + 1, np.int64)
    for i in range(ipix.shape[0]):
        first[(ipix[i] >> shift) + 1] += 1
    for c in range(n_cells):
        first[c + 1] += first[c]
    out = np.empty(ipix.shape[0], np.int64)
    for i in range(ipix.shape[0]):
        c = ipix[i] >> shift
        out[first[c]] = i
        first[c] += 1
    return out


@njit(cache=True, error_model="numpy")
def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees ICRS."""
    n = ra.shape[0]
    out = np.empty((n, 3))
    for i in range(n):
        a, d = math.radians(ra[i]), math.radians(dec[i])
        cd = math.cos(d)
        out[i, 0] = cd * math.cos(a)
        out[i, 1] = cd * math.sin(a)
        out[i, 2] = math.sin(d)
    return out


@njit(cache=True, error_model="numpy")
def match_kernel(ipix: np.ndarray, vec: np.ndarray, mjd: np.ndarray, levels: np.ndarray,
                 level_offset: np.ndarray, head: np.ndarray, slots: np.ndarray,
                 kind: np.ndarray, params: np.ndarray, chord2: np.ndarray,
                 tmin: np.ndarray, tmax: np.ndarray, active: np.ndarray,
                 start: np.ndarray, log2_width: np.ndarray, values: np.ndarray,
                 distance: np.ndarray, max_level: float, gx: np.ndarray, gw: np.ndarray,
                 capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (alert, event) pairs where the alert is in the event's credible region at
    ``max_level`` and inside its time window, with the values of the match.

    Args:
        ipix: int64 order-29 NESTED index of each alert (sorted first for locality).
        vec: float64 ``(n, 3)`` unit vector of each alert; mjd: alert time (MJD TAI, days).
        levels: the cell orders in use; ``level_offset[K]`` is the offset of order ``K``'s
            cells in ``head``.
        head, slots: the cell lists (module docstring).
        kind: int8 per event, :data:`PIXEL_MAP` or the region kind for :func:`evaluate`;
            params: float64 ``(n_events, N_PARAMS)`` region parameters; chord2: squared
            chord from the region centre beyond which its credible level exceeds
            ``max_level`` (a quick rejection; the level itself decides).
        tmin, tmax: float64 per event, window ``tmin <= mjd <= tmax`` (MJD TAI).
        active: bool per event; inactive events are skipped.
        start, log2_width: packed pixel rows ``[start, start + 2**log2_width)`` (order 29,
            sorted within each event), all of them with credible level <= ``max_level``;
            values: ``(rows, 3)`` credible level, searched area (deg^2), density (per deg^2);
            distance: ``(rows, 2)`` conditional distance mean and std (Mpc, NaN without).
        gx, gw: Gauss-Legendre nodes for :func:`evaluate`.
        capacity: initial size of the outputs (they grow by doubling when full).

    Returns:
        ``(alert_index, event_index, values)`` (views into the output buffers): int64
        arrays in the order of the alerts and float64 ``(5, m)`` credible level, searched
        area (deg^2), density (per deg^2), distance mean and std (Mpc, NaN without).
    """
    n = ipix.shape[0]
    cap = max(16, capacity)
    ai = np.empty(cap, np.int64)
    ei = np.empty(cap, np.int64)
    out = np.empty((5, cap), np.float64)
    i, m = _match_into(0, 0, ai, ei, out, ipix, vec, mjd, levels, level_offset, head, slots,
                       kind, params, chord2, tmin, tmax, active, start, log2_width, values,
                       distance, max_level, gx, gw)
    while i < n:  # the buffers filled up at alert i: grow them, go on from there
        cap *= 2
        ai = _grow1(ai, m, cap)
        ei = _grow1(ei, m, cap)
        grown = np.empty((5, cap), np.float64)
        grown[:, :m] = out[:, :m]
        out = grown
        i, m = _match_into(i, m, ai, ei, out, ipix, vec, mjd, levels, level_offset, head,
                           slots, kind, params, chord2, tmin, tmax, active, start, log2_width,
                           values, distance, max_level, gx, gw)
    return ai[:m], ei[:m], out[:, :m]


@njit(cache=True, error_model="numpy")
def _match_into(i0: int, m0: int, ai: np.ndarray, ei: np.ndarray, out: np.ndarray,
                ipix: np.ndarray, vec: np.ndarray, mjd: np.ndarray, levels: np.ndarray,
                level_offset: np.ndarray, head: np.ndarray, slots: np.ndarray,
                kind: np.ndarray, params: np.ndarray, chord2: np.ndarray, tmin: np.ndarray,
                tmax: np.ndarray, active: np.ndarray, start: np.ndarray,
                log2_width: np.ndarray, values: np.ndarray, distance: np.ndarray,
                max_level: float, gx: np.ndarray, gw: np.ndarray) -> tuple[int, int]:
    """The matches of alerts ``i0, i0 + 1, ...`` written from row ``m0`` of the buffers;
    stops before the first alert whose matches do not fit. Returns ``(i, m)``: the next
    alert to do (``ipix.shape[0]`` when done) and the rows written. The buffers are never
    replaced in here, which keeps this loop free of reference counting."""
    sr_to_deg2 = (180.0 / math.pi) ** 2
    n = ipix.shape[0]
    cap = ai.shape[0]
    m = m0
    for i in range(i0, n):
        first = m  # this alert's first row: rolled back to if the buffers fill up
        x = ipix[i]
        t = mjd[i]
        for li in range(levels.shape[0]):
            order = levels[li]
            s = head[level_offset[order] + (x >> (2 * (ORDER_MAX - order)))]
            while s >= 0:
                e = slots[s, EVENT]
                lo = slots[s, LO]
                hi = slots[s, HI]
                s = slots[s, NEXT]
                if not active[e] or t < tmin[e] or t > tmax[e]:
                    continue
                if kind[e] == PIXEL_MAP:
                    if hi <= lo:
                        continue
                    j = lo  # the last pixel starting at or before x (branch-free halving)
                    width = hi - lo
                    while width > 1:
                        half = width >> 1
                        j = j + half if start[j + half] <= x else j
                        width -= half
                    if start[j] > x or x - start[j] >= (np.int64(1) << np.int64(log2_width[j])):
                        continue
                    cl, area, dens = values[j, 0], values[j, 1], values[j, 2]
                    d_mean, d_std = distance[j, 0], distance[j, 1]
                else:
                    # the quick rejection reads the centre in place (no row view per visit)
                    dx = vec[i, 0] - params[e, 0]
                    dy = vec[i, 1] - params[e, 1]
                    dz = vec[i, 2] - params[e, 2]
                    if dx * dx + dy * dy + dz * dz > chord2[e]:
                        continue
                    cl, dens_sr, area_sr = evaluate(kind[e], params[e], vec[i, 0], vec[i, 1],
                                                    vec[i, 2], gx, gw)
                    if cl > max_level:
                        continue
                    area = area_sr * sr_to_deg2
                    dens = dens_sr / sr_to_deg2
                    d_mean, d_std = np.nan, np.nan
                if m == cap:
                    return i, first
                ai[m] = i
                ei[m] = e
                out[0, m] = cl
                out[1, m] = area
                out[2, m] = dens
                out[3, m] = d_mean
                out[4, m] = d_std
                m += 1
    return n, m

"""Joint false-alarm rates of a GW candidate and an external trigger, as ligo-raven computes them.

Plain functions on arrays (NUNIQ pixel ids, densities per steradian), ported from
``ligo.raven.search`` 3.3 (``coinc_far`` and ``skymap_overlap_integral``) and from gwcelery
3.0's publication rule (``gwcelery.tasks.raven.trigger_raven_alert``); the tests compare them
with ligo-raven's own functions on real LVK maps. Units: FARs and rates in Hz, times in
seconds, densities per steradian, positions in degrees ICRS.

RAVEN's sky-map overlap is a numerical approximation: it samples the external map at the
external pixel whose *centre* is nearest to each GW pixel centre (or the GW map at the pixel
centre nearest to a point). :func:`overlap_moc_moc` reproduces that figure;
:func:`overlap_exact` integrates the product of two multi-order maps exactly on their common
refinement, reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import astropy_healpix as ah
import erfa
import numpy as np
from astropy import units as u
from numba import njit

if TYPE_CHECKING:
    from scipy.spatial import KDTree

from mmcross.model.errors import ConfigError
from mmcross.model.localization import (
    MAX_ORDER,
    order_ipix_to_uniq,
    pixel_area_sr_of_order,
    uniq_to_order_ipix,
    uniq_to_ranges29,
)

SECONDS_PER_YEAR = 3600.0 * 24.0 * 365.0
"""The year ligo-raven and gwcelery convert per-year rates with (365 days), s."""

GCN_GRB_RATE = 310.0 / SECONDS_PER_YEAR
"""ligo-raven's default rate of independent GRB discoveries (Fermi, Swift, INTEGRAL, AGILE), Hz."""

SUBTHRESHOLD_EXTRA_RATE = 65.0 / SECONDS_PER_YEAR
"""ligo-raven's added rate of subthreshold GRBs for the ``SubGRB`` search, Hz."""

TARGETED_DEFAULT_THRESHOLDS = {"Fermi": (1.0 / (3600 * 24), 1.0 / 10000),
                               "Swift": (2.0 / (3600 * 24), 1.0 / 1000)}
"""ligo-raven's (GW FAR, GRB FAR) maxima of the targeted search when none are given, Hz."""

FOUR_PI = 4.0 * np.pi


def temporal_far(gw_far: float, tl: float, th: float, search: str, *,
                 em_rate: float | None = None, ext_far: float | None = None,
                 pipeline: str = "", far_gw_thresh: float | None = None,
                 far_grb_thresh: float | None = None) -> float:
    """Temporal coincidence FAR (Hz) of a GW candidate and an external trigger.

    ``ligo.raven.search.coinc_far``: for searches ``GRB``/``MDC`` and ``SubGRB``,
    ``(th - tl) * em_rate * gw_far`` (``em_rate`` defaults to RAVEN's GRB rates); for
    ``SubGRBTargeted`` the product of two uniform FAR distributions,
    ``z (1 - ln(z / z_max))`` with ``z = (th - tl) ext_far gw_far``.

    Args:
        gw_far: GW candidate FAR, Hz.
        tl, th: the coincidence window, s (only its width ``th - tl`` matters).
        search: RAVEN search: ``GRB``, ``MDC``, ``SubGRB`` or ``SubGRBTargeted``.
        em_rate: rate of external triggers of that search, Hz.
        ext_far: external trigger FAR, Hz (targeted search only).
        pipeline: ``Fermi`` or ``Swift`` (targeted search only).
        far_gw_thresh, far_grb_thresh: FAR maxima of the targeted search, Hz.

    Raises:
        ConfigError: a search RAVEN does not know, or a targeted search without FARs.
    """
    width = th - tl
    if search in ("GRB", "MDC"):
        return width * (em_rate if em_rate else GCN_GRB_RATE) * gw_far
    if search == "SubGRB":
        return width * (em_rate if em_rate else GCN_GRB_RATE + SUBTHRESHOLD_EXTRA_RATE) * gw_far
    if search == "SubGRBTargeted":
        if pipeline not in TARGETED_DEFAULT_THRESHOLDS:
            raise ConfigError(f"targeted subthreshold search needs pipeline Fermi or Swift, "
                              f"got {pipeline!r}")
        if ext_far is None:
            raise ConfigError(f"targeted subthreshold search of {pipeline} without a FAR")
        default_gw, default_grb = TARGETED_DEFAULT_THRESHOLDS[pipeline]
        z = width * ext_far * gw_far
        z_max = width * (far_grb_thresh or default_grb) * (far_gw_thresh or default_gw)
        return z * (1.0 - math.log(z / z_max))
    raise ConfigError(f"RAVEN search {search!r} not one of GRB, MDC, SubGRB, SubGRBTargeted")


def spacetime_far(temporal: float, overlap: float) -> float:
    """Space-time coincidence FAR (Hz): temporal FAR / sky-map overlap (inf for no overlap)."""
    return temporal / overlap if overlap > 0 else math.inf


def trials_weighted_far(joint_far: float, trials_factor: float) -> float:
    """The joint FAR gwcelery 3.0 compares with the publication threshold, Hz.

    ``gwcelery.tasks.raven.trigger_raven_alert``:
    ``coinc_far * trials_factor * (trials_factor - 1.)``, written as gwcelery has it.
    """
    return joint_far * trials_factor * (trials_factor - 1.0)


# ------------------------------------------------------------------ sky-map overlaps

def pixel_centres(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of the centres of NUNIQ pixels, radians, as ligo-raven computes them
    (``astropy_healpix.healpix_to_lonlat``, NESTED)."""
    level, ipix = ah.uniq_to_level_ipix(np.asarray(uniq, dtype=np.int64))
    lon, lat = ah.healpix_to_lonlat(ipix, ah.level_to_nside(level), order="nested")
    return lon.to_value(u.rad), lat.to_value(u.rad)


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Unit vectors (N, 3) of positions in radians, with erfa's ``s2c`` as astropy has them."""
    return erfa.s2c(ra, dec)




_AREA_SR = pixel_area_sr_of_order(np.arange(MAX_ORDER + 1))


def _areas(uniq: np.ndarray) -> np.ndarray:
    order, _ = uniq_to_order_ipix(uniq)
    return _AREA_SR[order]


@dataclass(frozen=True, eq=False)
class MocMap:
    """A multi-order map: NUNIQ ids and probability density per sr (any normalisation).

    What the overlaps need of it (pixel areas, centres, KD-tree, sorted ranges) is computed
    once per map, on first use."""

    uniq: np.ndarray
    density: np.ndarray

    @cached_property
    def areas(self) -> np.ndarray:
        """Pixel areas, sr."""
        return _areas(self.uniq)

    @cached_property
    def norm(self) -> float:
        """Total probability sum(|density| * area) (dimensionless)."""
        return float(np.sum(np.abs(self.density) * self.areas))

    @cached_property
    def centres(self) -> np.ndarray:
        """Unit vectors (N, 3) of the pixel centres."""
        return _unit_vectors(*pixel_centres(self.uniq))

    @cached_property
    def tree(self) -> KDTree:
        """The KD-tree of the pixel centres, built as astropy's ``match_to_catalog_sky``
        builds it, so that ties between equidistant centres break the same way."""
        from scipy.spatial import KDTree  # here: scipy costs ~0.15 s of start-up

        return KDTree(self.centres, compact_nodes=False, balanced_tree=False)

    @cached_property
    def ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end) order-29 ranges sorted by start, and the pixel index of each."""
        start, end = uniq_to_ranges29(self.uniq)
        order = np.argsort(start, kind="stable")
        return start[order], end[order], order


def overlap_moc_moc(gw: MocMap, ext: MocMap) -> float:
    """RAVEN's sky-map overlap integral of two multi-order maps (dimensionless).

    ``4 pi sum_i p_gw,i A_i p_ext(nearest centre to i) / (N_gw N_ext)``: each GW pixel takes
    the density of the external pixel whose centre is nearest to its own centre, as
    ``ligo.raven.search.skymap_overlap_integral`` (``match_to_catalog_sky``) does.
    """
    _, nearest = ext.tree.query(gw.centres)
    return float(np.sum(np.abs(gw.density) * gw.areas * np.abs(ext.density)[nearest])
                 * FOUR_PI / gw.norm / ext.norm)


def overlap_moc_point(gw: MocMap, ra: float, dec: float) -> float:
    """RAVEN's overlap of a multi-order GW map with a point (degrees ICRS): ``4 pi p_gw / N_gw``
    at the GW pixel whose centre is nearest to the point (dimensionless)."""
    _, k = gw.tree.query(_unit_vectors(np.radians([ra]), np.radians([dec]))[0])
    return float(abs(gw.density[k]) * FOUR_PI / gw.norm)


def overlap_moc_flat(gw: MocMap, ext_prob: np.ndarray, *, nested: bool = True) -> float:
    """RAVEN's overlap of a multi-order GW map with a flat external map of probabilities per
    pixel (NESTED or RING): the external pixel holding each GW pixel centre (dimensionless)."""
    density = np.abs(gw.density)
    ext_prob = np.abs(np.asarray(ext_prob, dtype=np.float64))
    nside = ah.npix_to_nside(len(ext_prob))
    ra, dec = pixel_centres(gw.uniq)
    k = ah.lonlat_to_healpix(ra * u.rad, dec * u.rad, nside,
                             order="nested" if nested else "ring")
    ext_area = FOUR_PI / len(ext_prob)
    return float(np.sum(density * gw.areas * ext_prob[k] / ext_area) * FOUR_PI
                 / gw.norm / np.sum(ext_prob))


@dataclass(frozen=True)
class Refinement:
    """Pixels of the common refinement of two multi-order maps where both have a pixel.

    Attributes:
        uniq: NUNIQ id of each common pixel (the finer of the two overlapping pixels).
        first, second: index of the pixel of the first / second map holding it.
    """

    uniq: np.ndarray
    first: np.ndarray
    second: np.ndarray


def common_refinement(first: MocMap, second: MocMap) -> Refinement:
    """Intersect two multi-order pixelisations. Nested pixels never partially overlap, so
    every order-29 range covered by both maps is one pixel of one of them: the finer of the
    two overlapping pixels."""
    parts = (first.ranges, second.ranges)
    lo, width, i1, i2 = _intersect_ranges(parts[0][0], parts[0][1], parts[1][0], parts[1][1])
    depth = MAX_ORDER - (np.log2(width.astype(np.float64)).round().astype(np.int64) >> 1)
    uniq = order_ipix_to_uniq(depth, lo >> (2 * (MAX_ORDER - depth)))
    return Refinement(uniq, parts[0][2][i1], parts[1][2][i2])


@njit(cache=True)
def _intersect_ranges(s1: np.ndarray, e1: np.ndarray, s2: np.ndarray,
                      e2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-pointer sweep of two sorted lists of disjoint [start, end) ranges: (start, width,
    index in list 1, index in list 2) of each non-empty intersection, in order."""
    n = len(s1) + len(s2)
    lo = np.empty(n, np.int64)
    width = np.empty(n, np.int64)
    i1 = np.empty(n, np.int64)
    i2 = np.empty(n, np.int64)
    i = j = k = 0
    while i < len(s1) and j < len(s2):
        a = max(s1[i], s2[j])
        b = min(e1[i], e2[j])
        if a < b:
            lo[k] = a
            width[k] = b - a
            i1[k] = i
            i2[k] = j
            k += 1
        if e1[i] <= e2[j]:
            i += 1
        else:
            j += 1
    return lo[:k], width[:k], i1[:k], i2[:k]


def overlap_exact(first: MocMap, second: MocMap) -> float:
    """Exact overlap integral ``4 pi int p1 p2 dOmega / (N1 N2)`` of two multi-order maps,
    computed on their common refinement (dimensionless; 1 for two uniform maps)."""
    ref = common_refinement(first, second)
    d1, d2 = np.abs(first.density), np.abs(second.density)
    return float(np.sum(d1[ref.first] * d2[ref.second] * _areas(ref.uniq)) * FOUR_PI
                 / first.norm / second.norm)


def combined_density(gw: MocMap, ext: MocMap) -> tuple[Refinement, np.ndarray]:
    """The normalised product of two multi-order maps (RAVEN/gwcelery ``combined-ext`` sky
    map, ``combine_skymaps_moc_moc``): the common refinement and the density per sr there.

    Returns an all-zero density when the maps do not overlap.
    """
    ref = common_refinement(gw, ext)
    density = gw.density[ref.first] * ext.density[ref.second]
    total = np.sum(density * _areas(ref.uniq))
    return ref, (density / total if total > 0 else density)

"""Sky localizations as multi-order HEALPix probability maps (NUNIQ, NESTED, ICRS).

:class:`Localization` is the single representation of every event's sky position: LVK
multi-order maps are kept as they come, flat maps (RING/NESTED) are converted to multi-order,
and circles, ellipses and boxes from GCN notices are rasterised by :mod:`mmcross.model.shapes`.

Conventions (as in ligo.skymap): ``uniq = 4 * 4**order + ipix`` with ``ipix`` NESTED at
``order`` (``nside = 2**order``); ``probdensity`` is per steradian; credible levels follow
ligo.skymap's greedy "searched probability". Positions are degrees ICRS.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
from astropy.io import fits
from mocpy import MOC

from mmcross.model.errors import BadSkymapError
from mmcross.model.regions import AnalyticRegion

log = logging.getLogger(__name__)

MAX_ORDER = 29
"""Deepest HEALPix order handled (nside 2**29, the NUNIQ limit of int64)."""

MAX_FLAT_ORDER = 11
"""Deepest order (nside 2048) of a flat (RING/NESTED) map that is accepted."""

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: A sky map read from FITS whose probabilities sum further than this from 1 is refused
#: (real LVK, IPN and BAYESTAR maps sum to 1 within 1e-14; float32 maps within ~1e-6).
TOTAL_TOLERANCE = 1e-3
"""Largest FITS file, after decompression, :meth:`Localization.from_fits` reads (bytes)."""

SR_TO_DEG2 = (180.0 / np.pi) ** 2
"""Square degrees per steradian."""

_KEPT_KEYWORDS = (
    "OBJECT", "REFERENC", "INSTRUME", "DATE-OBS", "MJD-OBS", "DATE", "CREATOR", "ORIGIN",
    "TELESCOP", "RUNTIME", "DISTMEAN", "DISTSTD", "LOGBCI", "LOGBSN", "VCSVERS", "HISTORY",
)
_GZIP_MAGIC = b"\x1f\x8b"
_DIST_COLUMNS = ("DISTMU", "DISTSIGMA", "DISTNORM")


# --------------------------------------------------------------------------------------------
# NUNIQ pixel arithmetic
# --------------------------------------------------------------------------------------------

def uniq_to_order_ipix(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split NUNIQ ids into (order, NESTED ipix), both int64. Exact for every order <= 29."""
    uniq = np.asarray(uniq, dtype=np.int64)
    if uniq.size and np.min(uniq) < 4:
        raise ValueError("NUNIQ ids must be >= 4")
    order = (np.floor(np.log2(uniq.astype(np.float64))).astype(np.int64) >> 1) - 1
    # log2 in float64 can round up just below a power of two: correct by integer comparison.
    order = np.where(uniq < (np.int64(4) << (2 * np.maximum(order, 0))), order - 1, order)
    order = np.where(uniq >= (np.int64(16) << (2 * np.maximum(order, 0))), order + 1, order)
    ipix = uniq - (np.int64(4) << (2 * order))
    return order, ipix


def order_ipix_to_uniq(order: np.ndarray | int, ipix: np.ndarray) -> np.ndarray:
    """NUNIQ ids (int64) of NESTED pixels ``ipix`` at HEALPix ``order``."""
    order = np.asarray(order, dtype=np.int64)
    return (np.int64(4) << (2 * order)) + np.asarray(ipix, dtype=np.int64)


def uniq_to_ranges29(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) order-29 NESTED index ranges (int64) covered by each NUNIQ pixel."""
    order, ipix = uniq_to_order_ipix(uniq)
    shift = 2 * (MAX_ORDER - order)
    return ipix << shift, (ipix + 1) << shift


def pixel_area_sr_of_order(order: np.ndarray | int) -> np.ndarray:
    """Area in steradians of one HEALPix pixel at ``order`` (4 pi / (12 * 4**order))."""
    return 4.0 * np.pi / (12.0 * 4.0 ** np.asarray(order, dtype=np.float64))


def radec_to_ipix29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """NESTED pixel index at order 29 (int64) of positions in degrees ICRS."""
    return np.asarray(
        hp.ang2pix(1 << MAX_ORDER, np.asarray(ra, np.float64), np.asarray(dec, np.float64),
                   nest=True, lonlat=True),
        dtype=np.int64,
    )


# --------------------------------------------------------------------------------------------
# The localization
# --------------------------------------------------------------------------------------------

class Localization:
    """Multi-order HEALPix probability map (NUNIQ, NESTED, ICRS) and the MOC of its support.

    Attributes:
        uniq: int64 NUNIQ pixel ids (any order <= 29), non-overlapping, sorted by the start of
            their order-29 NESTED range.
        probdensity: float64 probability per steradian; ``sum(probdensity * area_sr) == 1``.
        distmu, distsigma, distnorm: LVK distance layers (Mpc, Mpc, Mpc^-2) or ``None``.
        meta: FITS header keywords worth keeping (``OBJECT``, ``DATE-OBS``, ``CREATOR``...),
            plus ``"SHAPE"`` describing the analytic model for rasterised shapes.
        region: the analytic region of a localization made by :meth:`from_region` (``None``
            for pixel maps).
    """

    region: AnalyticRegion | None = None

    @classmethod
    def from_region(cls, region: AnalyticRegion,
                    rasterise: Callable[[], Localization]) -> Localization:
        """A localization evaluated in closed form from ``region``; ``rasterise()`` makes its
        pixel map when one is asked for (``uniq``, :meth:`credible_levels`, :meth:`moc`,
        :meth:`to_fits_bytes`...), kept until :meth:`release_caches`."""
        return _AnalyticLocalization(region, rasterise)

    def __init__(
        self,
        uniq: np.ndarray,
        probdensity: np.ndarray,
        distmu: np.ndarray | None = None,
        distsigma: np.ndarray | None = None,
        distnorm: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        normalize: bool = True,
        total_tolerance: float | None = None,
    ) -> None:
        uniq = np.asarray(uniq)
        if uniq.ndim != 1 or not np.issubdtype(uniq.dtype, np.integer):
            raise BadSkymapError(f"UNIQ must be a 1-d integer array, got {uniq.dtype} {uniq.shape}")
        uniq = uniq.astype(np.int64)
        density = np.asarray(probdensity, dtype=np.float64)
        n = len(uniq)
        if n == 0:
            raise BadSkymapError("sky map has no pixels")
        layers = {"distmu": distmu, "distsigma": distsigma, "distnorm": distnorm}
        given = {k: v is not None for k, v in layers.items()}
        if any(given.values()) and not all(given.values()):
            raise BadSkymapError("distance layers must be given all three or none: "
                                 f"{[k for k, g in given.items() if g]} given")
        arrays = {"probdensity": density}
        for k, v in layers.items():
            if v is not None:
                arrays[k] = np.asarray(v, dtype=np.float64)
        for k, v in arrays.items():
            if v.shape != (n,):
                raise BadSkymapError(f"{k} has shape {v.shape}, UNIQ has {n} pixels")
        if not np.all(np.isfinite(density)):
            i = int(np.flatnonzero(~np.isfinite(density))[0])
            raise BadSkymapError(f"probability density is not finite at pixel {i} (UNIQ {uniq[i]})")
        if np.any(density < 0):
            i = int(np.flatnonzero(density < 0)[0])
            raise BadSkymapError(
                f"negative probability density {density[i]!r} at pixel {i} (UNIQ {uniq[i]})")
        if np.min(uniq) < 4 or np.max(uniq) >= np.int64(16) << (2 * MAX_ORDER):
            raise BadSkymapError(
                f"UNIQ values out of range [4, 16*4**29): min {uniq.min()}, max {uniq.max()}")
        order, ipix = uniq_to_order_ipix(uniq)
        if np.any(ipix >= 12 * (np.int64(1) << (2 * order))):
            raise BadSkymapError("invalid UNIQ value (pixel index beyond 12*4**order)")
        start = ipix << (2 * (MAX_ORDER - order))
        sort = np.argsort(start, kind="stable")
        if np.any(sort[1:] < sort[:-1]):
            uniq, start, order = uniq[sort], start[sort], order[sort]
            for k in arrays:
                arrays[k] = arrays[k][sort]
        overlap = start[1:] < start[:-1] + (np.int64(1) << (2 * (MAX_ORDER - order[:-1])))
        if np.any(overlap):
            i = int(np.flatnonzero(overlap)[0])
            raise BadSkymapError(f"sky map pixels overlap: UNIQ {uniq[i]} and {uniq[i + 1]}")
        del start, overlap, ipix
        # Kept per pixel: uniq (int64), order (int8), densities (float64); order-29 ranges and
        # the credible-region caches are derived on demand (see release_caches).
        self.uniq = uniq
        self._order = order.astype(np.int8)
        del order
        self.probdensity = arrays["probdensity"]
        self.distmu = arrays.get("distmu")
        self.distsigma = arrays.get("distsigma")
        self.distnorm = arrays.get("distnorm")
        self.meta = dict(meta or {})
        self._cache: dict[str, Any] = {}
        total = self.total_probability
        if not (np.isfinite(total) and total > 0):
            raise BadSkymapError(f"sky map total probability is {total!r}, cannot normalise")
        if total_tolerance is not None and abs(total - 1.0) > total_tolerance:
            raise BadSkymapError(f"sky map probabilities sum to {total:.6g}, not 1 (within "
                                 f"{total_tolerance:g})")
        if normalize and total != 1.0:
            self.probdensity = self.probdensity / total

    # ------------------------------------------------------------------ basic properties
    @property
    def n_pixels(self) -> int:
        return len(self.uniq)

    @property
    def max_order(self) -> int:
        return int(self._order.max())

    @property
    def orders(self) -> np.ndarray:
        """HEALPix order of each pixel (int64; a new array, stored as int8)."""
        return self._order.astype(np.int64)

    @property
    def has_distance(self) -> bool:
        return self.distmu is not None

    @property
    def total_probability(self) -> float:
        """Sum over pixels of density x area (dimensionless; 1 after normalisation)."""
        return float(np.sum(self.probabilities()))

    def pixel_area_sr(self) -> np.ndarray:
        """Area of each pixel in steradians."""
        return pixel_area_sr_of_order(self._order)

    def probabilities(self) -> np.ndarray:
        """Probability in each pixel (dimensionless)."""
        return self.probdensity * self.pixel_area_sr()

    def ranges29(self) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) order-29 NESTED ranges (int64) of each pixel, sorted, non-overlapping.

        Computed from ``uniq`` at each call (new arrays, 16 bytes per pixel)."""
        start = self.starts29()
        return start, start + self.widths29()

    def starts29(self) -> np.ndarray:
        """Start of the order-29 NESTED range (int64) of each pixel, ascending (computed)."""
        shift = 2 * self._order.astype(np.int64)
        return (self.uniq - (np.int64(4) << shift)) << (2 * MAX_ORDER - shift)

    def widths29(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Number of order-29 pixels (int64) in pixels ``index`` (default all)."""
        return np.int64(1) << (2 * (MAX_ORDER - self._order[index].astype(np.int64)))

    def release_caches(self) -> None:
        """Drop the derived per-pixel caches (greedy order, cumulative probability and area,
        ties: 32 bytes per pixel). They are recomputed on the next credible-region call
        (:meth:`credible_levels`, :meth:`area`, :meth:`region_mask`...). Results don't change."""
        self._cache.clear()

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the derived caches (0 after :meth:`release_caches`)."""
        return sum(a.nbytes for v in self._cache.values()
                   for a in (v if isinstance(v, tuple) else (v,)))

    @property
    def nbytes(self) -> int:
        """Bytes of the per-pixel arrays held (pixels, densities, distance layers, caches)."""
        arrays = [self.uniq, self._order, self.probdensity, self.distmu, self.distsigma,
                  self.distnorm]
        return sum(a.nbytes for a in arrays if a is not None) + self.cache_nbytes

    def __repr__(self) -> str:
        obj = self.meta.get("OBJECT") or self.meta.get("SHAPE") or "?"
        return (f"Localization({obj}: {self.n_pixels} pixels, max order {self.max_order}, "
                f"90% area {self.area(0.9):.4g} deg2)")

    # ------------------------------------------------------------------ credible regions
    def _greedy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order of pixels by decreasing density, cumulative prob, cumulative area sr)."""
        if "greedy" not in self._cache:
            i = np.argsort(-self.probdensity, kind="stable")
            cum_prob = np.cumsum(self.probabilities()[i])
            cum_area = np.cumsum(self.pixel_area_sr()[i])
            self._cache["greedy"] = (i, cum_prob, cum_area)
        return self._cache["greedy"]

    def _tie_last(self) -> tuple[np.ndarray, np.ndarray]:
        """For each pixel, the position in greedy order of the last pixel of equal density."""
        if "tie_last" not in self._cache:
            i, _, _ = self._greedy()
            d = self.probdensity[i]
            # last index of each run of equal densities in the sorted sequence
            n = len(d)
            is_last = np.r_[d[1:] != d[:-1], True]
            ends = np.where(is_last, np.arange(n), n)
            pos_sorted = np.minimum.accumulate(ends[::-1])[::-1]  # O(n), no search
            pos = np.empty(len(d), dtype=np.int64)
            pos[i] = pos_sorted
            self._cache["tie_last"] = pos
        return self._cache["tie_last"]

    def credible_levels(self) -> np.ndarray:
        """Per pixel: the searched probability (0..1), i.e. the total probability of all pixels
        whose density is >= this pixel's (ligo.skymap's ``searched_prob``)."""
        _, cum_prob, _ = self._greedy()
        return np.minimum(cum_prob[self._tie_last()], 1.0)

    def searched_areas_deg2(self) -> np.ndarray:
        """Per pixel: area (deg^2) of all pixels whose density is >= this pixel's
        (ligo.skymap's ``searched_area``)."""
        _, _, cum_area = self._greedy()
        return cum_area[self._tie_last()] * SR_TO_DEG2

    def area(self, credible_level: float = 0.9) -> float:
        """Area (deg^2) of the smallest region holding ``credible_level`` of the probability,
        interpolated within the last pixel as ligo.skymap's ``contour_areas``."""
        if not 0 <= credible_level <= 1:
            raise ValueError(f"credible_level must be in [0, 1], got {credible_level}")
        _, cum_prob, cum_area = self._greedy()
        return float(np.interp(credible_level, np.pad(cum_prob, (1, 0)),
                               np.pad(cum_area, (1, 0)), right=4 * np.pi) * SR_TO_DEG2)

    def region_mask(self, credible_level: float = 0.9) -> np.ndarray:
        """Boolean per pixel: in the smallest (greedy) region holding ``credible_level``, i.e.
        pixels whose probability-ranked predecessors hold less than ``credible_level``.
        Zero-probability pixels are never included."""
        i, cum_prob, _ = self._greedy()
        before = cum_prob - self.probabilities()[i]
        mask = np.zeros(self.n_pixels, dtype=bool)
        mask[i] = (before < credible_level) & (self.probdensity[i] > 0)
        return mask

    def credible_ranges29(self, credible_level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Sorted, disjoint order-29 NESTED ranges ``[start, end)`` (int64, adjacent ones
        merged) covering every position whose credible level is <= ``credible_level``: the
        pixels of a pixel map whose ``searched_prob`` is at most that level."""
        keep = self.credible_levels() <= credible_level
        start, end = self.ranges29()
        return _merge_ranges(start[keep], end[keep])

    def moc(self, credible_level: float = 0.9) -> MOC:
        """MOC of the smallest region holding ``credible_level`` (see :meth:`region_mask`)."""
        mask = self.region_mask(credible_level)
        order, ipix = uniq_to_order_ipix(self.uniq[mask])
        if len(ipix) == 0:
            return MOC.new_empty(self.max_order)
        return MOC.from_healpix_cells(ipix.astype(np.uint64), order.astype(np.uint8),
                                      max_depth=self.max_order)

    # ------------------------------------------------------------------ point lookups
    def pixel_index(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Index (into ``uniq``) of the pixel holding each position (degrees ICRS), -1 where
        the map has no pixel."""
        p = radec_to_ipix29(ra, dec)
        start = self.starts29()
        k = np.searchsorted(start, p, side="right") - 1
        k0 = np.maximum(k, 0)
        inside = (k >= 0) & (p - start[k0] < self.widths29(k0))
        return np.where(inside, k, -1)

    def density_at(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Probability density (per sr) at positions in degrees ICRS (0 outside the map)."""
        k = self.pixel_index(ra, dec)
        return np.where(k >= 0, self.probdensity[np.maximum(k, 0)], 0.0)

    def credible_level_at(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Searched probability (0..1) at positions in degrees ICRS (1 outside the map)."""
        k = self.pixel_index(ra, dec)
        return np.where(k >= 0, self.credible_levels()[np.maximum(k, 0)], 1.0)

    def searched_area_at(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Searched area (deg^2) at positions in degrees ICRS (the whole sky outside the map)."""
        k = self.pixel_index(ra, dec)
        return np.where(k >= 0, self.searched_areas_deg2()[np.maximum(k, 0)],
                        4 * np.pi * SR_TO_DEG2)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random positions (ra, dec in degrees ICRS) drawn from the map: a pixel with
        probability equal to its probability, then uniformly within it (order-29 subpixel)."""
        cum = np.cumsum(self.probabilities())
        k = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
        k = np.minimum(k, self.n_pixels - 1)
        width = self.widths29(k)
        sub = self.starts29()[k] + np.minimum(
            (rng.random(n) * width.astype(np.float64)).astype(np.int64), width - 1)
        ra, dec = hp.pix2ang(1 << MAX_ORDER, sub, nest=True, lonlat=True)
        return np.asarray(ra, np.float64), np.asarray(dec, np.float64)

    # ------------------------------------------------------------------ FITS output
    def to_fits_bytes(self) -> bytes:
        """This map as a multi-order FITS file (``ORDERING=NUNIQ``; columns UNIQ, PROBDENSITY
        in sr^-1 and, when present, DISTMU/DISTSIGMA in Mpc and DISTNORM in Mpc^-2)."""
        cols = [
            fits.Column(name="UNIQ", format="K", array=self.uniq),
            fits.Column(name="PROBDENSITY", format="D", unit="sr-1", array=self.probdensity),
        ]
        if self.has_distance:
            cols += [
                fits.Column(name="DISTMU", format="D", unit="Mpc", array=self.distmu),
                fits.Column(name="DISTSIGMA", format="D", unit="Mpc", array=self.distsigma),
                fits.Column(name="DISTNORM", format="D", unit="Mpc-2", array=self.distnorm),
            ]
        hdu = fits.BinTableHDU.from_columns(cols)
        h = hdu.header
        h["PIXTYPE"] = ("HEALPIX", "HEALPIX pixelisation")
        h["ORDERING"] = ("NUNIQ", "Pixel ordering scheme: RING, NESTED, or NUNIQ")
        h["COORDSYS"] = ("C", "Ecliptic, Galactic or Celestial (equatorial)")
        h["MOCORDER"] = (self.max_order, "MOC resolution (best order)")
        h["INDXSCHM"] = ("EXPLICIT", "Indexing: IMPLICIT or EXPLICIT")
        for key, value in self.meta.items():
            if key in h or not isinstance(value, str | int | float | bool):
                continue
            if len(key) > 8:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h[key] = value
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
        return buf.getvalue()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_fits(cls, source: bytes | str | Path, *,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> Localization:
        """Read a HEALPix sky map FITS file (path or bytes, optionally gzip-compressed).

        Multi-order (``ORDERING=NUNIQ``) maps are kept as they are; flat maps (RING or NESTED,
        implicit or explicit indexing, NSIDE <= 2048) are converted to multi-order by merging
        groups of 4 sibling pixels with identical values, recursively. Per-pixel ``PROB`` /
        ``PROBABILITY`` columns and ``PROBDENSITY`` (sr^-1 or deg^-2) columns are accepted.

        Raises:
            BadSkymapError: unreadable, truncated, oversized (> ``max_bytes`` decompressed)
                maps, and maps whose probabilities are negative, not finite or do not sum to
                1 within :data:`TOTAL_TOLERANCE`, with the source named in the message.
        """
        where = f"{source}" if isinstance(source, str | Path) else f"<{len(source)} bytes>"
        raw = _read_limited(source, max_bytes, where)
        try:
            return _parse_fits(raw, where)
        except BadSkymapError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise BadSkymapError(f"cannot read sky map {where}: {exc}") from exc


class _AnalyticLocalization(Localization):
    """A :class:`Localization` of an analytic region: point lookups, areas and samples in
    closed form; the pixel attributes (``uniq``, ``probdensity``...) and everything computed
    from them come from the pixel map made on demand (see :meth:`Localization.from_region`)."""

    distmu = distsigma = distnorm = None

    def __init__(self, region: AnalyticRegion, rasterise: Callable[[], Localization]) -> None:
        self.region = region
        self.meta = {"SHAPE": region.describe()}
        self._rasterise = rasterise
        self._pixels: Localization | None = None

    def pixels(self) -> Localization:
        """The rasterised pixel map (made on first use)."""
        if self._pixels is None:
            self._pixels = self._rasterise()
        return self._pixels

    @property
    def uniq(self) -> np.ndarray:  # type: ignore[override]
        return self.pixels().uniq

    @property
    def probdensity(self) -> np.ndarray:  # type: ignore[override]
        return self.pixels().probdensity

    @property
    def _order(self) -> np.ndarray:  # type: ignore[override]
        return self.pixels()._order

    @property
    def _cache(self) -> dict[str, Any]:  # type: ignore[override]
        return self.pixels()._cache

    @property
    def total_probability(self) -> float:
        return 1.0

    def release_caches(self) -> None:
        """Drop the pixel map (made again when needed)."""
        self._pixels = None

    @property
    def cache_nbytes(self) -> int:
        return 0 if self._pixels is None else self._pixels.nbytes

    @property
    def nbytes(self) -> int:
        return self.region.params.nbytes + self.cache_nbytes

    def __repr__(self) -> str:
        return f"Localization({self.region.describe()}, 90% area {self.area(0.9):.4g} deg2)"

    def area(self, credible_level: float = 0.9) -> float:
        return self.region.area(credible_level)

    def density_at(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.region.density(ra, dec)

    def credible_level_at(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.region.credible_level(ra, dec)

    def searched_area_at(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.region.searched_area(ra, dec)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.region.sample(n, rng)

    def credible_ranges29(self, credible_level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """A superset for an analytic region, without pixels: the HEALPix pixels overlapping
        the cap that holds its credible region, at an order where they are about an eighth of
        the cap's radius (at most order 20)."""
        radius = math.radians(self.region.cap_radius(credible_level))
        radius = min(radius * (1 + 1e-9) + 1e-12, math.pi)
        order = int(np.clip(math.floor(math.log2(8.0 / radius)), 0, 20))
        ipix = np.sort(hp.query_disc(1 << order, self.region.params[0:3], radius,
                                     inclusive=True, nest=True).astype(np.int64))
        shift = 2 * (MAX_ORDER - order)
        return _merge_ranges(ipix << shift, (ipix + 1) << shift)


def _merge_ranges(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted disjoint ranges with adjacent ones merged."""
    if len(start) == 0:
        return start, end
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    first = np.r_[True, start[1:] != end[:-1]]  # a range not continuing the previous one
    last = np.r_[first[1:], True]
    return start[first], end[last]


# --------------------------------------------------------------------------------------------
# FITS reading
# --------------------------------------------------------------------------------------------

def _read_limited(source: bytes | str | Path, max_bytes: int, where: str) -> bytes:
    """The FITS bytes of ``source``, gunzipped, refusing anything over ``max_bytes``."""
    if isinstance(source, bytes | bytearray | memoryview):
        raw = bytes(source)
    elif isinstance(source, str | Path):
        try:
            size = os.path.getsize(source)
        except OSError as exc:
            raise BadSkymapError(f"cannot read sky map {where}: {exc}") from exc
        if size > max_bytes:
            raise BadSkymapError(f"sky map {where} is {size} bytes, over the {max_bytes} limit")
        with open(source, "rb") as f:
            raw = f.read()
    else:
        raise TypeError(f"sky map source must be bytes or a path, not {type(source).__name__}")
    if len(raw) > max_bytes:
        raise BadSkymapError(f"sky map {where} is {len(raw)} bytes, over the {max_bytes} limit")
    if raw[:2] == _GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                raw = gz.read(max_bytes + 1)
        except (OSError, EOFError) as exc:
            raise BadSkymapError(f"sky map {where}: bad gzip data: {exc}") from exc
        if len(raw) > max_bytes:
            raise BadSkymapError(
                f"sky map {where} decompresses to over the {max_bytes} byte limit")
    if not raw.startswith(b"SIMPLE  ="):
        raise BadSkymapError(f"sky map {where} is not a FITS file (no SIMPLE card)")
    return raw


def _find_table(hdus: fits.HDUList, where: str) -> fits.BinTableHDU:
    tables = [h for h in hdus if isinstance(h, fits.BinTableHDU)]
    if not tables:
        raise BadSkymapError(f"sky map {where} has no binary table extension")
    for h in tables:
        if str(h.header.get("PIXTYPE", "")).strip().upper() == "HEALPIX":
            return h
    return tables[0]


def _column(names: dict[str, str], *candidates: str) -> str | None:
    for c in candidates:
        if c in names:
            return names[c]
    return None


def _parse_fits(raw: bytes, where: str) -> Localization:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy chatter about non-standard cards
        with fits.open(io.BytesIO(raw), memmap=False) as hdus:
            table = _find_table(hdus, where)
            header = table.header
            n_rows = int(header.get("NAXIS2", 0))
            expected = int(header.get("NAXIS1", 0)) * n_rows
            if len(raw) < table._data_offset + expected:
                raise BadSkymapError(
                    f"sky map {where} is truncated: table needs {expected} bytes of data")
            data = table.data
            if data is None or len(data) == 0:
                raise BadSkymapError(f"sky map {where} has an empty table")
            meta = {k: header[k] for k in _KEPT_KEYWORDS if k in header and k != "HISTORY"}
            _check_frame(header, where)
            ordering = str(header.get("ORDERING", "")).strip().upper()
            names = {n.upper(): n for n in data.columns.names}
            if ordering == "NUNIQ" or "UNIQ" in names:
                return _parse_multiorder(data, names, meta, where)
            if ordering not in ("RING", "NESTED"):
                raise BadSkymapError(f"sky map {where}: unknown ORDERING {ordering!r}")
            return _parse_flat(data, header, names, ordering, meta, where)


def _check_frame(header: fits.Header, where: str) -> None:
    frame = str(header.get("COORDSYS", "C")).strip().upper()
    if frame not in ("C", "CEL", "Q", "EQ", "EQUATORIAL", "ICRS", "FK5", ""):
        raise BadSkymapError(
            f"sky map {where}: COORDSYS={frame!r}; only celestial (equatorial) maps are handled")


def _prob_column(data: Any, names: dict[str, str], where: str) -> tuple[str, bool, float]:
    """(column name, is a density, factor to per-sr density or to probability)."""
    col = _column(names, "PROBDENSITY", "PROB_DENSITY")
    if col is not None:
        unit = str(data.columns[col].unit or "").replace(" ", "").lower()
        per_deg2 = "deg" in unit
        return col, True, (SR_TO_DEG2 if per_deg2 else 1.0)
    col = _column(names, "PROB", "PROBABILITY")
    if col is not None:
        return col, False, 1.0
    raise BadSkymapError(
        f"sky map {where} has no probability column (PROBDENSITY, PROB or PROBABILITY); "
        f"columns are {list(data.columns.names)}")


def _layer(data: Any, name: str) -> np.ndarray:
    return np.asarray(data[name], dtype=np.float64).ravel()


def _parse_multiorder(data: Any, names: dict[str, str], meta: dict, where: str) -> Localization:
    if "UNIQ" not in names:
        raise BadSkymapError(f"multi-order sky map {where} has no UNIQ column")
    uniq = np.asarray(data[names["UNIQ"]]).ravel()
    col, is_density, factor = _prob_column(data, names, where)
    values = _layer(data, col) * factor
    if not is_density:
        order, _ = uniq_to_order_ipix(uniq.astype(np.int64))
        values = values / pixel_area_sr_of_order(order)
    dist = {k.lower(): _layer(data, names[k]) for k in _DIST_COLUMNS if k in names}
    if len(dist) != 3:
        dist = {}
    try:
        return Localization(uniq, values, meta=meta, total_tolerance=TOTAL_TOLERANCE, **dist)
    except BadSkymapError as exc:
        raise BadSkymapError(f"sky map {where}: {exc}") from exc


def _parse_flat(data: Any, header: fits.Header, names: dict[str, str], ordering: str,
                meta: dict, where: str) -> Localization:
    col, is_density, factor = _prob_column(data, names, where)
    values = np.asarray(data[col]).ravel()
    indexing = str(header.get("INDXSCHM", "IMPLICIT")).strip().upper()
    explicit = indexing == "EXPLICIT" or "PIXEL" in names
    if "NSIDE" in header:
        nside = int(header["NSIDE"])
    elif not explicit:
        nside = hp.npix2nside(len(values))
    else:
        raise BadSkymapError(f"explicit flat sky map {where} has no NSIDE keyword")
    if nside < 1 or nside & (nside - 1):
        raise BadSkymapError(f"sky map {where}: NSIDE={nside} is not a power of 2")
    order = nside.bit_length() - 1
    if order > MAX_FLAT_ORDER:
        raise BadSkymapError(
            f"sky map {where}: flat NSIDE={nside} is over the supported {1 << MAX_FLAT_ORDER}")
    npix = 12 * nside * nside
    layers = [values] + [np.asarray(data[names[k]]).ravel() for k in _DIST_COLUMNS
                         if k in names]
    has_dist = len(layers) == 4
    if not has_dist:
        layers = layers[:1]
    if explicit:
        if "PIXEL" not in names:
            raise BadSkymapError(f"explicit flat sky map {where} has no PIXEL column")
        pix = np.asarray(data[names["PIXEL"]], dtype=np.int64).ravel()
        if len(pix) != len(values) or np.any((pix < 0) | (pix >= npix)):
            raise BadSkymapError(f"sky map {where}: bad PIXEL column")
        full = []
        for k, layer in enumerate(layers):
            arr = np.full(npix, 0.0 if k == 0 else np.inf, dtype=layer.dtype.newbyteorder("="))
            arr[pix] = layer
            full.append(arr)
        layers = full
    elif len(values) != npix:
        raise BadSkymapError(
            f"sky map {where}: {len(values)} values for NSIDE={nside} (expected {npix})")
    layers = [np.asarray(x, dtype=x.dtype.newbyteorder("=")) for x in layers]
    prob = layers[0]
    bad = ~np.isfinite(prob) | (prob == hp.UNSEEN)
    if np.any(bad):
        log.warning("sky map %s: %d UNSEEN/NaN pixels taken as zero probability",
                    where, int(bad.sum()))
        prob = np.where(bad, 0, prob).astype(prob.dtype)
        layers[0] = prob
    if np.any(prob < 0):
        i = int(np.flatnonzero(prob < 0)[0])
        raise BadSkymapError(f"sky map {where}: negative probability {prob[i]!r} at pixel {i}")
    if ordering == "RING":
        layers = [_ring_to_nested(x, nside) for x in layers]
    uniq, leaves = _merge_equal_siblings(layers, order)
    density = leaves[0].astype(np.float64) * factor
    if not is_density:
        density /= pixel_area_sr_of_order(order)
    dist = {}
    if has_dist:
        dist = {k.lower(): leaves[j + 1].astype(np.float64) for j, k in enumerate(_DIST_COLUMNS)}
    log.info("sky map %s: flat NSIDE=%d %s -> %d multi-order pixels",
             where, nside, ordering, len(uniq))
    try:
        return Localization(uniq, density, meta=meta, total_tolerance=TOTAL_TOLERANCE, **dist)
    except BadSkymapError as exc:
        raise BadSkymapError(f"sky map {where}: {exc}") from exc


def _ring_to_nested(values: np.ndarray, nside: int) -> np.ndarray:
    """Reorder a RING map to NESTED in chunks (bounded memory for NSIDE 2048)."""
    npix = len(values)
    out = np.empty_like(values)
    chunk = 1 << 22
    for lo in range(0, npix, chunk):
        nest = np.arange(lo, min(lo + chunk, npix), dtype=np.int64)
        out[lo:lo + len(nest)] = values[hp.nest2ring(nside, nest)]
    return out


def _merge_equal_siblings(layers: list[np.ndarray],
                          order: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Merge groups of 4 NESTED siblings whose values are identical in every layer, recursively.

    Returns the NUNIQ ids of the leaves (sorted by order-29 range) and each layer's leaf values.
    """
    out_uniq: list[np.ndarray] = []
    out_vals: list[list[np.ndarray]] = [[] for _ in layers]
    current = layers
    valid = None  # None = all valid
    for o in range(order, -1, -1):
        if o == 0:
            keep = np.arange(len(current[0])) if valid is None else np.flatnonzero(valid)
            merged_ok = None
        else:
            same = None
            for x in current:
                g = x.reshape(-1, 4)
                eq = (g == g[:, :1]) | (np.isnan(g) & np.isnan(g[:, :1])) \
                    if np.issubdtype(g.dtype, np.floating) else (g == g[:, :1])
                s = eq.all(axis=1)
                same = s if same is None else same & s
            if valid is not None:
                same &= valid.reshape(-1, 4).all(axis=1)
            merged_ok = same
            not_merged = ~np.repeat(same, 4)
            if valid is not None:
                not_merged &= valid
            keep = np.flatnonzero(not_merged)
        if len(keep):
            out_uniq.append(order_ipix_to_uniq(o, keep))
            for j, x in enumerate(current):
                out_vals[j].append(x[keep])
        if merged_ok is None or not merged_ok.any():
            break
        current = [x[::4] for x in current]
        valid = merged_ok
    uniq = np.concatenate(out_uniq)
    vals = [np.concatenate(v) for v in out_vals]
    start, _ = uniq_to_ranges29(uniq)
    s = np.argsort(start, kind="stable")
    return uniq[s], [v[s] for v in vals]

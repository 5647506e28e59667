"""Chance-coincidence probability of a match and the background rate of new transients.

p_chance
    Unrelated new optical transients are modelled as a Poisson process, uniform on the sky
    and in time, with surface rate ``rho`` (new transients per deg^2 per day). The expected
    number of unrelated transients at least as "close" to the event as the matched alert,
    i.e. inside the event's credible region containing the alert (area ``A`` deg^2,
    ligo.skymap's ``searched_area``) and no further from the trigger in time than the alert
    (``|dt|`` days), is ``lambda = rho * A * |dt|``. The probability that at least one
    occurs by chance is

        p_chance = 1 - exp(-rho * A * |dt|)          (dimensionless, 0..1)

    Small values mean the coincidence is unlikely to be accidental.

Background rate
    :class:`BackgroundRate` measures ``rho`` from the alert stream itself:

        rho = N_new / (A_covered * T)     [per deg^2 per day]

    ``N_new`` counts alerts flagged ``is_new`` (first detection of their object);
    ``A_covered`` is the total area (deg^2) of the HEALPix cells of order ``cell_order`` that
    received at least one alert (new or not: any alert shows the cell was observed);
    ``T`` is the span of alert times seen, days (latest minus earliest MJD TAI). It assumes
    the covered cells were watched during the whole span; a survey that visits each field
    only part of the time makes the estimate a lower bound per watched cell. Until
    ``min_new`` new alerts have been seen it returns the configured default.
"""

from __future__ import annotations

import logging
import math

import healpy as hp
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_RATE_CELL_ORDER = 7  # ~0.21 deg^2 cells


def p_chance(rho: float, searched_area: np.ndarray | float,
             time_offset: np.ndarray | float) -> np.ndarray:
    """Probability ``1 - exp(-rho * searched_area * |time_offset|)`` (see module docstring).

    Args:
        rho: background rate of new transients, per deg^2 per day.
        searched_area: area of the credible region containing the alert, deg^2.
        time_offset: alert time minus trigger time, days (sign ignored).

    >>> float(p_chance(0.1, 10.0, 1.0))  # lambda = 1 -> 1 - 1/e
    0.6321205588285577
    """
    lam = rho * np.asarray(searched_area, np.float64) * np.abs(np.asarray(time_offset,
                                                                          np.float64))
    return -np.expm1(-lam)


class BackgroundRate:
    """Running estimate of ``rho`` (new transients per deg^2 per day), see module docstring.

    Args:
        default: rate returned until ``min_new`` new alerts were seen (per deg^2 per day).
        min_new: number of ``is_new`` alerts needed before the measurement is used.
        cell_order: HEALPix order of the coverage cells.
    """

    def __init__(self, default: float, min_new: int = 1000,
                 cell_order: int = DEFAULT_RATE_CELL_ORDER) -> None:
        self.default = float(default)
        self.min_new = int(min_new)
        self.cell_order = int(cell_order)
        self._nside = 2**self.cell_order
        self._covered = np.zeros(hp.nside2npix(self._nside), dtype=bool)
        self.n_alerts = 0
        self.n_new = 0
        self.t_first = math.inf
        self.t_last = -math.inf

    def observe(self, ra: np.ndarray, dec: np.ndarray, mjd_tai: np.ndarray,
                is_new: np.ndarray) -> None:
        """Add alerts (degrees ICRS, MJD TAI, bool first-detection flag) to the estimate."""
        ra = np.asarray(ra, np.float64)
        if len(ra) == 0:
            return
        cells = hp.ang2pix(self._nside, ra, np.asarray(dec, np.float64), nest=True,
                           lonlat=True)
        self._covered[cells] = True
        mjd_tai = np.asarray(mjd_tai, np.float64)
        self.t_first = min(self.t_first, float(mjd_tai.min()))
        self.t_last = max(self.t_last, float(mjd_tai.max()))
        self.n_alerts += len(ra)
        self.n_new += int(np.count_nonzero(is_new))

    @property
    def covered_area(self) -> float:
        """Area of the cells that received alerts, deg^2."""
        return float(np.count_nonzero(self._covered)) * hp.nside2pixarea(self._nside,
                                                                         degrees=True)

    @property
    def time_span(self) -> float:
        """Span of the alert times seen, days (0 before two distinct times)."""
        return max(0.0, self.t_last - self.t_first)

    @property
    def measured(self) -> float | None:
        """``N_new / (A_covered * T)`` per deg^2 per day, or ``None`` if not measurable yet."""
        exposure = self.covered_area * self.time_span
        if self.n_new < self.min_new or exposure <= 0:
            return None
        return self.n_new / exposure

    @property
    def rate(self) -> float:
        """The measured rate once enough new alerts were seen, else the default."""
        measured = self.measured
        return self.default if measured is None else measured

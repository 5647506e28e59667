"""External-trigger sky maps as gwcelery builds them from a notice's position and radius.

``gwcelery.tasks.external_skymaps.create_external_skymap`` (gwcelery 3.0) evaluates, on the
BAYESTAR adaptive grid (``ligo.skymap.moc.bayestar_adaptive_grid``, 8 refinement rounds from
NSIDE 16), either the Fermi GBM error model of Connaughton et al. 2015 (two Fisher
distributions, core and tail, whose widths add the statistical radius in quadrature; parameters
per notice type) or a Gaussian cone ``exp(-d^2 / 2 sigma^2)``, with the radius floored at
0.08 deg. 90 % radii (Swift BAT, IceCube) are first turned into 1-sigma radii. This module
reproduces both, with the same pixel order and arithmetic, returning NUNIQ ids and densities
per steradian. Positions are degrees ICRS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import astropy_healpix as ah
import numpy as np
from astropy import units as u
from astropy.coordinates import angular_separation

from mmcross.model.localization import order_ipix_to_uniq

MIN_ERROR_DEG = 0.08
"""gwcelery's floor of the error radius (deg), so that the map is never void."""

FERMI_ERROR_MODELS = {
    # Connaughton et al. 2015: flight notices Table 7 row 1; ground Table 3 row 1; final
    # Table 3 row 2 (core weight, core width deg, tail width deg), as gwcelery has them.
    "FERMI_GBM_FLIGHT_POSITION": (0.897, 7.52, 55.6),
    "FERMI_GBM_GROUND_POSITION": (0.804, 3.72, 13.7),
    "FERMI_GBM_FINAL_POSITION": (0.900, 3.71, 14.3),
}
"""Fermi GBM core+tail parameters per GCN notice type."""

MMCROSS_FERMI_NOTICE_TYPES = {"GBM_FLT_POS": "FERMI_GBM_FLIGHT_POSITION",
                              "GBM_GND_POS": "FERMI_GBM_GROUND_POSITION",
                              "GBM_FIN_POS": "FERMI_GBM_FINAL_POSITION"}
"""mmcross's Fermi notice type names -> GCN notice type names gwcelery keys its models by."""


@dataclass(frozen=True)
class ExternalMap:
    """A multi-order external sky map: NUNIQ ids and probability density per sr (normalised)."""

    uniq: np.ndarray
    density: np.ndarray


def sigma_from_radius(radius_deg: float, containment: float | None) -> float:
    """1-sigma radius (deg) of a 2-D Gaussian whose ``containment`` radius is ``radius_deg``.

    gwcelery divides 90 % radii (Swift, IceCube) by ``sqrt(-2 ln(1 - 0.9))``; radii given at
    1 sigma (Fermi GBM, ``containment`` 0.68 or ``None``) are kept.
    """
    if containment is None or containment <= 0.6827:
        return radius_deg
    return radius_deg / np.sqrt(-2.0 * np.log1p(-containment))


def _separation(pts: np.ndarray, ra: float, dec: float) -> np.ndarray:
    """Angular distance (rad) of points (column-stacked ra, dec in rad) from (ra, dec) deg."""
    return angular_separation(pts[:, 0], pts[:, 1], np.radians(ra), np.radians(dec))


def gaussian_cone(pts: np.ndarray, ra: float, dec: float, error: float) -> np.ndarray:
    """gwcelery ``from_cone``: ``exp(-d^2 / 2 error^2)`` (unnormalised), ``error`` in deg."""
    distance = _separation(pts, ra, dec)
    return np.exp(-0.5 * np.square(distance / np.radians(error)))


def _fisher(distance: np.ndarray, error_stat: float, error_sys: float) -> np.ndarray:
    error_tot2 = np.square(np.radians(error_stat)) + np.square(np.radians(error_sys))
    kappa = 1 / (0.4356 * error_tot2)
    return kappa / (2 * np.pi * (np.exp(kappa) - np.exp(-kappa))) * np.exp(kappa * np.cos(distance))


def fermi_error_model(pts: np.ndarray, ra: float, dec: float, error: float, core: float,
                      tail: float, core_weight: float) -> np.ndarray:
    """Connaughton et al. 2015 Eq. 1-2 core+tail Fisher mixture (per sr), widths in deg."""
    distance = _separation(pts, ra, dec)
    return (core_weight * _fisher(distance, error, core)
            + (1 - core_weight) * _fisher(distance, error, tail))


def adaptive_grid(density: Callable[..., np.ndarray], *args: float, top_nside: int = 16,
                  rounds: int = 8) -> ExternalMap:
    """BAYESTAR adaptive mesh refinement (Singer & Price 2016, Sec. VI), as
    ``ligo.skymap.moc.bayestar_adaptive_grid``: evaluate at ``top_nside``, then ``rounds``
    times split the most probable quarter of pixels into 4 and re-evaluate.

    ``density(points, *args)`` takes column-stacked (ra, dec) in radians.
    """
    def evaluate(nside: np.ndarray | int, ipix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ra, dec = ah.healpix_to_lonlat(ipix, nside, order="nested")
        value = density(np.column_stack((ra.rad, dec.rad)), *args)
        return value, value / np.square(nside)

    end = ah.nside_to_npix(top_nside)
    nrefine = end // 4
    begin = end - nrefine
    per_round = 3 * nrefine
    length = end + per_round * rounds
    probdensity = np.empty(length)
    prob = np.empty(length)
    nside = np.empty(length, dtype=np.intp)
    ipix = np.empty(length, dtype=np.intp)
    nside[:end] = top_nside
    ipix[:end] = np.arange(end)
    probdensity[:end], prob[:end] = evaluate(top_nside, ipix[:end])
    for _ in range(rounds):
        i = prob[:end].argpartition(begin - 1)
        for array in (nside, ipix, probdensity, prob):
            array[:end] = array[i]
        new_nside = np.tile(nside[begin:end] * 2, 4)
        new_ipix = (ipix[begin:end] * 4 + np.arange(4)[:, np.newaxis]).ravel()
        new_density, new_prob = evaluate(new_nside, new_ipix)
        end += per_round
        nside[begin:end] = new_nside
        ipix[begin:end] = new_ipix
        probdensity[begin:end] = new_density
        prob[begin:end] = new_prob
        begin += per_round
    probdensity /= np.sum(probdensity * ah.nside_to_pixel_area(nside).to_value(u.sr))
    order = np.log2(nside).astype(np.int64)
    return ExternalMap(order_ipix_to_uniq(order, ipix), probdensity)


def external_skymap(ra: float, dec: float, radius: float, containment: float | None, *,
                    fermi_notice_type: str | None = None) -> ExternalMap:
    """The sky map gwcelery makes of a point + radius notice (degrees ICRS).

    Args:
        ra, dec: notice position, deg.
        radius: notice error radius, deg, at ``containment`` (``None`` = 1 sigma).
        containment: containment of ``radius`` (0.9 for Swift BAT, IceCube).
        fermi_notice_type: for Fermi GBM, the GCN notice type (``FERMI_GBM_FLIGHT_POSITION``,
            ``..._GROUND_POSITION``, ``..._FINAL_POSITION``) choosing the core+tail model;
            ``None`` for the Gaussian cone.

    Raises:
        KeyError: an unknown Fermi notice type.
    """
    error = max(sigma_from_radius(radius, containment), MIN_ERROR_DEG)
    if fermi_notice_type is not None:
        core_weight, core, tail = FERMI_ERROR_MODELS[fermi_notice_type]
        return adaptive_grid(fermi_error_model, ra, dec, error, core, tail, core_weight)
    return adaptive_grid(gaussian_cone, ra, dec, error)

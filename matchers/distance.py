"""Conditional luminosity-distance moments of a GW sky map pixel from its DISTMU/DISTSIGMA.

LVK maps give, per pixel, the parameters of the distance "ansatz" (Singer et al. 2016,
ApJL 829 L15; ApJS 226 10): the distance posterior along the line of sight is

    p(r | pixel) = DISTNORM * r^2 * N(r; DISTMU, DISTSIGMA),   r > 0 (Mpc),

where N is a normal density. With ``x = mu / sigma``, ``phi``/``Phi`` the standard normal
density/CDF and ``R = phi(x) / Phi(x)`` (the inverse Mills ratio), the moments follow from
the truncated-normal integrals ``I_k = int_0^inf r^k N(r; mu, sigma) dr``:

    I_2 / (sigma^2 Phi) = x^2 + 1 + x R
    I_3 / (sigma^3 Phi) = x^3 + 3 x + (x^2 + 2) R
    I_4 / (sigma^4 Phi) = x^4 + 6 x^2 + 3 + (x^3 + 5 x) R

    mean = I_3 / I_2,   std = sqrt(I_4 / I_2 - mean^2)      (Mpc)

This is the same quantity as ``ligo.skymap.distance.parameters_to_moments`` (its first two
outputs); the tests compare the two. Pixels whose DISTMU or DISTSIGMA is not finite
(LVK writes DISTMU = +inf where the distance is unconstrained) get NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(cache=True)
def _inverse_mills(x: float) -> float:
    """phi(x) / Phi(x) for the standard normal (used for x >= -8 only)."""
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x) / (0.5 * math.erfc(-x * _SQRT_HALF))


@njit(cache=True)
def _tail_integrals(t: float) -> tuple[float, float, float]:
    """J_2, J_3, J_4 up to a common factor, for t >= 8, where
    J_k(t) = int_0^inf y^k exp(-y^2/2 - t y) dy.

    Uses the asymptotic series t^(k+1) J_k = sum_n (-1)^n (k+2n)! / (2^n n!) t^(-2n),
    summed up to its smallest term (about exp(-t^2/2) relative: ~1e-8 at t = 8, < 1e-12
    for t >= 9), and returns (t^3 J_2, t^3 J_3, t^3 J_4) so nothing under- or overflows.
    """
    out = np.zeros(3)
    inv_t2 = 1.0 / (t * t)
    for j in range(3):
        k = j + 2
        term = math.gamma(k + 1.0)
        total = term
        for n in range(80):
            ratio = (k + 2.0 * n + 1.0) * (k + 2.0 * n + 2.0) / (2.0 * (n + 1.0)) * inv_t2
            if ratio >= 1.0:  # asymptotic series: stop at its smallest term
                break
            term *= -ratio
            total += term
            if abs(term) < 1e-17 * abs(total):
                break
        out[j] = total / t ** j
    return out[0], out[1], out[2]


@njit(cache=True)
def _moments_kernel(mu: np.ndarray, sigma: np.ndarray, mean: np.ndarray,
                    std: np.ndarray) -> None:
    for i in range(mu.shape[0]):
        m = mu[i]
        s = sigma[i]
        if not (math.isfinite(m) and math.isfinite(s)) or s <= 0.0:
            mean[i] = math.nan
            std[i] = math.nan
            continue
        x = m / s
        if x < -8.0:
            # Deep lower tail: the closed form below cancels catastrophically; the ratios
            # of the tail integrals J_k(-x) (same normalisation for all k) are stable.
            a2, a3, a4 = _tail_integrals(-x)
        else:
            r = _inverse_mills(x)
            x2 = x * x
            a2 = x2 + 1.0 + x * r
            a3 = x * (x2 + 3.0) + (x2 + 2.0) * r
            a4 = x2 * (x2 + 6.0) + 3.0 + x * (x2 + 5.0) * r
        mean_x = a3 / a2
        var_x = a4 / a2 - mean_x * mean_x
        mean[i] = s * mean_x
        std[i] = s * math.sqrt(var_x) if var_x > 0.0 else 0.0


def conditional_distance_moments(distmu: np.ndarray,
                                 distsigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (Mpc) of the luminosity distance along each pixel's line
    of sight, from the per-pixel ansatz parameters DISTMU and DISTSIGMA (Mpc).

    Returns float64 arrays of the same shape; NaN where DISTMU/DISTSIGMA are not finite or
    DISTSIGMA <= 0 (no distance information).

    >>> mean, std = conditional_distance_moments(np.array([100.0]), np.array([20.0]))
    >>> round(float(mean[0]), 6), round(float(std[0]), 6)
    (107.692308, 19.276868)
    """
    mu = np.ascontiguousarray(distmu, dtype=np.float64).ravel()
    sigma = np.ascontiguousarray(distsigma, dtype=np.float64).ravel()
    if mu.shape != sigma.shape:
        raise ValueError(f"DISTMU has {mu.size} values but DISTSIGMA has {sigma.size}")
    mean = np.empty_like(mu)
    std = np.empty_like(mu)
    _moments_kernel(mu, sigma, mean, std)
    shape = np.shape(distmu)
    return mean.reshape(shape), std.reshape(shape)

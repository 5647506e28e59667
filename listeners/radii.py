"""Each mission's error-radius convention, written down as data, and the circles they imply.

Error-radius conventions are the recurring bug of GCN brokers: a 1-sigma GBM radius read as
a 90 % radius shrinks the searched area ten-fold; a 90 % Swift radius read as 1-sigma
inflates it. Every point+radius parser goes through :data:`CONVENTIONS` and
:func:`circle_spec`, never through ad-hoc constants. Radii are degrees on the sky (ICRS).

Systematics are modelled as in Connaughton et al. 2015 (ApJS 216, 32, Eq. 1) and as
GWCelery does for joint GW-GRB searches (``gwcelery/tasks/external_skymaps.py``): the quoted
statistical radius ``r`` and each systematic component ``s_i`` are Gaussian sigmas added in
quadrature, and the components are mixed with weights ``w_i``. We evaluate the mixture on the
sphere (each component a Fisher distribution with ``kappa = 1/sigma^2``) and summarise it by
its 90 % containment radius, the circle the matcher searches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Containment at which mixtures with systematics are summarised as one circle.
SUMMARY_CONTAINMENT = 0.9


@dataclass(frozen=True)
class RadiusConvention:
    """How one notice type states its position error.

    Attributes:
        key: convention name, e.g. ``"fermi-gbm-gnd"``.
        containment: probability contained within the quoted radius (0.68 for "1-sigma").
        systematic_included: whether the quoted radius already includes the systematic.
        systematic: ``(weight, sigma_deg)`` Gaussian components added in quadrature to the
            quoted radius (as a Gaussian sigma) when the systematic is not included; weights
            sum to 1. Empty when nothing is added.
        reference: where the convention is documented (and checked against the notice text).
    """

    key: str
    containment: float
    systematic_included: bool
    systematic: tuple[tuple[float, float], ...] = ()
    reference: str = ""


@dataclass(frozen=True)
class CircleSpec:
    """A circle to rasterise: ``radius`` (deg) contains ``containment`` of the probability."""

    radius: float
    containment: float
    model: str = "fisher"


_GBM_REF = ("Connaughton et al. 2015, ApJS 216, 32 (Tables 3 and 7), as used by GWCelery "
            "external_skymaps.create_external_skymap; VOEvent Error2Radius is the 1-sigma "
            "(68 %) statistical radius ('GRB_ERROR [deg radius, statistical only]')")

CONVENTIONS: dict[str, RadiusConvention] = {
    # ---- Fermi GBM (VOEvent Packet_Type 111/112/115; JSON fermi/gbm/trigger subtype) ----
    # Flight-software position: Connaughton 2015 Table 7 row 1 (core 7.52 deg for 89.7 %,
    # tail 55.6 deg for 10.3 %).
    "fermi-gbm-flt": RadiusConvention(
        "fermi-gbm-flt", 0.68, False, ((0.897, 7.52), (0.103, 55.6)), _GBM_REF),
    # Automated ground position (GND_POS): Table 3 row 1 (3.72 deg 80.4 %, 13.7 deg 19.6 %).
    "fermi-gbm-gnd": RadiusConvention(
        "fermi-gbm-gnd", 0.68, False, ((0.804, 3.72), (0.196, 13.7)), _GBM_REF),
    # Final (RoboBA) position until 2019-09-11: Table 3 row 2 (3.71 deg 90 %, 14.3 deg 10 %).
    "fermi-gbm-fin": RadiusConvention(
        "fermi-gbm-fin", 0.68, False, ((0.900, 3.71), (0.100, 14.3)), _GBM_REF),
    # Final (improved RoboBA) position from 2019-09-11: GCN Circular 25726 (Goldstein):
    # "a mixture of two Gaussians, one with a radius of 1.8 degrees (52% contribution) and one
    # with a radius of 4.1 degrees (47% contribution)" (weights renormalised to sum to 1).
    "fermi-gbm-fin-2019": RadiusConvention(
        "fermi-gbm-fin-2019", 0.68, False, ((0.525, 1.8), (0.475, 4.1)),
        "GCN Circular 25726 (2019-09-11), RoboBA update; statistical radius 1-sigma"),
    # Sub-threshold (Packet_Type 131) locations come with a HEALPix map that includes the
    # systematic; the VOEvent radius is treated like a ground 1-sigma radius with the GND
    # systematic (no better public statement found).
    "fermi-gbm-subthresh": RadiusConvention(
        "fermi-gbm-subthresh", 0.68, False, ((0.804, 3.72), (0.196, 13.7)),
        "assumption: as fermi-gbm-gnd (GCN GBM sub-threshold notices, 1-sigma radius)"),
    # JSON (gcn.notices.fermi.gbm) with systematic_included=true (flight examples in gcn-schema
    # fermi/gbm/trigger.flight*.example.json: containment_probability 0.68).
    "fermi-gbm-json-sys": RadiusConvention(
        "fermi-gbm-json-sys", 0.68, True, (),
        "gcn-schema fermi/gbm trigger examples: containment_probability 0.68, "
        "systematic_included true"),
    # ---- Fermi LAT (Packet_Type 120/121/127/128) ----
    "fermi-lat": RadiusConvention(
        "fermi-lat", 0.9, True, (),
        "GCN Fermi LAT notices: 90 % containment radius (statistical + systematic); "
        "not checked against a real notice (none in ../shared/data)"),
    # ---- Swift ----
    "swift-bat": RadiusConvention(
        "swift-bat", 0.9, True, (),
        "GCN Swift BAT_GRB_POS: 'BAT error radius, 90 % containment, including systematic' "
        "(3 arcmin = 0.05 deg typical)"),
    "swift-xrt": RadiusConvention(
        "swift-xrt", 0.9, True, (), "GCN Swift XRT_POS: 90 % containment radius"),
    "swift-uvot": RadiusConvention(
        "swift-uvot", 0.9, True, (), "GCN Swift UVOT_POS: 90 % containment radius"),
    # ---- INTEGRAL IBAS (Packet_Type 53-56) ----
    "integral-ibas": RadiusConvention(
        "integral-ibas", 0.9, True, (),
        "Mereghetti et al. 2003 (A&A 411, L291), GCN INTEGRAL notices: 90 % c.l. radius "
        "including systematics"),
    # ---- IceCube (AMON VOEvents 173/174 gold/bronze, 176 cascade) ----
    "icecube-track": RadiusConvention(
        "icecube-track", 0.9, False, (),
        "AMON gold/bronze VOEvent: Error2Radius == src_error_90, Param description "
        "'Angular error of the source, statistical only, (90% containment)'; src_error_50 "
        "gives the 50 % radius"),
    "icecube-cascade": RadiusConvention(
        "icecube-cascade", 0.9, True, (),
        "AMON cascade VOEvent: src_error_90 'combined statistical and the systematic (90% "
        "containment)'"),
    # ---- SVOM (VOEvents ivo://org.svom/fsc) ----
    "svom-eclairs": RadiusConvention(
        "svom-eclairs", 0.9, True, (),
        "fsc.svom.org notices docs (R90) and gcn.nasa.gov/missions/svom: ECLAIRs ~10 arcmin "
        "radius (statistical + systematic)"),
    "svom-mxt": RadiusConvention(
        "svom-mxt", 0.9, True, (), "fsc.svom.org N2 notices: MXT quality factor bins on R90"),
    "svom-vt": RadiusConvention(
        "svom-vt", 0.9, True, (), "assumption: VT ~1 arcsec radius, taken as 90 %"),
    # ---- GCN unified JSON schema (core/Localization.schema.json) ----
    "gcn-unified": RadiusConvention(
        "gcn-unified", 0.9, False, (),
        "gcn-schema core/Localization.schema.json: containment_probability 'if absent, "
        "default is 0.9'; systematic_included default false"),
}


def fisher_cdf(radius_deg: float, sigma_deg: float) -> float:
    """Probability within ``radius_deg`` of the centre of a Fisher distribution.

    ``kappa = 1 / sigma^2`` (sigma in radians); for small sigma this is the 2-D Gaussian
    ``1 - exp(-r^2 / (2 sigma^2))``.
    """
    r = math.radians(radius_deg)
    s = math.radians(sigma_deg)
    kappa = 1.0 / (s * s)
    if kappa > 700.0:  # avoid overflow: exp(-2 kappa) == 0
        return -math.expm1(kappa * (math.cos(r) - 1.0))
    return -math.expm1(kappa * (math.cos(r) - 1.0)) / -math.expm1(-2.0 * kappa)


def mixture_radius(stat_sigma_deg: float, systematic: tuple[tuple[float, float], ...],
                   containment: float = SUMMARY_CONTAINMENT) -> float:
    """Radius (deg) containing ``containment`` of the stat (+) systematic Fisher mixture.

    Each component has ``sigma_i = hypot(stat_sigma, s_i)``; found by bisection on [0, 180].
    """
    comps = [(w, math.hypot(stat_sigma_deg, s)) for w, s in systematic]
    total = sum(w for w, _ in comps)

    def cdf(r: float) -> float:
        return sum(w * fisher_cdf(r, s) for w, s in comps) / total

    lo, hi = 0.0, 180.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < containment:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def circle_spec(key: str, radius_deg: float, *, containment: float | None = None,
                systematic_included: bool | None = None) -> CircleSpec:
    """The circle implied by a quoted radius under convention ``key``.

    Args:
        key: a key of :data:`CONVENTIONS`.
        radius_deg: the radius as quoted by the notice, degrees.
        containment: overrides the convention's containment when the notice states it
            (unified JSON ``containment_probability``).
        systematic_included: overrides the convention (unified JSON ``systematic_included``).

    Returns:
        The radius as quoted at its containment when no systematic is to be added, else the
        :data:`SUMMARY_CONTAINMENT` radius of the stat+systematic mixture.
    """
    conv = CONVENTIONS[key]
    cont = conv.containment if containment is None else containment
    included = conv.systematic_included if systematic_included is None else systematic_included
    if included or not conv.systematic:
        return CircleSpec(radius_deg, cont)
    return CircleSpec(mixture_radius(radius_deg, conv.systematic), SUMMARY_CONTAINMENT)

"""A partner's own transient detections matched against Rubin alerts, with per-partner rules.

What "a match" means is the partner's choice, from its ``[partners.<name>.stream]`` table
(:meth:`StreamRule.from_mapping`):

* sky: the angular separation (great circle, degrees ICRS) is at most ``radius_deg``, or, when
  ``n_sigma`` is given instead, at most ``n_sigma * sqrt(err_detection^2 + alert_error_deg^2)``
  (both 1-sigma position errors in degrees; ``alert_error_deg`` is the Rubin astrometric
  error, 0.1 arcsec by default);
* time: ``before <= t_alert - t_detection <= after`` (days, MJD TAI on both sides) with
  ``time_window = [before, after]``;
* properties (optional): for each named property present on both sides (e.g. ``mag``), the
  difference ``alert - detection`` lies in ``[min_delta, max_delta]``; a brightening of at
  least 0.5 mag in the Rubin alert is ``constraints = { mag = { max_delta = -0.5 } }``.
  A missing (NaN) value on either side fails the constraint.

Matching sorts the alerts by declination and, for each detection, examines only the alerts in
the declination band of its search radius (numpy ``searchsorted``), so a batch costs
O((D + A) log A + candidates).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcross.model.alert import AlertBatch
from mmcross.model.detections import Detections
from mmcross.model.errors import ConfigError

DEFAULT_ALERT_ERROR_DEG = 0.1 / 3600.0


@dataclass(frozen=True)
class PropertyConstraint:
    """``min_delta <= alert[prop] - detection[prop] <= max_delta`` (units of the property)."""

    name: str
    min_delta: float = -math.inf
    max_delta: float = math.inf


@dataclass(frozen=True)
class StreamRule:
    """What a match of a partner detection with a Rubin alert means (see module doc).

    Attributes:
        radius_deg: fixed search radius, degrees (used when ``n_sigma`` is None).
        n_sigma: radius in units of the combined 1-sigma position error.
        alert_error_deg: Rubin alert 1-sigma position error, degrees.
        before, after: time window of ``t_alert - t_detection``, days.
        constraints: property constraints on ``alert - detection`` differences.
    """

    radius_deg: float | None = 1.0 / 3600.0
    n_sigma: float | None = None
    alert_error_deg: float = DEFAULT_ALERT_ERROR_DEG
    before: float = -1.0
    after: float = 3.0
    constraints: tuple[PropertyConstraint, ...] = ()

    def __post_init__(self) -> None:
        if (self.n_sigma is None) == (self.radius_deg is None):
            raise ConfigError("partner stream rule needs exactly one of radius_deg, n_sigma")
        for name in ("radius_deg", "n_sigma"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"partner stream rule {name} must be > 0, got {value!r}")
        if self.before > self.after:
            raise ConfigError(f"partner stream time_window [{self.before}, {self.after}] days "
                              "has before > after")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "stream") -> StreamRule:
        """From a ``[partners.<name>.stream]`` table (keys as in the config comment)."""
        known = {"radius_deg", "n_sigma", "alert_error_deg", "time_window", "constraints"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        window = data.get("time_window", [cls.before, cls.after])
        if not isinstance(window, list | tuple) or len(window) != 2:
            raise ConfigError(f"{where}.time_window must be [before, after] days, got {window!r}")
        constraints = []
        for name, c in (data.get("constraints", {}) or {}).items():
            bad = set(c) - {"min_delta", "max_delta"}
            if bad:
                raise ConfigError(f"{where}.constraints.{name}: unknown keys {sorted(bad)}")
            constraints.append(PropertyConstraint(str(name),
                                                  float(c.get("min_delta", -math.inf)),
                                                  float(c.get("max_delta", math.inf))))
        n_sigma = data.get("n_sigma")
        radius = data.get("radius_deg", None if n_sigma is not None else 1.0 / 3600.0)
        try:
            return cls(radius_deg=None if radius is None else float(radius),
                       n_sigma=None if n_sigma is None else float(n_sigma),
                       alert_error_deg=float(data.get("alert_error_deg",
                                                      DEFAULT_ALERT_ERROR_DEG)),
                       before=float(window[0]), after=float(window[1]),
                       constraints=tuple(constraints))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def radius(self, err_deg: np.ndarray) -> np.ndarray:
        """Search radius per detection, degrees, from its 1-sigma error (degrees)."""
        err = np.asarray(err_deg, dtype=np.float64)
        if self.n_sigma is None:
            return np.full(err.shape, float(self.radius_deg))
        return self.n_sigma * np.hypot(err, self.alert_error_deg)


@dataclass(frozen=True)
class StreamMatch:
    """One (partner detection, Rubin alert) match.

    Attributes:
        partner: partner name.
        detection_id: the partner's detection id.
        alert_id, object_id: Rubin ``diaSourceId`` / ``diaObjectId``.
        separation_deg: great-circle separation, degrees.
        radius_deg: the search radius that applied, degrees.
        time_offset: ``t_alert - t_detection``, days.
        deltas: property differences ``alert - detection`` that were constrained.
    """

    partner: str
    detection_id: str
    alert_id: int
    object_id: str
    separation_deg: float
    radius_deg: float
    time_offset: float
    deltas: dict[str, float] = field(default_factory=dict)

    @property
    def n_sigma(self) -> float:
        """Separation in units of the search radius (1.0 = at the edge)."""
        return self.separation_deg / self.radius_deg if self.radius_deg > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; units in the key names (degrees, days)."""
        return {"partner": self.partner, "detection_id": self.detection_id,
                "alert_id": self.alert_id, "object_id": self.object_id,
                "separation_deg": self.separation_deg, "radius_deg": self.radius_deg,
                "time_offset_days": self.time_offset, "deltas": dict(self.deltas)}

    def to_json(self) -> str:
        """One line of JSON (:meth:`to_dict`)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def angular_separation_deg(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray,
                           dec2: np.ndarray) -> np.ndarray:
    """Great-circle separation, degrees (Vincenty formula, stable at all angles)."""
    l1, b1, l2, b2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (ra1, dec1, ra2, dec2))
    dl = l2 - l1
    sdl, cdl = np.sin(dl), np.cos(dl)
    sb1, cb1, sb2, cb2 = np.sin(b1), np.cos(b1), np.sin(b2), np.cos(b2)
    num = np.hypot(cb2 * sdl, cb1 * sb2 - sb1 * cb2 * cdl)
    return np.degrees(np.arctan2(num, sb1 * sb2 + cb1 * cb2 * cdl))


def match_stream(partner: str, detections: Detections, alerts: AlertBatch, rule: StreamRule,
                 alert_properties: Mapping[str, np.ndarray] | None = None) -> list[StreamMatch]:
    """Every (detection, alert) pair satisfying ``rule``, ordered by detection then alert.

    Args:
        partner: partner name (copied into the results).
        detections: the partner's detections (degrees ICRS, MJD TAI).
        alerts: Rubin alerts (degrees ICRS, MJD TAI).
        rule: the partner's rule.
        alert_properties: per-alert values aligned with ``alerts`` (e.g. ``{"mag": ...}``),
            needed for the rule's property constraints (a constraint whose property is
            missing on either side matches nothing).
    """
    props = {k: np.asarray(v, dtype=np.float64) for k, v in (alert_properties or {}).items()}
    for k, v in props.items():
        if v.shape != (len(alerts),):
            raise ValueError(f"alert_properties[{k!r}] has shape {v.shape}, not ({len(alerts)},)")
    if len(detections) == 0 or len(alerts) == 0:
        return []
    order = np.argsort(alerts.dec, kind="stable")
    sdec = alerts.dec[order]
    radii = rule.radius(detections.err_deg)
    lo = np.searchsorted(sdec, detections.dec - radii, side="left")
    hi = np.searchsorted(sdec, detections.dec + radii, side="right")
    out: list[StreamMatch] = []
    for i in np.flatnonzero(hi > lo):
        cand = order[lo[i]:hi[i]]
        dt = alerts.mjd_tai[cand] - detections.mjd_tai[i]
        in_window = (dt >= rule.before) & (dt <= rule.after)
        cand, dt = cand[in_window], dt[in_window]
        if len(cand) == 0:
            continue
        sep = angular_separation_deg(detections.ra[i], detections.dec[i], alerts.ra[cand],
                                     alerts.dec[cand])
        ok = sep <= radii[i]
        deltas: dict[str, np.ndarray] = {}
        for c in rule.constraints:
            if c.name not in props or c.name not in detections.properties:
                ok[:] = False
                break
            d = props[c.name][cand] - detections.properties[c.name][i]
            ok &= np.isfinite(d) & (d >= c.min_delta) & (d <= c.max_delta)
            deltas[c.name] = d
        for j in np.flatnonzero(ok):
            a = int(cand[j])
            out.append(StreamMatch(
                partner=partner, detection_id=str(detections.detection_id[i]),
                alert_id=int(alerts.alert_id[a]), object_id=str(alerts.object_id[a]),
                separation_deg=float(sep[j]), radius_deg=float(radii[i]),
                time_offset=float(dt[j]),
                deltas={k: float(v[j]) for k, v in deltas.items()}))
    out.sort(key=lambda m: (m.detection_id, m.alert_id))
    return out


def rules_from_config(partners: Mapping[str, Mapping[str, Any]]) -> dict[str, StreamRule]:
    """Partner name -> :class:`StreamRule` for every ``[partners.<name>.stream]`` table."""
    return {name: StreamRule.from_mapping(p["stream"], f"partners.{name}.stream")
            for name, p in partners.items() if isinstance(p, Mapping) and p.get("stream")}

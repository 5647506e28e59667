"""A partner telescope's own transient detections, as columns (the unit partner-stream
matching works on, like :class:`mmcross.model.alert.AlertBatch` for Rubin alerts).

Positions are degrees ICRS, errors degrees (1 sigma), times MJD TAI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmcross.model.alert import check_coordinates


@dataclass
class Detections:
    """A partner's transient detections (columnar).

    Attributes:
        detection_id: the partner's ids (str).
        ra, dec: degrees ICRS.
        err_deg: 1-sigma position error, degrees (0 when unknown and a fixed radius is used).
        mjd_tai: detection time, MJD TAI.
        properties: optional per-detection values, e.g. ``{"mag": array}`` (NaN = unknown).
        partner: the partner who sent them ("" when not known).
    """

    detection_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    err_deg: np.ndarray
    mjd_tai: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    partner: str = ""

    def __post_init__(self) -> None:
        self.detection_id = np.asarray(self.detection_id, dtype=object)
        n = len(self.detection_id)
        for name in ("ra", "dec", "err_deg", "mjd_tai"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"Detections.{name} has shape {arr.shape}, not ({n},)")
            setattr(self, name, arr)
        self.properties = {k: np.asarray(v, dtype=np.float64) for k, v in self.properties.items()}
        for k, v in self.properties.items():
            if v.shape != (n,):
                raise ValueError(f"Detections.properties[{k!r}] has shape {v.shape}, not ({n},)")
        if np.any(~np.isfinite(self.err_deg) | (self.err_deg < 0)):
            raise ValueError("Detections.err_deg must be finite and >= 0 degrees")
        check_coordinates(self.ra, self.dec, what="partner detection")

    def __len__(self) -> int:
        return len(self.detection_id)

"""Optical alerts as columnar batches, the unit the matcher works on.

A batch holds what matching needs as numpy arrays (positions in degrees ICRS, times in
MJD TAI) and, optionally, each alert's full packet bytes so reports can carry it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmcross.model.errors import BadCoordinatesError


@dataclass
class AlertBatch:
    """A batch of optical alerts.

    Attributes:
        alert_id: int64, the alert's source id (Rubin ``diaSourceId``, ZTF ``candid``).
        object_id: object (str) array, Rubin ``diaObjectId`` as decimal text, ZTF ``objectId``.
        ra, dec: float64 degrees, ICRS.
        mjd_tai: float64, the detection midpoint as MJD in TAI (Rubin ``midpointMjdTai``).
        packets: each alert's raw packet, bytes-like (``bytes(p)`` gives it; memoryviews of a
            mapped file keep that mapping alive), or ``None`` when not kept.
        sources: where each alert came from (``"file.avro#3"``, ``"topic/0/1234"``), or ``None``.
        is_new: bool, True when the alert is the first detection of its object (no earlier
            detection in the packet), used to measure the background rate of new transients.
        mag: float64 AB magnitude of the difference-image PSF flux (Rubin
            ``diaSource.psfFlux``, ZTF ``magpsf``), NaN when unknown or the flux is <= 0;
            ``None`` given -> all NaN.
    """

    alert_id: np.ndarray
    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mjd_tai: np.ndarray
    packets: list[bytes | memoryview] | None = None
    sources: list[str] | None = None
    is_new: np.ndarray | None = field(default=None)
    mag: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.alert_id = np.asarray(self.alert_id, dtype=np.int64)
        self.object_id = np.asarray(self.object_id, dtype=object)
        self.ra = np.asarray(self.ra, dtype=np.float64)
        self.dec = np.asarray(self.dec, dtype=np.float64)
        self.mjd_tai = np.asarray(self.mjd_tai, dtype=np.float64)
        n = len(self.alert_id)
        for name in ("object_id", "ra", "dec", "mjd_tai"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"AlertBatch.{name} has {len(getattr(self, name))} rows, not {n}")
        if self.is_new is None:
            self.is_new = np.zeros(n, dtype=bool)
        else:
            self.is_new = np.asarray(self.is_new, dtype=bool)
        if self.mag is None:
            self.mag = np.full(n, np.nan)
        else:
            self.mag = np.asarray(self.mag, dtype=np.float64)
        if self.mag.shape != (n,):
            raise ValueError(f"AlertBatch.mag has shape {self.mag.shape}, not ({n},)")
        check_coordinates(self.ra, self.dec, what="alert")

    def __len__(self) -> int:
        return len(self.alert_id)

    @classmethod
    def empty(cls) -> AlertBatch:
        return cls(np.empty(0, np.int64), np.empty(0, object), np.empty(0), np.empty(0),
                   np.empty(0), packets=[], sources=[])

    def take(self, index: np.ndarray) -> AlertBatch:
        """The sub-batch of the rows in ``index`` (integer positions or a boolean mask)."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return AlertBatch(
            self.alert_id[idx], self.object_id[idx], self.ra[idx], self.dec[idx],
            self.mjd_tai[idx],
            packets=None if self.packets is None else [self.packets[i] for i in idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx],
            is_new=self.is_new[idx],
            mag=self.mag[idx],
        )

    @classmethod
    def concatenate(cls, batches: list[AlertBatch]) -> AlertBatch:
        if not batches:
            return cls.empty()
        keep_packets = all(b.packets is not None for b in batches)
        keep_sources = all(b.sources is not None for b in batches)
        return cls(
            np.concatenate([b.alert_id for b in batches]),
            np.concatenate([b.object_id for b in batches]),
            np.concatenate([b.ra for b in batches]),
            np.concatenate([b.dec for b in batches]),
            np.concatenate([b.mjd_tai for b in batches]),
            packets=[p for b in batches for p in b.packets] if keep_packets else None,
            sources=[s for b in batches for s in b.sources] if keep_sources else None,
            is_new=np.concatenate([b.is_new for b in batches]),
            mag=np.concatenate([b.mag for b in batches]),
        )


def check_coordinates(ra: np.ndarray, dec: np.ndarray, *, what: str = "position") -> None:
    """Raise :class:`BadCoordinatesError` unless RA in [0, 360] and Dec in [-90, 90] degrees."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise BadCoordinatesError(
            f"{what} {i}: RA={ra.flat[i]!r} deg, Dec={dec.flat[i]!r} deg is outside "
            "RA [0, 360], Dec [-90, 90] (degrees ICRS)"
        )

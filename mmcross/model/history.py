"""Recent-alert history for retro-matching events announced after their counterparts.

The history is kept sorted on the sky, so that a new localization can be intersected with it
directly (:mod:`mmcross.matchers.history_match`): each alert's order-29 HEALPix NESTED index
is computed once, when it arrives, and the alerts are kept in a few *runs*, each sorted by
that index (a log-structured merge: a new batch is one run, and the newest run is merged
into the one before it while that one is less than twice its size, so there are
``O(log n)`` runs and every alert is merged ``O(log n)`` times).

Per alert, 45 bytes: the NESTED index (int64), MJD TAI (float64), alert id (int64), object
id (int64 when it is decimal text, as Rubin's ``diaObjectId``), the position as float32
offsets from the pixel centre (bit-exact: an alert whose offsets would not give back its
float64 RA/Dec, near a pole or RA 0, keeps them in a side table), the AB magnitude
(float32) and ``is_new``. Non-decimal object ids (ZTF ``objectId``) also go to a side table.

Alerts older than the newest alert time minus the horizon are never returned; they are
released when at least a quarter of their run has expired (by time span) or the run has
expired whole. Beyond ``max_alerts``, the oldest alerts are dropped (down to 90 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import healpy as hp
import numpy as np

from mmcross.model.alert import AlertBatch

ORDER = 29
NSIDE = 1 << ORDER
#: ``object_key`` of an alert without object id (``""``) and of a non-decimal one.
NO_OBJECT, TEXT_OBJECT = -1, -2


def pixels29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Order-29 HEALPix NESTED index (int64) of positions in degrees ICRS."""
    if len(ra) == 0:
        return np.empty(0, np.int64)
    return np.asarray(hp.ang2pix(NSIDE, np.asarray(ra, np.float64),
                                 np.asarray(dec, np.float64), nest=True, lonlat=True),
                      np.int64)


def _centres(pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(pix) == 0:
        return np.empty(0), np.empty(0)
    ra, dec = hp.pix2ang(NSIDE, pix, nest=True, lonlat=True)
    return np.asarray(ra, np.float64), np.asarray(dec, np.float64)


@dataclass
class SortedRun:
    """Alerts sorted by ``pix`` (order-29 NESTED index); ``tmin``/``tmax``: MJD TAI span."""

    pix: np.ndarray
    mjd_tai: np.ndarray
    alert_id: np.ndarray
    object_key: np.ndarray
    dra: np.ndarray
    ddec: np.ndarray
    mag: np.ndarray
    is_new: np.ndarray
    tmin: float
    tmax: float

    COLUMNS = ("pix", "mjd_tai", "alert_id", "object_key", "dra", "ddec", "mag", "is_new")

    def __len__(self) -> int:
        return len(self.pix)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, c).nbytes for c in self.COLUMNS)

    def take(self, rows: np.ndarray) -> SortedRun:
        """The run of ``rows`` (ascending positions or a boolean mask: stays sorted)."""
        cols = {c: getattr(self, c)[rows] for c in self.COLUMNS}
        t = cols["mjd_tai"]
        return SortedRun(**cols, tmin=float(t.min()) if len(t) else np.inf,
                         tmax=float(t.max()) if len(t) else -np.inf)

    @staticmethod
    def merge(a: SortedRun, b: SortedRun) -> SortedRun:
        """One run holding both (stable: ``a`` first among equal indices)."""
        pix = np.concatenate([a.pix, b.pix])
        order = np.argsort(pix, kind="stable")  # two sorted runs: a linear merge
        cols = {c: np.concatenate([getattr(a, c), getattr(b, c)])[order]
                for c in SortedRun.COLUMNS}
        return SortedRun(**cols, tmin=min(a.tmin, b.tmin), tmax=max(a.tmax, b.tmax))


class AlertHistory:
    """A bounded store of recent alerts, sorted on the sky (see the module docstring).

    Args:
        horizon_days: alerts older than the newest alert time minus this are dropped (days).
        max_alerts: beyond this many alerts, the oldest are dropped.
    """

    def __init__(self, horizon_days: float, max_alerts: int) -> None:
        self.horizon_days = float(horizon_days)
        self.max_alerts = int(max_alerts)
        self._runs: list[SortedRun] = []
        self._positions: dict[int, tuple[float, float]] = {}
        self._objects: dict[int, str] = {}
        self.newest_mjd_tai = float("-inf")

    def __len__(self) -> int:
        """The alerts kept and not expired."""
        oldest = self.oldest_kept_mjd_tai
        return sum(len(r) if r.tmin >= oldest else int(np.count_nonzero(r.mjd_tai >= oldest))
                   for r in self._runs)

    @property
    def runs(self) -> tuple[SortedRun, ...]:
        """The sorted runs (read-only views for :mod:`mmcross.matchers.history_match`)."""
        return tuple(self._runs)

    @property
    def oldest_kept_mjd_tai(self) -> float:
        """Alerts before this time (MJD TAI) are expired and never returned."""
        return self.newest_mjd_tai - self.horizon_days

    @property
    def nbytes(self) -> int:
        """Bytes of the sorted columns (side tables not counted)."""
        return sum(r.nbytes for r in self._runs)

    # -- adding ------------------------------------------------------------------------

    def _object_keys(self, batch: AlertBatch) -> np.ndarray:
        """int64 object ids (:data:`NO_OBJECT`, :data:`TEXT_OBJECT` kept aside)."""
        ids = batch.object_id
        keys = np.full(len(ids), NO_OBJECT, np.int64)
        some = np.flatnonzero(ids != "")
        try:
            keys[some] = ids[some].astype(np.int64)
        except (ValueError, TypeError, OverflowError):  # not all decimal: one by one
            keys[some] = [int(s) if s.isdecimal() and len(s) < 19 else TEXT_OBJECT
                          for s in ids[some].tolist()]
        exact = np.array(list(map(str, keys[some].tolist())), dtype=object) == ids[some]
        keys[some[~exact | (keys[some] < 0)]] = TEXT_OBJECT
        for i in np.flatnonzero(keys == TEXT_OBJECT).tolist():
            self._objects[int(batch.alert_id[i])] = str(ids[i])
        return keys

    def add(self, batch: AlertBatch) -> None:
        """Keep ``batch`` (packets and sources dropped) and prune old alerts."""
        if len(batch) == 0:
            return
        pix = pixels29(batch.ra, batch.dec)
        ra_c, dec_c = _centres(pix)
        dra = (batch.ra - ra_c).astype(np.float32)
        ddec = (batch.dec - dec_c).astype(np.float32)
        inexact = (ra_c + dra.astype(np.float64) != batch.ra) | (
            dec_c + ddec.astype(np.float64) != batch.dec)
        for i in np.flatnonzero(inexact).tolist():
            self._positions[int(batch.alert_id[i])] = (float(batch.ra[i]), float(batch.dec[i]))
        order = np.argsort(pix, kind="stable")
        run = SortedRun(pix[order], batch.mjd_tai[order], batch.alert_id[order],
                        self._object_keys(batch)[order], dra[order], ddec[order],
                        batch.mag.astype(np.float32)[order], batch.is_new[order],
                        tmin=float(batch.mjd_tai.min()), tmax=float(batch.mjd_tai.max()))
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) < 2 * len(self._runs[-1]):
            b = self._runs.pop()
            self._runs[-1] = SortedRun.merge(self._runs[-1], b)
        self.newest_mjd_tai = max(self.newest_mjd_tai, run.tmax)
        self._prune()

    def _prune(self) -> None:
        oldest = self.oldest_kept_mjd_tai
        n = sum(len(r) for r in self._runs)
        if n > self.max_alerts:  # drop the oldest, down to 90 % of the bound
            keep = int(0.9 * self.max_alerts)
            times = np.concatenate([r.mjd_tai for r in self._runs])
            oldest = max(oldest, float(np.partition(times, n - keep)[n - keep]))
        kept: list[SortedRun] = []
        for run in self._runs:
            if run.tmax < oldest:
                continue
            span = run.tmax - run.tmin
            if run.tmin < oldest and (n > self.max_alerts or span <= 0
                                      or (oldest - run.tmin) >= 0.25 * span):
                run = run.take(run.mjd_tai >= oldest)
            if len(run):
                kept.append(run)
        self._runs = kept
        if n > self.max_alerts:
            self._trim_side_tables()

    def _trim_side_tables(self) -> None:
        if not (self._positions or self._objects):
            return
        ids = set(np.concatenate([r.alert_id for r in self._runs]).tolist()) if self._runs \
            else set()
        self._positions = {k: v for k, v in self._positions.items() if k in ids}
        self._objects = {k: v for k, v in self._objects.items() if k in ids}

    # -- reading -----------------------------------------------------------------------

    def batch_of(self, run: SortedRun, rows: np.ndarray) -> AlertBatch:
        """The alerts ``rows`` of ``run`` as an :class:`AlertBatch` (degrees ICRS, MJD TAI;
        no packets), in the order given."""
        pix = run.pix[rows]
        ra_c, dec_c = _centres(pix)
        ra = ra_c + run.dra[rows].astype(np.float64)
        dec = dec_c + run.ddec[rows].astype(np.float64)
        alert_id = run.alert_id[rows]
        if self._positions:
            for i, a in enumerate(alert_id.tolist()):
                if a in self._positions:
                    ra[i], dec[i] = self._positions[a]
        keys = run.object_key[rows]
        object_id = np.array([str(k) if k >= 0 else "" if k == NO_OBJECT else
                              self._objects.get(a, "") for k, a in
                              zip(keys.tolist(), alert_id.tolist(), strict=True)], dtype=object)
        mag = run.mag[rows].astype(np.float64)
        return AlertBatch(alert_id, object_id, ra, dec,
                          run.mjd_tai[rows], is_new=run.is_new[rows], mag=mag)

    def between(self, start_mjd_tai: float, end_mjd_tai: float) -> AlertBatch:
        """The kept alerts with start <= mjd_tai <= end (MJD TAI), in time order."""
        start = max(start_mjd_tai, self.oldest_kept_mjd_tai)
        parts = []
        for run in self._runs:
            if run.tmax < start or run.tmin > end_mjd_tai:
                continue
            rows = np.flatnonzero((run.mjd_tai >= start) & (run.mjd_tai <= end_mjd_tai))
            if len(rows):
                parts.append(self.batch_of(run, rows))
        out = AlertBatch.concatenate(parts)
        if len(out) > 1:
            out = out.take(np.argsort(out.mjd_tai, kind="stable"))
        out.packets = out.sources = None
        return out

    def all(self) -> AlertBatch:
        """Every kept alert, in time order."""
        return self.between(-np.inf, np.inf)

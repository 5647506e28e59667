"""Recent-alert history for retro-matching events announced after their counterparts.

The history is kept sorted on the sky, so that a new localization can be intersected with it
directly (:mod:`mmcross.matchers.history_match`): each alert's order-29 HEALPix NESTED index
is computed once, when it arrives, and the alerts are kept in a few *runs*, each sorted by
that index (a log-structured merge: a new batch is one run, and the newest run is merged
into the one before it while that one is less than twice its size, so there are
``O(log n)`` runs and every alert is merged ``O(log n)`` times).

Per alert, 45 bytes: the NESTED index (int64), MJD TAI (float64), alert id (int64), object
id (int64 when it is decimal text, as Rubin's ``diaObjectId``), RA and Dec each as the int32
difference between its float64 bit pattern and that of the pixel centre's (the number of
float64 steps between them: bit-exact; the few alerts where it does not fit in 32 bits,
within about 0.25 deg of Dec 0 or RA 0 or 0.1 deg of a pole, keep their position in a side
table), the AB magnitude (float32) and ``is_new``. Non-decimal object ids (ZTF
``objectId``) also go to a side table.

Alerts older than the newest alert time minus the horizon are never returned; they are
released when at least a quarter of their run has expired (by time span) or the run has
expired whole. Beyond ``max_alerts``, the oldest alerts are dropped (down to 90 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import healpy as hp
import numba
import numpy as np

from mmcross.model.alert import AlertBatch

ORDER = 29
NSIDE = 1 << ORDER
#: ``object_key`` of an alert without object id (``""``) and of a non-decimal one.
NO_OBJECT, TEXT_OBJECT = -1, -2
_POW10 = 10 ** np.arange(19, dtype=np.int64)  # 1 .. 1e18: the digit count of an int64


def pixels29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Order-29 HEALPix NESTED index (int64) of positions in degrees ICRS."""
    if len(ra) == 0:
        return np.empty(0, np.int64)
    return np.asarray(hp.ang2pix(NSIDE, np.asarray(ra, np.float64),
                                 np.asarray(dec, np.float64), nest=True, lonlat=True),
                      np.int64)


_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], np.int64)
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], np.int64)


@numba.njit(cache=True, nogil=True)
def _compress_bits(v):
    """Every other bit of ``v`` (bits 0, 2, 4, ...) packed together."""
    v &= 0x5555555555555555
    v = (v | (v >> 1)) & 0x3333333333333333
    v = (v | (v >> 2)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v >> 4)) & 0x00FF00FF00FF00FF
    v = (v | (v >> 8)) & 0x0000FFFF0000FFFF
    return (v | (v >> 16)) & 0x00000000FFFFFFFF


@numba.njit(cache=True, nogil=True)
def _centres_kernel(pix, jrll, jpll, ra, dec):
    """Centres of order-29 NESTED pixels, degrees (Gorski et al. 2005, ``pix2ang_nest``)."""
    nside = np.int64(1) << ORDER
    npface = nside * nside
    fact2 = 4.0 / (12.0 * npface)
    fact1 = 2.0 * nside * fact2
    nl4 = 4 * nside
    for i in range(pix.shape[0]):
        p = pix[i]
        face = p >> (2 * ORDER)
        ipf = p & (npface - 1)
        ix = _compress_bits(ipf)
        iy = _compress_bits(ipf >> 1)
        jr = jrll[face] * nside - (ix + iy) - 1
        if jr < nside:
            nr = jr
            z = 1.0 - nr * nr * fact2
            kshift = 0
        elif jr > 3 * nside:
            nr = nl4 - jr
            z = nr * nr * fact2 - 1.0
            kshift = 0
        else:
            nr = nside
            z = (2 * nside - jr) * fact1
            kshift = (jr - nside) & 1
        jp = (jpll[face] * nr + (ix - iy) + 1 + kshift) // 2
        if jp > nl4:
            jp -= nl4
        if jp < 1:
            jp += nl4
        ra[i] = np.degrees((jp - (kshift + 1) * 0.5) * (0.5 * np.pi / nr))
        dec[i] = np.degrees(np.arcsin(z))


FAR = np.iinfo(np.int32).min  #: ``dra`` of an alert whose position is in the side table


def _bit_offsets(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (float64) as int32 differences of IEEE-754 bit patterns from ``ref``: adding the
    offset to ``ref``'s bits gives ``x`` back exactly. Also where it does not fit (far)."""
    d = x.view(np.int64) - ref.view(np.int64)
    far = (d <= FAR) | (d > np.iinfo(np.int32).max)
    return np.where(far, 0, d).astype(np.int32), far


def _centres(pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference positions (degrees) of order-29 pixels for the position offsets: the pixel
    centres, to float64 rounding (any deterministic function of the index would do)."""
    ra = np.empty(len(pix))
    dec = np.empty(len(pix))
    _centres_kernel(np.asarray(pix, np.int64), _JRLL, _JPLL, ra, dec)
    return ra, dec


@numba.njit(cache=True, nogil=True)
def _merge_order(a, b):
    """Positions into ``concatenate([a, b])`` (both sorted) giving it sorted, stable."""
    out = np.empty(a.shape[0] + b.shape[0], np.int64)
    i = j = k = 0
    while i < a.shape[0] and j < b.shape[0]:
        if b[j] < a[i]:
            out[k] = a.shape[0] + j
            j += 1
        else:
            out[k] = i
            i += 1
        k += 1
    while i < a.shape[0]:
        out[k] = i
        i += 1
        k += 1
    while j < b.shape[0]:
        out[k] = a.shape[0] + j
        j += 1
        k += 1
    return out


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
        order = _merge_order(a.pix, b.pix)
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
        ids = batch.object_id.tolist()
        n = len(ids)
        try:
            keys = np.fromiter(map(int, ids), np.int64, n)
            # canonical decimal text only: as many characters as digits, no sign
            lengths = np.fromiter(map(len, ids), np.int64, n)
            canonical = (keys >= 0) & (lengths == np.searchsorted(_POW10, keys, "right")) & (
                np.fromiter(map(str.isascii, ids), bool, n))
        except (ValueError, TypeError, OverflowError):  # text ids: one by one
            keys = np.array([int(s) if s.isascii() and s.isdecimal() and len(s) < 19
                             and (s == "0" or s[0] != "0") else TEXT_OBJECT for s in ids],
                            np.int64)
            canonical = keys >= 0
        keys[~canonical] = TEXT_OBJECT
        for i in np.flatnonzero(~canonical).tolist():
            if ids[i] == "":
                keys[i] = NO_OBJECT
            else:
                self._objects[int(batch.alert_id[i])] = str(ids[i])
        return keys

    def add(self, batch: AlertBatch) -> None:
        """Keep ``batch`` (packets and sources dropped) and prune old alerts."""
        if len(batch) == 0:
            return
        pix = pixels29(batch.ra, batch.dec)
        ra_c, dec_c = _centres(pix)
        dra, far_ra = _bit_offsets(batch.ra, ra_c)
        ddec, far_dec = _bit_offsets(batch.dec, dec_c)
        far = far_ra | far_dec
        for i in np.flatnonzero(far).tolist():
            self._positions[int(batch.alert_id[i])] = (float(batch.ra[i]), float(batch.dec[i]))
        dra[far] = FAR  # the position is in the side table
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
        ra, dec = self.positions_of(run, rows)
        mag = run.mag[rows].astype(np.float64)
        return AlertBatch(run.alert_id[rows], self.object_ids_of(run, rows), ra, dec,
                          run.mjd_tai[rows], is_new=run.is_new[rows], mag=mag)

    def positions_of(self, run: SortedRun, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RA and Dec (degrees ICRS, float64, exactly as added) of the alerts ``rows`` of
        ``run``."""
        ra_c, dec_c = _centres(run.pix[rows])
        dra = run.dra[rows]
        ra = (ra_c.view(np.int64) + dra).view(np.float64)
        dec = (dec_c.view(np.int64) + run.ddec[rows]).view(np.float64)
        far = np.flatnonzero(dra == FAR)
        if len(far):
            alert_id = run.alert_id[rows]
            for i in far.tolist():
                ra[i], dec[i] = self._positions[int(alert_id[i])]
        return ra, dec

    def object_ids_of(self, run: SortedRun, rows: np.ndarray) -> np.ndarray:
        """Object ids (object array of str, ``""`` for none) of the alerts ``rows`` of
        ``run``."""
        keys = run.object_key[rows]
        object_id = np.array(list(map(str, keys.tolist())), dtype=object)
        object_id[keys == NO_OBJECT] = ""
        text = np.flatnonzero(keys == TEXT_OBJECT)
        if len(text):
            alert_id = run.alert_id[rows]
            for i in text.tolist():
                object_id[i] = self._objects[int(alert_id[i])]
        return object_id

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

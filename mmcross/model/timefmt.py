"""Vectorised time text: MJD TAI (days) -> ISO 8601 UTC strings with millisecond precision.

Report records carry alert times as text (``YYYY-MM-DDTHH:MM:SS.sssZ``); formatting tens of
thousands through astropy's ``Time.utc.isot`` costs more than matching them. Between leap
seconds UTC is TAI minus a whole number of seconds, so a batch whose first and last times
have the same TAI - UTC a day before the first and a day after the last (from astropy, i.e.
ERFA's leap-second table) is shifted and formatted with numpy's ``datetime64[ms]`` in one
pass; a batch near a leap second goes through astropy. Both round to the nearest
millisecond, identically.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from astropy.time import Time

MJD_UNIX_EPOCH = 40587  # MJD of 1970-01-01
MS_PER_DAY = 86_400_000


@functools.lru_cache(maxsize=4096)
def tai_minus_utc_seconds(mjd_tai: int) -> float:
    """TAI - UTC at the start of the given TAI day (MJD, days), in seconds (37 since 2017)."""
    t = Time(float(mjd_tai), format="mjd", scale="tai")
    return float(round((t.mjd - t.utc.mjd) * 86_400.0, 3))


def iso_utc_from_mjd_tai(mjd_tai: np.ndarray) -> np.ndarray:
    """ISO 8601 UTC text, millisecond precision, trailing ``Z`` (1-d object array of str).

    >>> iso_utc_from_mjd_tai(np.array([60000.0, 60000.5])).tolist()
    ['2023-02-24T23:59:23.000Z', '2023-02-25T11:59:23.000Z']
    """
    mjd = np.atleast_1d(np.asarray(mjd_tai, np.float64))
    if len(mjd) == 0:
        return np.empty(0, object)
    low, high = float(mjd.min()), float(mjd.max())
    finite = np.isfinite(low) and np.isfinite(high)
    # a day before the first and a day after the last time: equal only if no leap second
    # (nor a UTC day of 86,401 s) lies between
    offset = tai_minus_utc_seconds(math.floor(low) - 1) if finite else math.nan
    if not finite or offset != tai_minus_utc_seconds(math.floor(high) + 2) \
            or offset != round(offset):
        text = np.asarray(Time(mjd, format="mjd", scale="tai", precision=3).utc.isot, str)
        return np.char.add(text, "Z").astype(object)
    day = np.floor(mjd)
    ms = np.round((mjd - day) * MS_PER_DAY - offset * 1000.0).astype(np.int64)
    total = (day.astype(np.int64) - MJD_UNIX_EPOCH) * MS_PER_DAY + ms
    return np.datetime_as_string(total.astype("datetime64[ms]"), unit="ms",
                                 timezone="UTC").astype(object)

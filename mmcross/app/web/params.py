"""Query parameters of the web page and JSON API: times given as ISO UTC or MJD TAI."""

from __future__ import annotations

import math
import warnings

from astropy.time import Time

#: Accepted MJD range (days): 1858-11-17 to about 2132, well beyond any notice or alert.
MJD_RANGE = (0.0, 90_000.0)


def parse_time(text: str) -> float:
    """``text`` as MJD TAI (days): a number is taken as MJD TAI, anything else as an
    ISO 8601 UTC date or date-time (``2023-05-18``, ``2023-05-18T12:59:08.167Z``).

    Raises:
        ValueError: ``text`` is neither, or lies outside :data:`MJD_RANGE`.
    """
    text = text.strip()
    try:
        mjd = float(text)
    except ValueError:
        iso = text[:-1] if text.endswith(("Z", "z")) else text
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mjd = float(Time(iso, format="isot" if "T" in iso else "iso",
                                 scale="utc").tai.mjd)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"{text!r} is neither an MJD (TAI) nor an ISO UTC time") from exc
    if not math.isfinite(mjd) or not MJD_RANGE[0] <= mjd <= MJD_RANGE[1]:
        raise ValueError(f"{text!r} is outside MJD {MJD_RANGE[0]:g} to {MJD_RANGE[1]:g}")
    return mjd

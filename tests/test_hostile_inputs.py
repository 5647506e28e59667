"""Hostile sky maps and partner detections: refused with a reason naming the source, or read
correctly; never an uncaught exception, never a hang.

Mutations start from the real LVK and IPN maps in ../shared/data (multi-order, flat NESTED
and RING, gzip); detection payloads from the documented record shape.
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcross.listeners.partner_detections import parse_detections
from mmcross.listeners.partners import SubmissionRefusedError
from mmcross.model.errors import BadSkymapError
from mmcross.model.localization import Localization

MAPS = ["skymaps/fink-mm/S230518h_initial.multiorder.fits",
        "skymaps/skyportal/GW190425_G330561_bayestar.fits.gz"]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fits_maps(shared_file) -> list[bytes]:
    """The real maps, uncompressed (mutations of gzip streams mostly break the CRC only)."""
    out = []
    for p in MAPS:
        raw = shared_file(p).read_bytes()
        out.append(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return out


def _mutate(draw, raw: bytes) -> bytes:
    buf = bytearray(raw)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        # bias towards the headers (first 2 FITS blocks of each HDU), where damage matters
        i = draw(st.one_of(st.integers(0, min(len(buf), 8640) - 1),
                           st.integers(0, len(buf) - 1)))
        op = draw(st.sampled_from(["flip", "cut", "card", "nan"]))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:]
        elif op == "card":  # overwrite with a hostile header value
            card = draw(st.sampled_from([b"NAXIS2  = 999999999999", b"NSIDE   = -4",
                                         b"ORDERING= 'SPIRAL  '", b"TFORM1  = '999999D'",
                                         b"BITPIX  = 7", b"NAXIS1  = 0"]))
            buf[i:i + len(card)] = card
        else:  # a NaN / negative / huge float64 in the data
            value = draw(st.sampled_from([np.nan, -1.0, 1e308, np.inf]))
            buf[i:i + 8] = np.array([value], dtype=">f8").tobytes()
    return bytes(buf)


@pytest.mark.timeout(600)
@FUZZ
@given(data=st.data())
def test_mutated_real_sky_maps_are_read_or_refused_by_name(fits_maps, data) -> None:
    raw = _mutate(data.draw, data.draw(st.sampled_from(fits_maps)))
    try:
        loc = Localization.from_fits(raw, max_bytes=8 << 20)
    except BadSkymapError:
        return
    p = loc.probdensity * loc.pixel_area_sr()
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    assert abs(float(p.sum()) - 1.0) < 1e-9
    levels = loc.credible_levels()
    assert np.all((levels >= 0) & (levels <= 1 + 1e-12))


@pytest.mark.parametrize("value", [np.nan, -1e-3, np.inf])
def test_a_map_with_a_nan_negative_or_infinite_pixel_is_refused(fits_maps, value) -> None:
    from astropy.table import Table

    table = Table.read(io.BytesIO(fits_maps[0]), format="fits")
    table["PROBDENSITY"][5] = value
    out = io.BytesIO()
    table.write(out, format="fits")
    with pytest.raises(BadSkymapError):
        Localization.from_fits(out.getvalue())


@pytest.mark.parametrize("scale", [1.5, 0.5, 1.01])
def test_a_map_whose_probabilities_do_not_sum_to_one_is_refused(fits_maps, scale) -> None:
    from astropy.table import Table

    table = Table.read(io.BytesIO(fits_maps[0]), format="fits")
    table["PROBDENSITY"] *= scale
    out = io.BytesIO()
    table.write(out, format="fits")
    with pytest.raises(BadSkymapError, match="sum to"):
        Localization.from_fits(out.getvalue())


# -- partner detections --------------------------------------------------------------------

_VALUES = st.one_of(st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=5), st.floats(), max_size=3))


@st.composite
def _detection(draw) -> dict:
    rec = {"partner": "goto", "detection_id": "GOTO-1", "ra": 150.1, "dec": -20.3,
           "error": 3e-4, "time": "2026-11-24T01:02:03Z", "properties": {"mag": 18.2}}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*rec, "mjd_tai", "extra"]))
        if draw(st.booleans()):
            rec[key] = draw(_VALUES)
        else:
            rec.pop(key, None)
    return rec


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(records=st.lists(_detection(), min_size=0, max_size=4), garbage=st.booleans())
def test_hostile_detection_payloads_are_refused_with_a_reason(records, garbage) -> None:
    payload = json.dumps(records, allow_nan=True).encode()
    if garbage:
        payload = payload[: len(payload) // 2]
    try:
        det = parse_detections(payload, "goto")
    except SubmissionRefusedError as exc:
        assert exc.reason and str(exc)
        return
    assert len(det) == len(records) >= 1
    assert np.all((det.ra >= 0) & (det.ra <= 360) & (np.abs(det.dec) <= 90))
    assert np.all(np.isfinite(det.mjd_tai))

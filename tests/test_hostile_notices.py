"""Hostile and absurd notices are refused with a reason naming their source, never indexed.

Two halves: the cases measured on main (a poison-pill integer, absurd coordinates, times and
radii, an impossible UTC offset) each pinned to its refusal; and mutation fuzzing of real
notices from ../shared/data (VOEvent XML, GCN JSON, IGWN Avro), asserting that every input
either parses to an event the plausibility policy accepts or raises a mmcross error naming its
source, without hanging.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcross.listeners import parse_notice
from mmcross.model.errors import BadNoticeError, BadSkymapError, MmcrossError
from mmcross.model.event import Event
from mmcross.model.plausibility import (
    EARLIEST_MJD,
    implausible_mjd,
    implausible_radec,
    now_mjd,
)

FERMI_JSON = "gcn/json/gcn-schema/gcn/notices/fermi/gbm/trigger.flight1.example.json"
FUZZ_FILES = [
    "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml",
    "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml",
    "gcn/voevent/fink-mm-kafka-2024-01/INTEGRAL_Wakeup_Pos_010472-924.xml",
    "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml",
    FERMI_JSON,
    "gcn/json/gcn-schema/gcn/notices/icecube/single_neutrino_alerts.gold_bronze_track_alerts.example.json",
    "gcn/avro/userguide/MS181101ab-preliminary.avro",
]
OPTIONS = {"tolerance": 1e-2, "source": "hostile-test"}


def _fermi(shared_file, **changes) -> bytes:
    doc = json.loads(shared_file(FERMI_JSON).read_bytes())
    doc.update(changes)
    return json.dumps(doc).encode()


def _refused(payload: bytes, error: type[MmcrossError] = BadNoticeError,
             **options) -> MmcrossError:
    with pytest.raises(error) as info:
        parse_notice(payload, **{**OPTIONS, **options})
    assert "hostile-test" in str(info.value)  # the source is named
    return info.value


def test_the_unmodified_notice_is_accepted(shared_file) -> None:
    event = parse_notice(_fermi(shared_file), **OPTIONS)
    assert event.event_id == "fermi-gbm:745121685" and event.serial == 2


@pytest.mark.parametrize("value", [10**30, -(10**19), 2**63])
def test_a_record_number_beyond_64_bits_is_refused_at_parse_time(shared_file, value) -> None:
    assert "64-bit" in str(_refused(_fermi(shared_file, record_number=value)))


def test_a_400_digit_ra_is_a_bad_notice_not_an_internal_error(shared_file) -> None:
    payload = _fermi(shared_file).replace(b'"ra": 136.917', b'"ra": ' + b"9" * 400)
    assert b"9" * 400 in payload
    error = _refused(payload)
    assert "RA" in str(error) or "not a number" in str(error)
    assert len(str(error)) < 400  # the number is shortened in the message


@pytest.mark.parametrize("ra", [1e308, 1e20, -1e6, 360.5, -0.5])
def test_absurd_ra_is_refused_not_wrapped(shared_file, ra) -> None:
    assert "RA" in str(_refused(_fermi(shared_file, ra=ra)))


@pytest.mark.parametrize("dec", [90.5, -1e9])
def test_dec_beyond_the_poles_is_refused(shared_file, dec) -> None:
    assert "Dec" in str(_refused(_fermi(shared_file, dec=dec)))


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00", "1800-06-01T00:00:00",
                                  "2500-01-01T00:00:00", "9999-12-31T23:59:59"])
def test_trigger_times_outside_the_survey_era_are_refused(shared_file, when) -> None:
    assert "survey era" in str(_refused(_fermi(shared_file, trigger_time=when)))


def test_an_impossible_utc_offset_is_refused(shared_file) -> None:
    error = _refused(_fermi(shared_file, trigger_time="2024-08-24T02:14:40.43+99:99"))
    assert "offset" in str(error)


def test_a_real_utc_offset_is_applied(shared_file) -> None:
    event = parse_notice(_fermi(shared_file, trigger_time="2024-08-24T04:14:40.43+02:00"),
                         **OPTIONS)
    assert event.trigger_time.isot.startswith("2024-08-24T02:14:40.4")


@pytest.mark.parametrize("radius", [180.0001, 1e9, -1.0, 0.0])
def test_error_radii_that_are_not_regions_are_refused(shared_file, radius) -> None:
    _refused(_fermi(shared_file, ra_dec_error=radius))


def test_a_fermi_voevent_radius_beyond_180_deg_is_refused(shared_file) -> None:
    path = shared_file("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml")
    raw = path.read_bytes()
    start = raw.index(b"<Error2Radius>") + len(b"<Error2Radius>")
    end = raw.index(b"</Error2Radius>")
    _refused(raw[:start] + b"180.0001" + raw[end:])


def test_policy_edges_against_astropy_dates() -> None:
    from astropy.time import Time

    assert Time("1990-01-01T00:00:00", scale="utc").mjd == EARLIEST_MJD
    assert implausible_mjd(EARLIEST_MJD, "t") is None
    assert implausible_mjd(EARLIEST_MJD - 1e-6, "t") is not None
    assert implausible_mjd(now_mjd() + 0.5, "t") is None
    assert implausible_mjd(now_mjd() + 1.5, "t") is not None
    assert implausible_mjd(math.nan, "t") is not None
    assert abs(now_mjd() - Time.now().utc.mjd) < 1e-4
    assert implausible_radec(360.0, 90.0, "p") is None
    assert implausible_radec(0.0, -90.0, "p") is None


# -- mutation fuzzing of real notices ------------------------------------------------------

def _check_outcome(payload: bytes) -> None:
    try:
        event = parse_notice(payload, **OPTIONS)
    except MmcrossError as exc:
        assert "hostile-test" in str(exc), f"error does not name its source: {exc}"
        return
    assert isinstance(event, Event)
    t = float(event.trigger_time.utc.mjd)
    assert implausible_mjd(t, "trigger time") is None
    if event.ra is not None and event.dec is not None:
        assert implausible_radec(event.ra, event.dec, "position") is None
    if event.localization is not None and event.ra is not None:
        level = event.localization.credible_level_at(np.array([event.ra]),
                                                     np.array([event.dec]))
        assert np.all((level >= 0.0) & (level <= 1.0))


@st.composite
def _mutated(draw, originals: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "dup", "digit", "delete"]))
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del raw[i:]
        elif op == "dup":
            j = draw(st.integers(i, min(len(raw), i + 64)))
            raw[i:i] = raw[i:j]
        elif op == "digit":
            raw[i:i] = draw(st.sampled_from([b"9" * 40, b"-", b"1e308", b"NaN", b"\x00"]))
        else:
            del raw[i:i + draw(st.integers(1, 64))]
    return bytes(raw)


@pytest.fixture(scope="module")
def originals(shared_file) -> list[bytes]:
    return [shared_file(p).read_bytes() for p in FUZZ_FILES]


@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_real_notices_parse_or_are_refused_by_name(originals, data) -> None:
    _check_outcome(data.draw(_mutated(originals)))


_LEAF = st.one_of(st.integers(min_value=-(10**40), max_value=10**40),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                  st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
                  st.just("9999-12-31T23:59:59"), st.just("2024-08-24T02:14:40+99:99"))


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.sampled_from(["ra", "dec", "ra_dec_error", "trigger_time", "alert_datetime",
                            "record_number", "id", "containment_probability", "mission",
                            "instrument", "systematic_included", "alert_type", "rate_snr"]),
       value=_LEAF)
def test_json_fields_replaced_by_hostile_values(shared_file, key, value) -> None:
    doc = json.loads(shared_file(FERMI_JSON).read_bytes())
    doc[key] = value
    _check_outcome(json.dumps(doc, allow_nan=True).encode())


def test_fuzz_corpus_is_real(originals) -> None:
    assert len(originals) == len(FUZZ_FILES) and all(len(o) > 200 for o in originals)
    assert all(Path(p).suffix in (".xml", ".json", ".avro") for p in FUZZ_FILES)


# -- cost bombs ----------------------------------------------------------------------------

LVK_JSON = "gcn/json/fink-mm/S230518h-initial.json"


def _lvk_with_map(shared_file, fits_bytes: bytes) -> bytes:
    import base64

    doc = json.loads(shared_file(LVK_JSON).read_bytes())
    doc["event"]["skymap"] = base64.b64encode(fits_bytes).decode()
    return json.dumps(doc).encode()


@pytest.mark.timeout(120)
def test_a_gzip_bomb_sky_map_is_refused_while_decompressing(shared_file) -> None:
    """A ~100 KiB notice whose gzip map inflates to 96 MiB: refused at the 64 MiB limit
    before any FITS parsing, peak memory near the limit, not a multiple of it."""
    import gzip
    import tracemalloc

    bomb = gzip.compress(b"SIMPLE  =" + bytes(96 << 20), compresslevel=9)
    payload = _lvk_with_map(shared_file, bomb)
    assert len(payload) < 1 << 20
    tracemalloc.start()
    try:
        error = _refused(payload, BadSkymapError)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "limit" in str(error)
    assert peak < 200 << 20, f"peak {peak / 2**20:.0f} MiB while refusing the bomb"


def test_an_oversized_base64_map_is_refused_before_decoding(shared_file) -> None:
    payload = _lvk_with_map(shared_file, b"SIMPLE  =" + b" " * 1000)
    error = _refused(payload, max_skymap_bytes=512)
    assert "base64" in str(error) and "limit" in str(error)


def test_an_oversized_notice_file_is_refused_unread(tmp_path) -> None:
    from mmcross.listeners import read_notice_file

    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * 5000 + b"}")
    with pytest.raises(BadNoticeError, match="over the 2048 byte limit"):
        read_notice_file(big, max_skymap_bytes=1024)

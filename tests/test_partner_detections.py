"""Partner detection streams: parsing/authentication and live matching both ways round.

Expected matches are hand-computed: alerts are placed at known declination offsets from the
detection (so separations are exact arcsec), at known time offsets (window edges included),
with known magnitudes. ISO times are checked against an independent datetime computation
(MJD = days since 1858-11-17, TAI = UTC + 37 s since 2017).
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import nullcontext
from datetime import UTC, datetime

import numpy as np
import pytest

from mmcross.listeners.partner_detections import accept_detections, parse_detections
from mmcross.listeners.partner_kafka import PartnerKafkaConsumer
from mmcross.listeners.partners import (
    Partner,
    PartnerRegistry,
    SubmissionRefusedError,
    hash_token,
    sign_submission,
)
from mmcross.matchers.partner_stream_matcher import PartnerMatch, PartnerStreamMatcher
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError

TOKEN = "goto-secret"
AS = 1.0 / 3600.0
T0 = 60000.0


def registry(stream=None, **over) -> PartnerRegistry:
    stream = {"radius_deg": AS, "time_window": [-1.0, 3.0]} if stream is None else stream
    return PartnerRegistry([Partner(name="goto", token_sha256=bytes.fromhex(hash_token(TOKEN)),
                                    stream=stream, **over)])


def record(**over) -> dict:
    rec = {"partner": "goto", "detection_id": "d1", "ra": 10.0, "dec": 20.0, "error": 0.0,
           "mjd_tai": T0, "properties": {"mag": 18.0}}
    rec.update(over)
    return rec


def alerts(ddec_arcsec, dt_days) -> AlertBatch:
    n = len(ddec_arcsec)
    return AlertBatch(np.arange(1, n + 1), [f"o{i}" for i in range(1, n + 1)], np.full(n, 10.0),
                      20.0 + np.asarray(ddec_arcsec) * AS, T0 + np.asarray(dt_days))


# -- parsing and acceptance ----------------------------------------------------------------

def test_parse_list_with_iso_time_and_sparse_properties():
    payload = json.dumps([record(), record(detection_id=7, time="2026-11-24T06:00:00Z",
                                           mjd_tai=None, properties={"flux": 2.5})])
    payload = payload.replace(', "mjd_tai": null', "")
    d = parse_detections(payload, "goto")
    assert list(d.detection_id) == ["d1", "7"]
    days = (datetime(2026, 11, 24, 6, tzinfo=UTC)
            - datetime(1858, 11, 17, tzinfo=UTC)).total_seconds() / 86400.0
    assert d.mjd_tai[1] == pytest.approx(days + 37.0 / 86400.0, abs=1e-9)
    assert d.properties["mag"][0] == 18.0 and np.isnan(d.properties["mag"][1])
    assert np.isnan(d.properties["flux"][0]) and d.properties["flux"][1] == 2.5


@pytest.mark.parametrize("over, reason", [
    ({"dec": 91.0}, "bad_coordinates"),
    ({"ra": -0.5}, "bad_coordinates"),
    ({"ra": "10"}, "bad_detection"),
    ({"error": -1e-4}, "bad_detection"),
    ({"time": "2026-11-24T00:00:00"}, "bad_detection"),  # both time and mjd_tai
    ({"partner": "other"}, "bad_detection"),
    ({"colour": 1}, "bad_detection"),
    ({"properties": {"mag": "bright"}}, "bad_detection"),
    ({"detection_id": "x" * 200}, "bad_detection"),
])
def test_bad_records_are_refused_with_reason(over, reason):
    payload = json.dumps(record(**over)).encode()
    with pytest.raises(SubmissionRefusedError) as exc:
        accept_detections(registry(), "goto", payload, sign_submission(TOKEN, "goto", payload))
    assert exc.value.reason == reason


def test_credentials_size_and_rule_are_checked_before_parsing():
    payload = json.dumps(record()).encode()
    good = sign_submission(TOKEN, "goto", payload)
    assert accept_detections(registry(), "goto", payload, good).partner == "goto"
    cases = [
        (registry(), "goto", sign_submission("wrong", "goto", payload), "bad_credential"),
        (registry(), "goto", None, "bad_credential"),
        (registry(), "nobody", good, "unknown_partner"),
        (registry(max_bytes=len(payload) - 1), "goto", good, "oversized"),
        (registry(stream={}), "goto", good, "no_stream_rule"),
    ]
    for reg, name, sig, reason in cases:
        with pytest.raises(SubmissionRefusedError) as exc:
            accept_detections(reg, name, payload, sig)
        assert exc.value.reason == reason
    tampered = payload.replace(b"20.0", b"21.0")
    with pytest.raises(SubmissionRefusedError, match="signature"):
        accept_detections(registry(), "goto", tampered, good)


def test_duplicate_ids_in_one_payload_are_refused():
    with pytest.raises(SubmissionRefusedError, match="duplicate"):
        parse_detections(json.dumps([record(), record()]), "goto")


class FakeMessage:
    def __init__(self, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._value, self._headers = value, headers

    def topic(self): return "t"  # noqa: E704
    def partition(self): return 0  # noqa: E704
    def offset(self): return 5  # noqa: E704
    def key(self): return b"goto"  # noqa: E704
    def value(self): return self._value  # noqa: E704
    def headers(self): return self._headers  # noqa: E704
    def error(self): return None  # noqa: E704


def test_kafka_detections_message_reaches_callback_and_bad_signature_is_counted():
    got = []
    consumer = PartnerKafkaConsumer.__new__(PartnerKafkaConsumer)  # no broker needed
    consumer.registry, consumer.lock, consumer.stats = registry(), nullcontext(), Counter()
    consumer.options = {}
    consumer.on_detections = lambda p, d: got.append((p, list(d.detection_id)))
    consumer.callback = lambda e: pytest.fail("an event callback for detections")
    payload = json.dumps([record(), record(detection_id="d2")]).encode()
    kind = ("mmcross-kind", b"detections")
    assert consumer._handle(FakeMessage(payload, [
        kind, ("mmcross-signature", sign_submission(TOKEN, "goto", payload).encode())])) is None
    assert got == [("goto", ["d1", "d2"])] and consumer.stats["detections_accepted"] == 1
    consumer._handle(FakeMessage(payload, [kind, ("mmcross-signature", b"00")]))
    assert got == [("goto", ["d1", "d2"])]
    assert consumer.stats["bad_credential"] == 1 and consumer.stats["refused"] == 1


# -- live matching ---------------------------------------------------------------------------

def matcher(stream: dict) -> PartnerStreamMatcher:
    return PartnerStreamMatcher(Config.load(), registry(stream))


def detections(**over):
    return parse_detections(json.dumps(record(**over)), "goto")


# alert ids:       1    2    3    4      5     6
DDEC = [0.9, 1.1, 0.0, 0.0, 0.0, 0.0]
DT = [0.5, 0.5, 3.0, 3.01, -1.0, -1.01]
EXPECTED = {1, 3, 5}  # within 1 arcsec and -1 <= dt <= 3 days (edges included)


def test_new_detection_matches_recent_alerts():
    m = matcher({"radius_deg": AS, "time_window": [-1.0, 3.0]})
    batch = alerts(DDEC, DT)
    assert m.history_window("goto", detections()) == (T0 - 1.0, T0 + 3.0)
    found = m.on_detections("goto", detections(), batch)
    assert {f.alert_id for f in found} == EXPECTED
    one = next(f for f in found if f.alert_id == 1)
    assert one.separation_deg == pytest.approx(0.9 * AS, rel=1e-9)
    assert one.time_offset == pytest.approx(0.5)
    assert json.loads(one.to_json()) == {
        "partner": "goto", "detection_id": "d1", "alert_id": 1, "object_id": "o1",
        "separation_deg": one.separation_deg, "radius_deg": AS, "time_offset_days": 0.5,
        "deltas": {}}
    assert isinstance(one, PartnerMatch)
    # The newest alert (t0 + 3.01 d) closed the detection's window: it is no longer kept.
    assert m.kept("goto") == 0
    # A kept detection re-submitted reports nothing new.
    m = matcher({"radius_deg": AS, "time_window": [-1.0, 3.0]})
    recent = alerts(DDEC[:3], DT[:3])
    assert len(m.on_detections("goto", detections(), recent)) == 2
    assert m.on_detections("goto", detections(), recent) == []
    assert m.kept("goto") == 1


def test_new_alerts_match_kept_detections_once_and_expired_detections_are_dropped():
    m = matcher({"radius_deg": AS, "time_window": [-1.0, 3.0]})
    assert m.on_detections("goto", detections(), AlertBatch.empty()) == []
    assert m.kept("goto") == 1
    first = alerts(DDEC[:3], DT[:3])  # newest alert at t0 + 3: detection still matchable
    assert {f.alert_id for f in m.on_alerts(first)} == {1, 3}
    assert m.on_alerts(first) == []  # re-delivered batch
    assert m.kept("goto") == 1
    late = alerts([0.0], [3.01])
    assert m.on_alerts(late) == []  # outside the window ...
    assert m.kept("goto") == 0  # ... and now nothing can match the detection


def test_n_sigma_radius_uses_combined_errors():
    # radius = 3 * hypot(1", 1") = 4.243"
    m = matcher({"n_sigma": 3.0, "alert_error_deg": AS, "time_window": [-1.0, 3.0]})
    m.on_detections("goto", detections(error=AS), AlertBatch.empty())
    found = m.on_alerts(alerts([4.2, 4.3, -4.2], [0.1, 0.1, 0.1]))
    assert {f.alert_id for f in found} == {1, 3}
    assert found[0].radius_deg == pytest.approx(3 * np.sqrt(2) * AS)


def test_magnitude_rise_constraint_in_both_directions():
    rule = {"radius_deg": AS, "time_window": [-1.0, 3.0],
            "constraints": {"mag": {"max_delta": -0.5}}}
    batch = alerts([0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4])
    mags = {"mag": np.array([17.4, 17.6, np.nan, 17.5])}  # deltas -0.6, -0.4, NaN, -0.5
    m = matcher(rule)
    found = m.on_detections("goto", detections(), batch, alert_properties=mags)
    assert {f.alert_id for f in found} == {1, 4}
    assert found[0].deltas["mag"] == pytest.approx(-0.6)
    m2 = matcher(rule)
    m2.on_detections("goto", detections(), AlertBatch.empty())
    assert {f.alert_id for f in m2.on_alerts(batch, alert_properties=mags)} == {1, 4}
    assert m2.on_alerts(alerts([0.0], [0.5])) == []  # no alert magnitude: no match


def test_partner_without_rule_is_a_config_error():
    m = PartnerStreamMatcher(Config.load())
    with pytest.raises(ConfigError, match="no \\[partners.goto.stream\\]"):
        m.on_detections("goto", detections(), AlertBatch.empty())


# -- magnitudes decoded from Rubin packets reach the constraints ------------------------------

def _packets(mags: list[float | None]) -> list[bytes]:
    """v11.1 wire packets at the detection's position, 0.1 d apart, with ``psfFlux`` (nJy)
    of AB magnitude ``mags[i]`` (``None``: null flux; negative: that flux, no magnitude)."""
    import io

    import fastavro

    from mmcross.app.simulate import simulate_night
    from mmcross.brokers.alert_decoding import encode_wire
    from mmcross.brokers.rubin_schemas import get_schema

    template = next(iter(simulate_night(1, start_mjd_tai=T0, rng=np.random.default_rng(3),
                                        schema_id=1101, alerts_per_visit=1,
                                        cutout_bytes=10).messages()))
    record = fastavro.schemaless_reader(io.BytesIO(template[5:]), get_schema(1101).definition,
                                        None)
    out = []
    for i, mag in enumerate(mags, start=1):
        flux = None if mag is None else mag if mag < 0 else 10 ** ((31.4 - mag) / 2.5)
        ds = {**record["diaSource"], "diaSourceId": i, "diaObjectId": 100 + i, "ra": 10.0,
              "dec": 20.0, "midpointMjdTai": T0 + 0.1 * i, "psfFlux": flux}
        out.append(encode_wire({**record, "diaSource": ds}, 1101))
    return out


def test_decoded_rubin_magnitude_rise_selects_the_brightened_alert(tmp_path):
    from mmcross.app.engine import Engine
    from mmcross.app.transports import Transports
    from mmcross.brokers.alert_decoding import decode_wire_many

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[partners.goto]
token_sha256 = "{hash_token(TOKEN)}"
[partners.goto.stream]
radius_deg = {AS!r}
time_window = [-1.0, 3.0]
constraints = {{ mag = {{ max_delta = -0.5 }} }}
""")
    config = Config.load(cfg)
    # detection at mag 18.0; alerts: rise 0.6 (match), 0.4, null flux, flux < 0, rise 2.0
    batch, errors = decode_wire_many(_packets([17.4, 17.6, None, -300.0, 16.0]))
    assert errors == []
    np.testing.assert_allclose(batch.mag, [17.4, 17.6, np.nan, np.nan, 16.0], atol=1e-5)
    # detection first, alerts later: PartnerStreamMatcher.on_alerts with the batch's mag
    live = Transports(config)
    assert live.match_detections(Engine(config), "goto", detections()) == []
    found = live.match_alerts(batch)
    assert [f.alert_id for f in found] == [1, 5]
    assert found[0].deltas["mag"] == pytest.approx(-0.6, abs=1e-5)
    # alerts first, detection later: matched against the engine's history, mag kept there
    engine = Engine(config)
    engine.on_alerts(batch)
    # the history keeps magnitudes as float32 (<= 48 bytes per remembered alert): 1e-6 mag
    np.testing.assert_allclose(engine.history.all().mag, batch.mag, atol=1e-5, rtol=0)
    late = Transports(config)
    assert [f.alert_id for f in late.match_detections(engine, "goto", detections())] == [1, 5]


def test_alert_batch_mag_is_kept_by_take_and_concatenate_and_nan_when_absent():
    with_mag = AlertBatch([1, 2], ["a", "b"], [1.0, 2.0], [0.0, 0.0], [T0, T0], mag=[18.0, 19.5])
    without = alerts([0.0], [0.0])  # constructed without mag
    assert without.mag.dtype == np.float64 and np.isnan(without.mag).all()
    both = AlertBatch.concatenate([with_mag, without])
    np.testing.assert_array_equal(both.mag, [18.0, 19.5, np.nan])
    np.testing.assert_array_equal(both.take(np.array([2, 1])).mag, [np.nan, 19.5])
    np.testing.assert_array_equal(both.take(both.alert_id != 2).mag, [18.0, np.nan])
    assert len(AlertBatch.empty().mag) == 0
    with pytest.raises(ValueError, match="mag"):
        AlertBatch([1], ["a"], [1.0], [0.0], [T0], mag=[1.0, 2.0])

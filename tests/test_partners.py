"""Partners pushing events over VTP (real sockets on 127.0.0.1) and partner stream matching.

* a partner pushing a real GCN VOEvent with its token gets an ack, the event reaches the
  engine, matches simulated Rubin alerts, and the partner's VTP subscription (a real
  broadcaster with the partner's counterpart filter) receives exactly those counterparts;
* a wrong or missing credential gets a nak and nothing reaches the engine;
* hostile frames (billion laughs, external entity, 50 MB length prefix, truncated frame,
  1000-frame flood) are refused and counted while a well-behaved partner on another
  connection still gets its ack;
* partner stream rules on hand-computed cases, separations checked against astropy.

Waits are bounded; nothing asserts on durations.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from lxml import etree

from mmcross.app.engine import Engine
from mmcross.app.simulate import simulate_night
from mmcross.brokers.vtp import BroadcasterSettings, VTPBroadcaster
from mmcross.listeners import read_notice_file
from mmcross.listeners.partners import (
    PartnerRegistry,
    SubmissionRefusedError,
    TokenBucket,
    hash_token,
    ivorn_authority,
    sign_submission,
)
from mmcross.listeners.vtp_receiver import ReceiverSettings, VTPReceiver
from mmcross.matchers.partner_streams import (
    Detections,
    StreamRule,
    angular_separation_deg,
    match_stream,
    rules_from_config,
)
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError
from mmcross.vtp.base import LENGTH, frame, transport_message
from tests.helpers import (
    BAT,
    BILLION_LAUGHS,
    EXTERNAL_ENTITY,
    GOOD_TOKEN,
    INTEGRAL,
    read_packet,
    result,
    submit,
    with_token,
)

GCN = "gcn/voevent/fink-mm-kafka-2024-01"
GBM = f"{GCN}/Fermi_GBM_Gnd_Pos_727009399-724.xml"  # RA 18.99 Dec 20.47, r 5.71 deg
WAIT = 30.0
NOISY_TOKEN = "noisy-partner-token"




def partner_config(**over) -> Config:
    data = {
        "localization": {"credible_level_tolerance": 1e-2},
        "partners": {
            "goto": {"token_sha256": hash_token(GOOD_TOKEN), "authorities": ["nasa.gsfc.gcn"],
                     "formats": ["voevent"], "max_bytes": 65536, "rate": 0.0, "burst": 50,
                     "hosts": ["127.0.0.1"]},
            "noisy": {"token_sha256": hash_token(NOISY_TOKEN),
                      "authorities": ["nasa.gsfc.gcn"], "rate": 0.0, "burst": 3},
        },
    }
    data.update(over)
    return Config.load(overrides=data)










def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed (EOF, or a reset because our unread bytes were discarded)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True




def wait_until(cond: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


class Recorder:
    def __init__(self, engine: Engine | None = None) -> None:
        self.events = []
        self.engine = engine

    def __call__(self, event) -> None:
        self.events.append(event)
        if self.engine is not None:
            self.engine.on_notice(event)


@pytest.fixture
def receiver_factory():
    started: list[VTPReceiver] = []

    def make(config: Config, callback, **settings) -> VTPReceiver:
        s = ReceiverSettings(port=0, **{"rate": 0.0, "burst": 20, **settings})
        r = VTPReceiver(s, PartnerRegistry.from_config(config), callback,
                        options=notice_options(config)).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


# -- registry ------------------------------------------------------------------------------


def test_registry_stores_hash_only_and_checks_token_and_signature():
    reg = PartnerRegistry.from_config(partner_config())
    goto = reg.get("goto")
    assert goto.token_sha256.hex() == hash_token(GOOD_TOKEN)
    assert GOOD_TOKEN.encode() not in repr(goto).encode()
    assert reg.authenticate_ivorn("ivo://nasa.gsfc.gcn/SWIFT#x", GOOD_TOKEN).name == "goto"
    assert reg.authenticate_ivorn("ivo://NASA.gsfc.gcn/SWIFT#x", NOISY_TOKEN).name == "noisy"
    for ivorn, token, reason in [("ivo://nasa.gsfc.gcn/SWIFT#x", "wrong", "bad_credential"),
                                 ("ivo://nasa.gsfc.gcn/SWIFT#x", None, "bad_credential"),
                                 ("ivo://evil.org/x#1", GOOD_TOKEN, "unknown_partner")]:
        with pytest.raises(SubmissionRefusedError) as info:
            reg.authenticate_ivorn(ivorn, token)
        assert info.value.reason == reason
    with pytest.raises(SubmissionRefusedError, match="may not submit"):
        reg.authenticate_ivorn("ivo://nasa.gsfc.gcn/SWIFT#x", GOOD_TOKEN, "10.0.0.1")
    sig = sign_submission(GOOD_TOKEN, "goto", b"payload")
    assert reg.authenticate_signature("goto", b"payload", sig).name == "goto"
    with pytest.raises(SubmissionRefusedError):
        reg.authenticate_signature("goto", b"payload2", sig)
    with pytest.raises(SubmissionRefusedError):
        reg.authenticate_signature("noisy", b"payload", sig)
    assert ivorn_authority("ivo://Nasa.GSFC.gcn/SWIFT#BAT") == "nasa.gsfc.gcn"
    assert ivorn_authority("http://x") == ""
    with pytest.raises(ConfigError, match="token_sha256"):
        PartnerRegistry.from_config(Config.load(overrides={
            "partners": {"x": {"token_sha256": "abc"}}}))


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back at 2 per second
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] = 100.0  # capped at the burst
    assert sum(bucket.take() for _ in range(10)) == 3


# -- VTP receiver --------------------------------------------------------------------------


def test_partner_push_is_acked_matched_and_counterparts_reach_its_subscription(
        shared_file, receiver_factory):
    config = partner_config()
    engine = Engine(config)
    recorder = Recorder(engine)
    receiver = receiver_factory(config, recorder)
    # The partner's subscription: the broadcaster's filter for the partner's host (127.0.0.1)
    # passes only the counterparts of the partner's own events.
    broadcaster = VTPBroadcaster(BroadcasterSettings(
        port=0, filters=receiver.registry.broadcaster_filters()))
    host, bport = broadcaster.start()
    engine.sinks.append(broadcaster)
    try:
        sub = socket.create_connection((host, bport), timeout=WAIT)
        wait_until(lambda: len(broadcaster.subscribers()) == 1, "subscriber")

        reply = submit(receiver.port, with_token(shared_file(BAT).read_bytes(), GOOD_TOKEN))
        assert reply.get("role") == "ack", result(reply)
        assert reply.findtext("Origin").startswith("ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos")
        assert [e.event_id for e in recorder.events] == ["swift:1208389"]
        event = recorder.events[0]
        assert event.source.startswith("partner:goto vtp://127.0.0.1:")
        assert b"mmcross_token" not in event.raw and GOOD_TOKEN.encode() not in event.raw
        assert receiver.registry.event_ids("goto") == {"swift:1208389"}
        # A GCN event the partner did not submit, straight into the engine.
        gcn_event = read_notice_file(shared_file(GBM), **notice_options(config))
        engine.on_notice(gcn_event)

        # Simulated Rubin alerts: a night of background from mmcross.app.simulate plus 3 alerts
        # inside the BAT circle (r = 0.05 deg) and 2 in the GBM region.
        t0 = event.trigger_mjd_tai
        night = simulate_night(2000, start_mjd_tai=t0 + 0.1, rng=np.random.default_rng(4),
                               first_id=1000).truth()
        planted = AlertBatch(
            np.arange(1, 6), np.arange(1, 6).astype(str),
            [270.6441, 270.6441 + 0.01, 270.6441, 18.99, 19.5],
            [24.4866, 24.4866, 24.4866 + 0.02, 20.47, 21.0],
            [t0 + 0.3] * 3 + [gcn_event.trigger_mjd_tai + 0.3] * 2)
        matches = engine.on_alerts(AlertBatch.concatenate([night, planted]))
        by_event = {}
        for m in matches:
            by_event.setdefault(m.event_id, set()).add(m.alert_id)
        inside = SkyCoord(night.ra, night.dec, unit="deg").separation(
            SkyCoord(270.6441, 24.4866, unit="deg")).deg < 0.05
        assert not inside.any()  # so the BAT matches are exactly the planted three
        assert by_event["swift:1208389"] == {1, 2, 3}
        assert by_event[gcn_event.event_id] >= {4}
        # The partner's subscriber receives the three counterparts of its own event only.
        received = []
        sub.settimeout(WAIT)
        while len(received) < 3:
            packet = read_packet(sub)
            if packet.get("role") == "iamalive":
                continue
            received.append(packet)
            sub.sendall(frame(transport_message("ack", packet.get("ivorn"),
                                                "ivo://partner/subscriber")))
        text = [etree.tostring(p) for p in received]
        assert all(b"1208389" in t for t in text)
        assert broadcaster.stats["filtered_out"] >= 1
        sub.close()
    finally:
        broadcaster.close()
    assert receiver.stats["accepted"] == 1 and receiver.stats["refused"] == 0


def test_wrong_or_missing_credential_gets_nak_and_nothing_reaches_the_engine(
        shared_file, receiver_factory):
    config = partner_config()
    engine = Engine(config)
    recorder = Recorder(engine)
    receiver = receiver_factory(config, recorder)
    bat = shared_file(BAT).read_bytes()
    for token in ("not the token", None, ""):
        reply = submit(receiver.port, with_token(bat, token))
        assert reply.get("role") == "nak"
        assert "authentication failed" in result(reply)
        assert reply.findtext("Origin").startswith("ivo://nasa.gsfc.gcn/SWIFT")
    # A registered token under an unregistered authority is refused too.
    foreign = bat.replace(b"ivo://nasa.gsfc.gcn/SWIFT", b"ivo://elsewhere.org/SWIFT")
    reply = submit(receiver.port, with_token(foreign, GOOD_TOKEN))
    assert reply.get("role") == "nak" and "authentication failed" in result(reply)
    assert recorder.events == []
    assert engine.stats["notices_added"] == 0 and not engine.matcher.event_ids
    assert receiver.stats["bad_credential"] == 3
    assert receiver.stats["unknown_partner"] == 1
    assert receiver.stats["accepted"] == 0


def test_not_an_event_and_oversized_for_partner_are_naked_with_reason(
        shared_file, receiver_factory):
    config = partner_config()
    recorder = Recorder()
    receiver = receiver_factory(config, recorder)
    bat = shared_file(BAT).read_bytes()
    test_role = bat.replace(b'role="observation"', b'role="test"')
    reply = submit(receiver.port, with_token(test_role, GOOD_TOKEN))
    assert reply.get("role") == "nak" and result(reply).startswith("not_an_event")
    padded = with_token(bat, GOOD_TOKEN).replace(b"<What>", b"<What>" + b" " * 70000)
    reply = submit(receiver.port, padded)
    assert reply.get("role") == "nak" and result(reply).startswith("oversized")
    assert recorder.events == []


def test_hostile_frames_are_refused_and_counted_while_a_good_partner_is_served(
        shared_file, receiver_factory):
    config = partner_config()
    recorder = Recorder()
    receiver = receiver_factory(config, recorder, max_refusals=2000)
    bat = with_token(shared_file(BAT).read_bytes(), GOOD_TOKEN)
    gbm = with_token(shared_file(GBM).read_bytes(), GOOD_TOKEN)

    for payload, reason in [(BILLION_LAUGHS % GOOD_TOKEN.encode(), "refused_doctype"),
                            (EXTERNAL_ENTITY % GOOD_TOKEN.encode(), "refused_doctype"),
                            (b"<VOEvent ivorn='ivo://nasa.gsfc.gcn/x#1'><What>", "unparsable")]:
        reply = submit(receiver.port, payload)
        assert reply.get("role") == "nak" and result(reply).startswith(reason)

    # 50 MB length prefix: nak, connection closed, the 50 MB never read.
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as s:
        s.sendall(LENGTH.pack(50 * 1024 * 1024) + b"<VOEvent")
        reply = read_packet(s)
        assert reply.get("role") == "nak" and result(reply).startswith("oversized_frames")
        assert closed_by_peer(s)
    # Truncated frame: 7 kB announced, 100 bytes sent, peer closes.
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as s:
        s.sendall(LENGTH.pack(len(bat)) + bat[:100])
    wait_until(lambda: receiver.stats["truncated_frames"] == 1, "truncated frame counted")

    # A 1000-frame flood from one peer (a registered partner with its right token), while a
    # well-behaved partner submits on its own connection.
    noisy = with_token(shared_file(INTEGRAL).read_bytes(), NOISY_TOKEN)
    answers: list[str] = []

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as s:
            reader = threading.Thread(target=lambda: answers.extend(
                read_packet(s).get("role") for _ in range(1000)), daemon=True)
            reader.start()
            s.sendall(frame(noisy) * 1000)
            reader.join(WAIT)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    wait_until(lambda: receiver.stats["rate_limited"] > 100, "flood under way")
    reply = submit(receiver.port, gbm)
    assert reply.get("role") == "ack", result(reply)
    flooder.join(WAIT)
    assert len(answers) == 1000
    # Connection bucket: burst 20, rate 0 -> 980 refused; partner bucket: burst 3 -> 17 more.
    assert answers.count("ack") == 3 and answers.count("nak") == 997
    assert receiver.stats["rate_limited"] == 997
    reply = submit(receiver.port, bat)
    assert reply.get("role") == "ack", result(reply)
    ids = [e.event_id for e in recorder.events]
    assert ids.count("integral:10472") == 3
    assert sorted(ids) == ["fermi-gbm:727009399"] + ["integral:10472"] * 3 + ["swift:1208389"]
    s = receiver.stats
    assert s["refused_doctype"] == 2 and s["unparsable"] == 1 and s["oversized_frames"] == 1
    assert s["refused"] == 2 + 1 + 1 + 1 + 997


def test_receiver_limits_connections_per_host(receiver_factory):
    receiver = receiver_factory(partner_config(), Recorder(), max_connections_per_host=2)
    socks = [socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT)
             for _ in range(2)]
    wait_until(lambda: receiver.stats["connections"] == 2, "two connections")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as third:
        assert closed_by_peer(third)
    assert receiver.stats["refused_connections"] == 1
    for s in socks:
        s.close()


# -- partner streams -----------------------------------------------------------------------


def _alerts(ra, dec, mjd) -> AlertBatch:
    n = len(ra)
    return AlertBatch(np.arange(100, 100 + n), np.array([f"o{i}" for i in range(n)]),
                      np.asarray(ra, float), np.asarray(dec, float), np.asarray(mjd, float))


def test_separation_agrees_with_astropy():
    rng = np.random.default_rng(1)
    ra1, ra2 = rng.uniform(0, 360, (2, 500))
    dec1, dec2 = np.degrees(np.arcsin(rng.uniform(-1, 1, (2, 500))))
    ours = angular_separation_deg(ra1, dec1, ra2, dec2)
    ref = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_fixed_radius_and_time_window_hand_computed():
    # Detection at (10, 0) deg at MJD 60000; on the equator 1 arcsec of RA is 1 arcsec.
    det = Detections(["d1"], [10.0], [0.0], [0.0], [60000.0])
    arcsec = 1 / 3600
    alerts = _alerts([10 + 0.9 * arcsec, 10 + 1.1 * arcsec, 10.0, 10.0, 10.0],
                     [0, 0, 0.5 * arcsec, 0, 0],
                     [60000.5, 60000.5, 60003.0, 60003.01, 59998.0])
    rule = StreamRule(radius_deg=arcsec, before=-1.0, after=3.0)
    got = match_stream("goto", det, alerts, rule)
    # alert 100: 0.9" inside; 101: 1.1" outside; 102: 0.5" at +3.0 d (edge, inside);
    # 103: +3.01 d outside; 104: -2 d outside.
    assert [m.alert_id for m in got] == [100, 102]
    assert got[0].separation_deg == pytest.approx(0.9 * arcsec, rel=1e-9)
    assert got[0].time_offset == pytest.approx(0.5)
    assert got[1].time_offset == pytest.approx(3.0)


def test_n_sigma_radius_uses_combined_errors_and_wraps_ra():
    # err 3" detection, Rubin 4" -> combined 5"; 2 sigma = 10". Detection at RA 359.999 deg.
    arcsec = 1 / 3600
    det = Detections(["d"], [360 - 2 * arcsec], [0.0], [3 * arcsec], [60000.0])
    alerts = _alerts([7.9 * arcsec, 8.1 * arcsec, 360 - 11.9 * arcsec],
                     [0, 0, 0], [60000.0] * 3)
    rule = StreamRule(radius_deg=None, n_sigma=2.0, alert_error_deg=4 * arcsec)
    got = match_stream("p", det, alerts, rule)
    # separations across RA 0: 9.9" (in), 10.1" (out), 9.9" (in)
    assert [m.alert_id for m in got] == [100, 102]
    assert got[0].radius_deg == pytest.approx(10 * arcsec)
    assert got[0].n_sigma == pytest.approx(0.99, rel=1e-6)


def test_magnitude_rise_constraint():
    det = Detections(["a", "b"], [50.0, 50.0], [-30.0, -30.0], [0.0, 0.0], [60000.0, 60000.0],
                     properties={"mag": [20.0, np.nan]})
    alerts = _alerts([50.0] * 3, [-30.0] * 3, [60001.0] * 3)
    mags = np.array([19.4, 19.6, np.nan])
    rule = StreamRule.from_mapping({"radius_deg": 1e-3, "time_window": [0.0, 2.0],
                                    "constraints": {"mag": {"max_delta": -0.5}}})
    got = match_stream("p", det, alerts, rule, alert_properties={"mag": mags})
    # only 19.4 is >= 0.5 mag brighter than 20.0; detection b has no magnitude
    assert [(m.detection_id, m.alert_id) for m in got] == [("a", 100)]
    assert got[0].deltas["mag"] == pytest.approx(-0.6)
    assert match_stream("p", det, alerts, rule) == []  # no alert magnitudes: no match


def test_stream_rules_from_config_and_validation():
    rules = rules_from_config({"goto": {"stream": {"n_sigma": 3, "time_window": [-1, 3]}},
                               "other": {"token_sha256": "x"}})
    assert set(rules) == {"goto"} and rules["goto"].n_sigma == 3.0
    assert rules["goto"].radius_deg is None
    for bad in ({"radius_deg": -1}, {"time_window": [2, 1]}, {"radius": 1},
                {"constraints": {"mag": {"rise": 1}}}):
        with pytest.raises(ConfigError):
            StreamRule.from_mapping(bad)
    assert math.isclose(StreamRule().radius_deg, 1 / 3600)


def test_json_submission_over_vtp_authenticated_by_partner_name_and_token(
        shared_file, receiver_factory):
    config = partner_config()
    recorder = Recorder()
    receiver = receiver_factory(config, recorder)
    doc = json.loads(shared_file("gcn/json/gcn-schema/gcn/notices/km3net/alert.example.json")
                     .read_bytes())

    def send(partner, token):
        return submit(receiver.port, json.dumps(
            {**doc, "mmcross_partner": partner, "mmcross_token": token}).encode())

    reply = send("noisy", "wrong")
    assert reply.get("role") == "nak" and "authentication failed" in result(reply)
    reply = send("goto", GOOD_TOKEN)  # goto accepts VOEvents only
    assert reply.get("role") == "nak" and result(reply).startswith("format_not_allowed")
    reply = send("noisy", NOISY_TOKEN)
    assert reply.get("role") == "ack", result(reply)
    assert reply.findtext("Origin").startswith("json:noisy:")
    [event] = recorder.events
    assert event.event_id.startswith("km3net:") and event.notice_format == "json"
    assert b"mmcross_token" not in event.raw and NOISY_TOKEN.encode() not in event.raw
    assert receiver.stats["bad_credential"] == 1 and receiver.stats["format_not_allowed"] == 1
    # After a restart the registry re-learns the partner's events from their source.
    fresh = PartnerRegistry.from_config(config)
    assert fresh.restore([event]) == 1 and fresh.owns("noisy", event.event_id)
    assert not fresh.owns("goto", event.event_id)

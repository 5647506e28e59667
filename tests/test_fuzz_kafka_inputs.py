"""Hostile Kafka keys, headers and values on the three inbound topics.

* partner submissions (:func:`mmcross.listeners.partner_kafka.check_submission`): keys None,
  empty, huge, non-UTF-8; our headers missing, duplicated, oversized, in odd case or without a
  value; foreign headers of any size; values None, empty, mutated real notices (signed after
  the mutation, so that they reach the parsers), XML bombs: each message is accepted or
  refused with one of the documented reasons, never anything else, and a correctly signed real
  notice is accepted whatever foreign headers travel with it;
* GCN notices (:func:`mmcross.listeners.gcn_kafka.parse_message`): whatever the key, a value
  gives an event or a :class:`~mmcross.model.errors.MmcrossError` naming its
  ``topic/partition/offset``;
* alerts (:func:`mmcross.brokers.alert_decoding.decode_wire_many`, as the alert consumer
  calls it): bad messages come back as :class:`~mmcross.model.errors.BadAlertError` with their
  index and source, good ones in the same poll are decoded as fastavro decodes them;
* end to end on a real broker (marker ``kafka``): hostile messages mixed with good ones on
  the three topics; the good ones are processed, the bad ones counted or returned for the
  dead-letter topic with their topic/partition/offset.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcross.brokers.alert_decoding import decode_wire_many
from mmcross.brokers.dead_letters import dead_letter_headers
from mmcross.brokers.kafka_alerts import AlertConsumer
from mmcross.brokers.rubin_schemas import get_schema
from mmcross.listeners.gcn_kafka import NoticeConsumer, ReceivedNotice, parse_message
from mmcross.listeners.partner_kafka import (
    MAX_HEADER_BYTES,
    PartnerKafkaConsumer,
    check_submission,
)
from mmcross.listeners.partners import (
    PARTNER_HEADER,
    SIGNATURE_HEADER,
    PartnerRegistry,
    SubmissionRefusedError,
    hash_token,
    sign_submission,
)
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import BadAlertError, MmcrossError
from tests.helpers import BILLION_LAUGHS, EXTERNAL_ENTITY

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
GCN = "gcn/voevent/fink-mm-kafka-2024-01"
BAT = f"{GCN}/Swift_BAT_GRB_Pos_1208389-262.xml"
GBM = f"{GCN}/Fermi_GBM_Gnd_Pos_726773850-268.xml"
KM3NET_JSON = "gcn/json/gcn-schema/gcn/notices/km3net/alert.example.json"
LVK_JSON = "gcn/json/fink-mm/S230518h-initial.json"
WIRE = ["alerts/lsst/samples/lsst.v9_0.wire.7912941781254298.avro",
        "alerts/lsst/samples/lsst.v7_4.wire.HSC_396895612567600.avro",
        "alerts/lsst/samples/lsst.v11_1.wire.fake.avro"]
TOKEN = "partner-secret"
REASONS = {"unknown_partner", "bad_credential", "bad_headers", "oversized",
           "format_not_allowed", "refused_doctype", "unparsable", "rate_limited",
           "not_an_event", "bad_notice", "bad_detection", "bad_coordinates",
           "detections_not_enabled"}
DEADLINE = 300.0  # s, a hang guard (see tests.helpers.DEADLINE), never a measure


def registry() -> PartnerRegistry:
    return PartnerRegistry.from_config(Config.load(overrides={"partners": {
        "goto": {"token_sha256": hash_token(TOKEN), "rate": 1e6, "burst": 1e6}}}))


@pytest.fixture(scope="module")
def options() -> dict:
    return notice_options(Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2}}))


@pytest.fixture(scope="module")
def notices(shared_file) -> dict[str, bytes]:
    return {"bat": shared_file(BAT).read_bytes(), "gbm": shared_file(GBM).read_bytes(),
            "km3net": shared_file(KM3NET_JSON).read_bytes(),
            "lvk": shared_file(LVK_JSON).read_bytes()}


def mutate(draw, raw: bytes) -> bytes:
    """Bit flips, truncations, duplicated blocks and odd bytes in ``raw``."""
    buf = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["flip", "cut", "dup", "bytes"]))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:]
        elif op == "dup":
            buf[i:i] = buf[i:i + draw(st.integers(1, 500))]
        else:
            buf[i:i] = draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\x00", b"1e999",
                                             b"-", b"99999999999999999999999"]))
    return bytes(buf)


# -- partner submissions: the decision on one message -------------------------------------


@st.composite
def partner_messages(draw, notices: dict[str, bytes]):
    """(key, headers, value, signed correctly by the key's partner, our headers clean)."""
    base = draw(st.sampled_from(["bat", "km3net"]))
    value_kind = draw(st.sampled_from(["real", "mutated", "none", "empty", "bomb", "doctype",
                                       "garbage", "huge"]))
    value: bytes | None = {
        "real": notices[base], "none": None, "empty": b"", "bomb": BILLION_LAUGHS,
        "doctype": EXTERNAL_ENTITY.replace(b"%s", b"x"),
        "huge": notices[base] + b" " * 300_000}.get(value_kind)
    if value_kind == "mutated":
        value = mutate(draw, notices[base])
    elif value_kind == "garbage":
        value = draw(st.binary(max_size=400))
    key = draw(st.sampled_from([b"goto", None, b"", b"GOTO", b"goto\xff", b"\xff\xfe",
                                b"g" * 1_000_000, b"nobody"]))
    signer = draw(st.sampled_from(["goto", "key", "none", "wrong"]))
    signature: bytes | None = None
    if signer == "goto":
        signature = sign_submission(TOKEN, "goto", value or b"").encode()
    elif signer == "key" and key is not None and len(key) < 100:
        signature = sign_submission(TOKEN, key.decode("utf-8", "replace"), value or b"").encode()
    elif signer == "wrong":
        signature = draw(st.sampled_from([b"0" * 64, b"", b"\xff" * 64,
                                          b"a" * (MAX_HEADER_BYTES + 1)]))
    headers: list[tuple[str, bytes | None]] = []
    if signature is not None:
        headers.append((draw(st.sampled_from([SIGNATURE_HEADER, "MMCROSS-Signature"])),
                        signature))
    clean = True
    for extra in draw(st.lists(st.sampled_from(["dup_sig", "partner_hdr", "none_hdr",
                                                "foreign", "huge_foreign", "kind"]),
                               max_size=3)):
        if extra == "dup_sig" and signature is not None:
            headers.append((SIGNATURE_HEADER, signature))
            clean = False
        elif extra == "partner_hdr":
            headers.append((PARTNER_HEADER, draw(st.sampled_from([b"goto", b"\xff",
                                                                  b"p" * 5000]))))
            clean = False
        elif extra == "none_hdr":
            headers.append((SIGNATURE_HEADER.upper() + "-X", None))
            headers.append(("mmcross-kind", None))
        elif extra == "foreign":
            headers.append(("trace-id", draw(st.binary(max_size=64))))
        elif extra == "huge_foreign":
            headers.append(("x-blob", b"z" * 2_000_000))
        elif extra == "kind":
            headers.append(("mmcross-kind", draw(st.sampled_from([b"notice", b"\xff",
                                                                  b"DETECTIONS "]))))
            clean = False
    clean = clean and signer == "goto" and key == b"goto"
    return key, headers, value, clean, value_kind


def test_partner_submission_decision_accepts_or_refuses_with_a_known_reason(notices, options):
    reg = registry()

    @FUZZ
    @given(msg=partner_messages(notices))
    def run(msg):
        key, headers, value, clean, value_kind = msg
        try:
            accepted = check_submission(reg, key, headers, value, "submissions/0/7",
                                        options=options, detections=False)
        except SubmissionRefusedError as exc:
            assert exc.reason in REASONS, exc.reason
            assert len(str(exc)) < 20_000  # a huge key or header is never echoed whole
            if clean and value_kind == "real":
                pytest.fail(f"a clean, correctly signed real notice was refused: {exc}")
            return
        assert accepted.partner == "goto" and accepted.event is not None
        assert accepted.event.source == "partner:goto kafka:submissions/0/7"
        assert value_kind in ("real", "mutated")  # nothing else can be a notice

    run()


def test_duplicated_or_oversized_credential_headers_are_refused(notices, options):
    reg = registry()
    value = notices["bat"]
    sig = sign_submission(TOKEN, "goto", value).encode()
    cases = {
        "twice": [(SIGNATURE_HEADER, sig), (SIGNATURE_HEADER, sig)],
        "twice_other_case": [(SIGNATURE_HEADER, sig), ("Mmcross-Signature", b"0" * 64)],
        "huge": [(SIGNATURE_HEADER, sig + b" " * MAX_HEADER_BYTES)],
        "two_partners": [(SIGNATURE_HEADER, sig), (PARTNER_HEADER, b"goto"),
                         (PARTNER_HEADER, b"other")],
    }
    for name, headers in cases.items():
        with pytest.raises(SubmissionRefusedError) as info:
            check_submission(reg, b"goto", headers, value, "t/0/1", options=options)
        assert info.value.reason == "bad_headers", name
    accepted = check_submission(reg, b"goto", [(SIGNATURE_HEADER, sig),
                                               ("x-blob", b"z" * 2_000_000),
                                               ("mmcross-kind", None)], value, "t/0/2",
                                options=options)
    assert accepted.event is not None and accepted.event.event_id == "swift:1208389"


def test_a_huge_partner_name_is_unknown_and_not_echoed(notices, options):
    with pytest.raises(SubmissionRefusedError) as info:
        check_submission(registry(), b"g" * 1_000_000, [], notices["bat"], "t/0/3",
                         options=options)
    assert info.value.reason == "unknown_partner" and len(str(info.value)) < 200


# -- GCN notices ------------------------------------------------------------------------------


@st.composite
def gcn_messages(draw, notices: dict[str, bytes]):
    base = draw(st.sampled_from(["bat", "gbm", "lvk"]))
    kind = draw(st.sampled_from(["real", "mutated", "none", "empty", "garbage", "bomb"]))
    value = {"real": notices[base], "none": None, "empty": b"", "bomb": BILLION_LAUGHS
             }.get(kind)
    if kind == "mutated":
        value = mutate(draw, notices[base])
    elif kind == "garbage":
        value = draw(st.binary(max_size=300))
    key = draw(st.sampled_from([None, b"", b"\xff\xfe", b"k" * 1_000_000]))
    topic = "igwn.gwalert" if base == "lvk" else "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"
    return ReceivedNotice(topic, draw(st.integers(0, 5)), draw(st.integers(0, 2**40)), 0, key,
                          value), kind


def test_gcn_message_gives_an_event_or_an_error_naming_topic_partition_offset(notices,
                                                                              options):
    @FUZZ
    @given(msg=gcn_messages(notices))
    def run(msg):
        notice, kind = msg
        out = parse_message(notice, options)
        assert (out.event is None) != (out.error is None)
        if out.error is not None:
            assert isinstance(out.error, MmcrossError)
            assert notice.source in str(out.error), str(out.error)[:300]
            assert kind != "real", out.error
        else:
            assert kind in ("real", "mutated")
            assert out.event.source == notice.source

    run()


# -- alert messages ---------------------------------------------------------------------------


def fastavro_record(message: bytes) -> dict:
    """Independent reference: the whole packet decoded by fastavro."""
    schema = get_schema(int.from_bytes(message[1:5], "big")).definition
    return fastavro.schemaless_reader(io.BytesIO(message[5:]), schema, None)


@pytest.fixture(scope="module")
def wire_alerts(shared_file) -> list[bytes]:
    return [shared_file(p).read_bytes() for p in WIRE]


def alert_mutation(draw, raw: bytes) -> bytes:
    op = draw(st.sampled_from(["flip", "cut", "schema_id", "magic", "varint", "empty"]))
    buf = bytearray(raw)
    if op == "flip":  # in the fields the decoder reads (the first few hundred bytes)
        i = draw(st.integers(5, min(len(buf) - 1, 600)))
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "cut":
        del buf[draw(st.integers(0, min(len(buf) - 1, 600))):]
    elif op == "schema_id":
        buf[1:5] = draw(st.sampled_from([0, 1, 9999, 2**31 - 1, 2**32 - 1])).to_bytes(4, "big")
    elif op == "magic":
        buf[0] = draw(st.integers(1, 255))
    elif op == "varint":  # a length/varint of ten continuation bytes at the body start
        buf[5:5] = b"\xff" * draw(st.integers(1, 12))
    else:
        buf = bytearray()
    return bytes(buf)


def test_alert_poll_decodes_good_messages_and_returns_bad_ones_with_index(wire_alerts):
    refs = [fastavro_record(m) for m in wire_alerts]

    @FUZZ
    @given(data=st.data())
    def run(data):
        picks = data.draw(st.lists(st.integers(0, len(wire_alerts) - 1), min_size=1,
                                   max_size=6))
        bad = data.draw(st.lists(st.booleans(), min_size=len(picks), max_size=len(picks)))
        messages = [alert_mutation(data.draw, wire_alerts[k]) if b else wire_alerts[k]
                    for k, b in zip(picks, bad, strict=True)]
        sources = [f"alerts/{i % 3}/{100 + i}" for i in range(len(messages))]
        batch, errors = decode_wire_many(messages, sources, keep_packets=False)
        for exc in errors:
            assert isinstance(exc, BadAlertError)
            assert exc.source == sources[exc.index] and sources[exc.index] in str(exc)
            assert bad[exc.index], exc
        refused = {e.index for e in errors}
        ids = list(batch.alert_id)
        good = [i for i in range(len(messages)) if i not in refused]
        assert len(ids) == len(good)
        for i, alert_id in zip(good, ids, strict=True):
            if not bad[i]:
                ref = refs[picks[i]]["diaSource"]
                assert alert_id == ref["diaSourceId"]
        for i in range(len(messages)):
            if not bad[i]:
                assert i not in refused

    run()


# -- end to end on a real broker ---------------------------------------------------------


def _topic(bootstrap: str, prefix: str) -> str:
    name = f"mmcross-{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    return name


def _produce(bootstrap: str, topic: str, messages: list[tuple]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8_000_000})
    for key, value, headers in messages:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def _until(done, poll) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done() and time.monotonic() < deadline:
        poll()


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_hostile_messages_beside_good_ones_on_a_real_broker(kafka_broker, notices, options,
                                                            wire_alerts, tmp_path: Path):
    bat, gbm = notices["bat"], notices["gbm"]
    sig = sign_submission(TOKEN, "goto", bat).encode()
    partner_msgs = [
        (b"goto", bat, [(SIGNATURE_HEADER, sig)]),                           # good
        (None, bat, [(SIGNATURE_HEADER, sig)]),                              # unknown_partner
        (b"\xff\xfe", bat, [(SIGNATURE_HEADER, sig)]),                       # unknown_partner
        (b"g" * 500_000, bat, [(SIGNATURE_HEADER, sig)]),                    # unknown_partner
        (b"goto", bat, [(SIGNATURE_HEADER, sig), (SIGNATURE_HEADER, sig)]),  # bad_headers
        (b"goto", bat, [(SIGNATURE_HEADER, b"f" * 4000)]),                   # bad_headers
        (b"goto", None, [(SIGNATURE_HEADER, sig)]),                          # bad_credential
        (b"goto", bat, []),                                                  # bad_credential
        (b"goto", bat, [(SIGNATURE_HEADER, sig), ("x-blob", b"z" * 1_000_000)]),  # good
    ]
    gcn_msgs = [(None, gbm, None), (b"\xff" * 100_000, b"<VOEvent", None),
                (b"k", None, None), (b"k", b"\x00\x01binary", None), (None, gbm, None)]
    alert_msgs = [(None, wire_alerts[0], None), (b"\xff", wire_alerts[0][:40], None),
                  (b"k" * 200_000, b"\x00" + (9999).to_bytes(4, "big") + b"x", None),
                  (None, None, None), (None, wire_alerts[1], None)]
    topics = {name: _topic(kafka_broker, name) for name in ("partner", "gcn", "alerts")}
    _produce(kafka_broker, topics["partner"], partner_msgs)
    _produce(kafka_broker, topics["gcn"], gcn_msgs)
    _produce(kafka_broker, topics["alerts"], alert_msgs)

    def group() -> dict:
        return {"bootstrap.servers": kafka_broker, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest"}

    accepted: list = []
    config = Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2},
        "partners": {"goto": {"token_sha256": hash_token(TOKEN), "rate": 1e6, "burst": 1e6}}})
    partner = PartnerKafkaConsumer.from_config(config, group(), accepted.append,
                                               topic=topics["partner"])
    try:
        _until(lambda: partner.stats["messages"] >= len(partner_msgs),
               lambda: partner.poll(100, timeout=0.5))
    finally:
        partner.close()
    s = partner.stats
    assert s["messages"] == len(partner_msgs) and s["accepted"] == 2
    assert (s["unknown_partner"], s["bad_headers"], s["bad_credential"]) == (3, 2, 2)
    assert s["refused"] == len(partner_msgs) - 2
    assert [e.event_id for e in accepted] == ["swift:1208389"] * 2
    assert [e.source for e in accepted] == [f"partner:goto kafka:{topics['partner']}/0/0",
                                            f"partner:goto kafka:{topics['partner']}/0/8"]

    received: list[ReceivedNotice] = []
    gcn = NoticeConsumer({**group(), "security.protocol": "PLAINTEXT"}, [topics["gcn"]],
                         notice_options=options)
    try:
        _until(lambda: len(received) >= len(gcn_msgs),
               lambda: received.extend(gcn.poll(50, timeout=0.5)))
    finally:
        gcn.close()
    assert [n.offset for n in received] == list(range(len(gcn_msgs)))
    assert [n.event.event_id for n in received if n.event] == ["fermi-gbm:726773850"] * 2
    for n in received:
        if n.error is not None:
            assert f"{topics['gcn']}/0/{n.offset}" in str(n.error)
    assert [n.offset for n in received if n.error] == [1, 2, 3]

    alerts = AlertConsumer(group(), [topics["alerts"]], keep_packets=False)
    decoded, refused = [], []
    try:
        def poll() -> None:
            polled = alerts.poll(100, timeout=0.5)
            decoded.extend(polled.batch.alert_id.tolist())
            refused.extend(polled.refused)
        _until(lambda: len(decoded) + len(refused) >= len(alert_msgs), poll)
    finally:
        alerts.close()
    assert sorted(decoded) == sorted(fastavro_record(m)["diaSource"]["diaSourceId"]
                                     for m in (wire_alerts[0], wire_alerts[1]))
    assert sorted(r.source.offset for r in refused) == [1, 2, 3]
    for r in refused:
        assert (r.source.topic, r.source.partition) == (topics["alerts"], 0)
        headers = dict(dead_letter_headers(r.source, r.error))
        assert headers["mmcross.source.topic"] == topics["alerts"].encode()
        assert headers["mmcross.source.offset"] == str(r.source.offset).encode()
        assert str(r.source) in headers["mmcross.reason"].decode()
    assert all(isinstance(r.error, BadAlertError) and r.error.reason
               and r.error.source == str(r.source) for r in refused)

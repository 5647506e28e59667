"""Partner submissions over a real local Kafka broker (marked ``kafka``).

Signed submissions of real GCN VOEvents and of GCN-unified-schema JSON reach the engine and
match simulated Rubin alerts; unsigned, wrongly signed, unknown-partner, oversized,
entity-laden and flooding messages are refused and counted, while the well-behaved partner's
messages interleaved with them are all accepted.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from mmcross.app.engine import Engine
from mmcross.listeners.partner_kafka import PartnerKafkaConsumer
from mmcross.listeners.partners import PARTNER_HEADER, SIGNATURE_HEADER, hash_token, sign_submission
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from tests.helpers import BILLION_LAUGHS, EXTERNAL_ENTITY

pytestmark = pytest.mark.kafka

GCN = "gcn/voevent/fink-mm-kafka-2024-01"
BAT = f"{GCN}/Swift_BAT_GRB_Pos_1208389-262.xml"
INTEGRAL = f"{GCN}/INTEGRAL_Wakeup_Pos_010472-924.xml"
KM3NET_JSON = "gcn/json/gcn-schema/gcn/notices/km3net/alert.example.json"
TOKEN = "partner-secret"
NOISY = "noisy-secret"
DEADLINE = 300.0  # s, a hang guard (see tests.helpers.DEADLINE), never a measure


def _topic(bootstrap: str) -> str:
    name = f"mmcross-partner-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    return name


def _config() -> Config:
    return Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2},
        "partners": {
            "goto": {"token_sha256": hash_token(TOKEN), "max_bytes": 16384, "rate": 0.0,
                     "burst": 50},
            "noisy": {"token_sha256": hash_token(NOISY), "rate": 0.0, "burst": 2},
            "xmlonly": {"token_sha256": hash_token("x"), "formats": ["voevent"]},
        }})


def _msg(partner: str, token: str | None, value: bytes, *, in_header: bool = False):
    headers = []
    if token is not None:
        headers.append((SIGNATURE_HEADER, sign_submission(token, partner, value).encode()))
    if in_header:
        headers.append((PARTNER_HEADER, partner.encode()))
        return {"key": None, "value": value, "headers": headers}
    return {"key": partner.encode(), "value": value, "headers": headers}


def test_signed_submissions_accepted_and_matched_hostile_ones_refused(kafka_broker, shared_file):
    config = _config()
    topic = _topic(kafka_broker)
    bat = shared_file(BAT).read_bytes()
    integral = shared_file(INTEGRAL).read_bytes()
    km3_path = shared_file(KM3NET_JSON)
    km3 = km3_path.read_bytes()

    good = [_msg("goto", TOKEN, bat), _msg("goto", TOKEN, km3, in_header=True)]
    hostile = [
        (_msg("goto", None, bat), "bad_credential"),                      # unsigned
        (_msg("goto", "wrong", bat), "bad_credential"),                   # wrong key
        (_msg("goto", NOISY, bat), "bad_credential"),                     # another's key
        (_msg("stranger", TOKEN, bat), "unknown_partner"),
        (_msg("goto", TOKEN, bat + b" " * 20000), "oversized"),
        (_msg("goto", TOKEN, BILLION_LAUGHS % b"x"), "refused_doctype"),
        (_msg("goto", TOKEN, EXTERNAL_ENTITY % b"x"), "refused_doctype"),
        (_msg("xmlonly", "x", km3), "format_not_allowed"),
    ]
    flood = [_msg("noisy", NOISY, integral) for _ in range(1000)]
    # Interleave: hostile, then half the flood, good[0], the rest of the flood, good[1].
    messages = ([m for m, _ in hostile] + flood[:500] + [good[0]] + flood[500:] + [good[1]])
    producer = Producer({"bootstrap.servers": kafka_broker, "linger.ms": 20})
    for m in messages:
        producer.produce(topic, **m)
        producer.poll(0)
    assert producer.flush(30) == 0

    engine = Engine(config)
    accepted = []

    def callback(event) -> None:
        accepted.append(event)
        engine.on_notice(event)

    consumer = PartnerKafkaConsumer.from_config(
        config, {"bootstrap.servers": kafka_broker, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        callback, topic=topic)
    try:
        deadline = time.monotonic() + DEADLINE
        while consumer.stats["messages"] < len(messages) and time.monotonic() < deadline:
            consumer.poll(500, timeout=0.5)
    finally:
        consumer.close()

    s = consumer.stats
    assert s["messages"] == len(messages)
    assert s["bad_credential"] == 3 and s["unknown_partner"] == 1 and s["oversized"] == 1
    assert s["refused_doctype"] == 2 and s["format_not_allowed"] == 1
    assert s["rate_limited"] == 998  # noisy: burst 2, rate 0
    assert s["accepted"] == 4
    ids = [e.event_id for e in accepted]
    assert ids.count("integral:10472") == 2
    assert "swift:1208389" in ids
    km3_event = next(e for e in accepted if e.source.startswith("partner:goto kafka:") and
                    e.notice_format == "json")
    assert consumer.registry.event_ids("goto") == {"swift:1208389", km3_event.event_id}
    assert consumer.registry.event_ids("noisy") == {"integral:10472"}

    # The partner's event matches simulated Rubin alerts near its position.
    event = next(e for e in accepted if e.event_id == "swift:1208389")
    t = event.trigger_mjd_tai + 0.2
    matches = engine.on_alerts(AlertBatch(
        np.arange(1, 4), np.array(["a", "b", "c"]), np.array([270.6441, 270.65, 100.0]),
        np.array([24.4866, 24.49, -40.0]), np.full(3, t)))
    assert {(m.event_id, m.alert_id) for m in matches} == {("swift:1208389", 1),
                                                           ("swift:1208389", 2)}

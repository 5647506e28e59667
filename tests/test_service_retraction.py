"""A GW retraction notice through Kafka: every report of the event is revoked once.

MS181101ab (the mock superevent of the GCN user guide, role ``test``): its preliminary notice
and simulated Rubin alerts (counterparts injected inside its localization) go through the
real local broker, then its retraction notice. The report topic must hold, message by
message, one match record and one revocation record per expected match, and nothing else.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from brokers.reports import match_from_avro
from catalogs import Store
from listeners import read_notice_file
from mmcross.config import Config, notice_options
from tests.test_service_kafka import (
    _committed,
    _count,
    _create_topics,
    _expected,
    _inside,
    _night,
    _produce,
    _read_all,
    _wait,
)

PRELIMINARY = "gcn/json/userguide/MS181101ab-preliminary.json"
RETRACTION = "gcn/json/userguide/MS181101ab-retraction.json"


def produce_notices(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Publish notices compressed, as GCN does (a 1 MB sky map fits the broker's limit)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "compression.type": "zstd", "message.max.bytes": 16 << 20})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def service_config(path: Path, bootstrap: str, names: dict[str, str], *,
                   notice_topics: list[str], batch_size: int = 200, extra: str = "") -> Path:
    """A listen config for the tests: loose circle tolerance, test-role notices accepted."""
    topics = ", ".join(f'"{t}"' for t in notice_topics)
    path.write_text(f"""
[localization]
credible_level_tolerance = 1e-2
[listeners]
roles = ["observation", "test"]
[kafka]
bootstrap_servers = "{bootstrap}"
alert_topics = ["{names['alerts']}"]
group_id = "{names['group']}"
report_topic = "{names['reports']}"
voevent_topic = "{names['voevents']}"
dead_letter_topic = "{names['dead']}"
[kafka.properties]
"security.protocol" = "PLAINTEXT"
[kafka.alert_properties]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000
[kafka.gcn]
topics = [{topics}]
[service]
batch_size = {batch_size}
poll_timeout = 0.2
log_every = 2.0
backoff_max = 2.0
{extra}
""")
    return path


def unique_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"alerts": f"alerts-{tag}", "reports": f"reports-{tag}",
            "voevents": f"voevents-{tag}", "dead": f"dead-{tag}", "group": f"mmcross-{tag}",
            "gw": f"igwn.gwalert.test-{tag}"}


@pytest.mark.kafka
def test_retraction_revokes_each_report_exactly_once_on_the_report_topic(
        kafka_broker: str, shared_file, tmp_path: Path) -> None:
    from mmcross.service import ListenService

    names = unique_names()
    _create_topics(kafka_broker, [names["alerts"]], 2)
    _create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    _create_topics(kafka_broker, [names["gw"]], 1)
    config = Config.load(service_config(tmp_path / "c.toml", kafka_broker, names,
                                        notice_topics=[names["gw"]]))
    opts = notice_options(config)
    prelim_path, retract_path = shared_file(PRELIMINARY), shared_file(RETRACTION)
    prelim = read_notice_file(prelim_path, **opts)
    retraction = read_notice_file(retract_path, **opts)
    assert retraction.event_id == prelim.event_id and retraction.retracted
    t0 = prelim.trigger_mjd_tai
    night = _night(600, t0 - 0.002, 0.05, prelim.localization, 8, t0, t0 + 0.05, 7 * 10**6, 11)
    msgs = list(night.messages())
    expected = _expected(config, [prelim, msgs])
    assert _inside(night, prelim, 0.9) <= set(expected) and len(expected) >= 4

    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    service = ListenService(config, Store(db), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        produce_notices(kafka_broker, names["gw"], [prelim_path.read_bytes()])
        _wait(lambda: service.engine is not None and prelim.event_id in service.engine.index,
              "preliminary notice applied")
        _produce(kafka_broker, names["alerts"], msgs)
        _wait(lambda: _committed(kafka_broker, names["group"], names["alerts"]) == len(msgs),
              "alerts committed")
        _wait(lambda: _count(kafka_broker, names["reports"]) >= len(expected), "match reports")
        produce_notices(kafka_broker, names["gw"], [retract_path.read_bytes()])
        _wait(lambda: prelim.event_id not in service.engine.index, "retraction applied")
        _wait(lambda: _count(kafka_broker, names["reports"]) >= 2 * len(expected),
              "revocation reports")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()

    reports = _read_all(kafka_broker, names["reports"])
    kinds = Counter()
    for msg in reports:
        got = match_from_avro(msg.value())
        key = msg.key().decode()
        assert key == f"{got.event_id}|{got.alert_id}"
        assert dict(msg.headers())["mmcross.retracted"] == (b"true" if got.retracted
                                                            else b"false")
        kinds[(key, got.retracted)] += 1
    assert {k for k, _ in kinds} == set(expected)
    assert set(kinds) == {(k, r) for k in expected for r in (False, True)}
    assert max(kinds.values()) == 1  # one match and one revocation per key, message by message
    voevents = _read_all(kafka_broker, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == Counter(
        msg.key().decode() for msg in reports)
    retractions = [m for m in voevents if dict(m.headers())["mmcross.retracted"] == b"true"]
    assert len(retractions) == len(expected)
    with Store(db) as store:
        stored = store.matches(prelim.event_id, include_retracted=True)
        assert {m.key for m in stored} == set(expected) and all(m.retracted for m in stored)
        assert store.matches(prelim.event_id, include_retracted=False) == []

"""A GW retraction notice through Kafka: every report of the event is revoked once.

MS181101ab (the mock superevent of the GCN user guide, role ``test``): its preliminary notice
and simulated Rubin alerts (counterparts injected inside its localization) go through the
real local broker, then its retraction notice. The report topic must hold, message by
message, one match record and one revocation record per expected match, and nothing else.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

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
    produce_notices,
    running,
    service_config,
    unique_names,
)

PRELIMINARY = "gcn/json/userguide/MS181101ab-preliminary.json"
RETRACTION = "gcn/json/userguide/MS181101ab-retraction.json"


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
    with running(service):
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

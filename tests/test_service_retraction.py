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

from mmcross.brokers.reports import match_from_avro
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    create_topics,
    group_offset,
    injected_in,
    offline_matches,
    produce_notices,
    produce_values,
    read_topic,
    running,
    service_config,
    sim_night,
    topic_size,
    unique_names,
    wait_for,
)

PRELIMINARY = "gcn/json/userguide/MS181101ab-preliminary.json"
RETRACTION = "gcn/json/userguide/MS181101ab-retraction.json"


@pytest.mark.kafka
def test_retraction_revokes_each_report_exactly_once_on_the_report_topic(
        kafka_broker: str, shared_file, tmp_path: Path) -> None:
    from mmcross.app.service import ListenService

    names = unique_names()
    create_topics(kafka_broker, [names["alerts"]], 2)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(kafka_broker, [names["gw"]], 1)
    config = Config.load(service_config(tmp_path / "c.toml", kafka_broker, names,
                                        notice_topics=[names["gw"]]))
    opts = notice_options(config)
    prelim_path, retract_path = shared_file(PRELIMINARY), shared_file(RETRACTION)
    prelim = read_notice_file(prelim_path, **opts)
    retraction = read_notice_file(retract_path, **opts)
    assert retraction.event_id == prelim.event_id and retraction.retracted
    t0 = prelim.trigger_mjd_tai
    night = sim_night(600, t0 - 0.002, 0.05, prelim.localization, 8, t0, t0 + 0.05, 7 * 10**6, 11)
    msgs = list(night.messages())
    expected = offline_matches(config, [prelim, msgs])
    assert injected_in(night, prelim, 0.9) <= set(expected) and len(expected) >= 4

    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    service = ListenService(config, Store(db), env={})
    with running(service):
        produce_notices(kafka_broker, names["gw"], [prelim_path.read_bytes()])
        wait_for(lambda: service.engine is not None and prelim.event_id in service.engine.index,
                 "preliminary notice applied")
        produce_values(kafka_broker, names["alerts"], msgs)
        wait_for(lambda: group_offset(kafka_broker, names["group"], names["alerts"]) == len(msgs),
                 "alerts committed")
        wait_for(lambda: topic_size(kafka_broker, names["reports"]) >= len(expected),
                 "match reports")
        produce_notices(kafka_broker, names["gw"], [retract_path.read_bytes()])
        wait_for(lambda: prelim.event_id not in service.engine.index, "retraction applied")
        wait_for(lambda: topic_size(kafka_broker, names["reports"]) >= 2 * len(expected),
                 "revocation reports")

    reports = read_topic(kafka_broker, names["reports"])
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
    voevents = read_topic(kafka_broker, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == Counter(
        msg.key().decode() for msg in reports)
    retractions = [m for m in voevents if dict(m.headers())["mmcross.retracted"] == b"true"]
    assert len(retractions) == len(expected)
    with Store(db) as store:
        stored = store.matches(prelim.event_id, include_retracted=True)
        assert {m.key for m in stored} == set(expected) and all(m.retracted for m in stored)
        assert store.matches(prelim.event_id, include_retracted=False) == []

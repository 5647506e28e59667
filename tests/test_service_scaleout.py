"""Scale-out: two ``mmcross listen`` processes in one consumer group on the real broker.

Both read every GCN notice (each has a notice consumer group of its own), and share the four
partitions of the alert topic: the alert ids each one stored are disjoint and together make
the whole stream, and the report topic holds the expected reports exactly once.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    GBM_NOTICE,
    GW_NOTICE,
    create_topics,
    group_offset,
    injected_in,
    offline_matches,
    produce_notices,
    produce_values,
    read_topic,
    service_config,
    sim_night,
    start_listener,
    unique_names,
    wait_for,
)

_ASSIGNED = re.compile(r"alert partitions assigned: (.*)")


def _assigned(log_path: Path) -> bool:
    return log_path.exists() and bool(_ASSIGNED.search(log_path.read_text(errors="replace")))


@pytest.mark.kafka
def test_two_listeners_share_the_alert_partitions_and_each_sees_every_event(
        kafka_broker: str, shared_file, tmp_path: Path) -> None:
    names = unique_names()
    gbm_topic = f"gcn.classic.voevent.FERMI_GBM_GND_POS.{names['group']}"
    create_topics(kafka_broker, [names["alerts"]], 4)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(kafka_broker, [names["gw"], gbm_topic], 1)
    cfg = service_config(tmp_path / "c.toml", kafka_broker, names,
                         notice_topics=[names["gw"], gbm_topic], batch_size=100)
    config = Config.load(cfg)
    gw_path, gbm_path = shared_file(GW_NOTICE), shared_file(GBM_NOTICE)
    opts = notice_options(config)
    gw, gbm = read_notice_file(gw_path, **opts), read_notice_file(gbm_path, **opts)
    g0, b0 = gw.trigger_mjd_tai, gbm.trigger_mjd_tai
    gw_night = sim_night(1200, g0 - 0.002, 0.2, gw.localization, 12, g0, g0 + 0.2, 11 * 10**6, 5)
    grb_night = sim_night(800, b0 - 0.002, 0.1, gbm.localization, 8, b0, b0 + 0.1, 12 * 10**6, 6)
    gw_msgs, grb_msgs = list(gw_night.messages()), list(grb_night.messages())
    expected = offline_matches(config, [gw, gbm, gw_msgs, grb_msgs])
    assert injected_in(gw_night, gw, 0.9) | injected_in(grb_night, gbm, 0.9) <= set(expected)
    assert {k.split("|")[0] for k in expected} == {gw.event_id, gbm.event_id}

    produce_notices(kafka_broker, names["gw"], [gw_path.read_bytes()])
    produce_notices(kafka_broker, gbm_topic, [gbm_path.read_bytes()])
    dbs = [f"sqlite:///{tmp_path / f'live{i}.sqlite'}" for i in (0, 1)]
    logs = [tmp_path / f"listen{i}.log" for i in (0, 1)]
    procs = [start_listener(cfg, db, log, instance=f"l{i}")  # own transactional ids
             for i, (db, log) in enumerate(zip(dbs, logs, strict=True))]
    try:
        for db in dbs:  # each process sees every event
            wait_for(lambda db=db: {gw.event_id, gbm.event_id} <= {
                e["event_id"] for e in Store(db).events()}, f"both events in {db}")
        wait_for(lambda: all(_assigned(p) for p in logs), "both listeners assigned partitions")
        produce_values(kafka_broker, names["alerts"], gw_msgs + grb_msgs)
        total = len(gw_msgs) + len(grb_msgs)
        wait_for(lambda: group_offset(kafka_broker, names["group"], names["alerts"]) == total,
                 "all alerts committed")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)

    seen = []
    for db in dbs:
        with Store(db) as store:
            seen.append(set(store.load_alert_history(0.0).alert_id.tolist()))
    assert all(seen), "one listener got no alert partition"
    assert not seen[0] & seen[1]  # shared, not duplicated
    assert len(seen[0] | seen[1]) == total

    reports = read_topic(kafka_broker, names["reports"])
    counts = Counter(m.key().decode() for m in reports)
    assert set(counts) == set(expected), (
        f"missing {set(expected) - set(counts)}, unexpected {set(counts) - set(expected)}")
    assert max(counts.values()) == 1, {k: n for k, n in counts.items() if n > 1}

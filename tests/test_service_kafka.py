"""``mmcross listen`` against the real local Apache Kafka broker (scripts/kafka_local.py).

Real GCN notices from ``../shared/data`` are published to their GCN topic names, simulated
Rubin wire-format alerts (counterparts injected inside the localizations, some before the
notice arrives) and garbage to an alert topic. The reports on the report topic are counted
message by message (no de-duplication by key on the reading side) and compared with the
offline engine run over the same notices and alerts, and with the injected counterparts inside
the 90% credible regions.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from mmcross.brokers.kafka_config import (
    alert_consumer_config,
    base_properties,
    gcn_consumer_config,
    producer_config,
)
from mmcross.brokers.reports import match_from_avro
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    DEADLINE,
    GBM_NOTICE,
    GW_NOTICE,
    create_topics,
    group_offset,
    injected_in,
    offline_matches,
    produce_values,
    read_topic,
    service_config,
    sim_night,
    start_listener,
    unique_names,
    wait_for,
)

# -- helpers -----------------------------------------------------------------------------





























@pytest.fixture(scope="module")
def notices(shared_file):
    gw, gbm = shared_file(GW_NOTICE), shared_file(GBM_NOTICE)
    return {"gw": gw.read_bytes(), "gbm": gbm.read_bytes(), "gw_path": gw, "gbm_path": gbm}


def _events(config: Config, notices: dict):
    opts = notice_options(config)
    return read_notice_file(notices["gw_path"], **opts), read_notice_file(
        notices["gbm_path"], **opts)


# -- configuration (no broker) -----------------------------------------------------------

def test_kafka_env_overrides_config_file_and_command_line_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "file:1"\ngroup_id = "g"\n'
                   '[kafka.properties]\n"linger.ms" = 7\n"client.id" = "from-file"\n')
    config = Config.load(cfg)
    env = {"KAFKA_CLIENT_ID": "from-env", "KAFKA_SOCKET_KEEPALIVE_ENABLE": "true",
           "OTHER": "x"}
    props = base_properties(config, env=env)
    given = {k: v for k, v in props.items() if not k.startswith("reconnect.")}
    assert given == {"bootstrap.servers": "file:1", "linger.ms": 7, "client.id": "from-env",
                     "socket.keepalive.enable": "true"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = "env:2"
    assert base_properties(config, env=env)["bootstrap.servers"] == "env:2"
    cli = alert_consumer_config(config, env=env, overrides={"bootstrap.servers": "cli:3"})
    assert cli["bootstrap.servers"] == "cli:3" and cli["group.id"] == "g"
    assert "session.timeout.ms" not in producer_config(config, env={})
    assert cli["enable.auto.commit"] is False
    producer = producer_config(config, env={"KAFKA_ACKS": "1"})
    assert producer["acks"] == "1" and producer["transactional.id"] == f"g.{socket.gethostname()}"
    assert cli["isolation.level"] == "read_committed"
    cfg.write_text('[kafka]\nbootstrap_servers = "file:1"\ngroup_id = "g"\ninstance = "b"\n')
    assert producer_config(Config.load(cfg), env={})["transactional.id"] == "g.b"


def test_gcn_consumer_gets_a_group_of_its_own_per_process_and_credentials(
        tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "local:1"\n')
    a, creds = gcn_consumer_config(Config.load(cfg), env={})
    b, _ = gcn_consumer_config(Config.load(cfg), env={})
    assert a["bootstrap.servers"] == "local:1" and a["security.protocol"] == "PLAINTEXT"
    assert a["group.id"] != b["group.id"] and creds["client_id"] is None
    cfg.write_text('[kafka]\nbootstrap_servers = "local:1"\n'
                   '[kafka.gcn]\nclient_id = "abc"\nclient_secret = "s"\ngroup_id = "me"\n')
    props, creds = gcn_consumer_config(Config.load(cfg), env={"GCN_KAFKA_LINGER_MS": "3"})
    assert "bootstrap.servers" not in props  # gcn_kafka fills kafka.<domain> in
    assert props["group.id"] == "me" and props["linger.ms"] == "3"
    assert creds == {"client_id": "abc", "client_secret": "s", "domain": "gcn.nasa.gov"}


# -- end to end on the broker ------------------------------------------------------------

@pytest.mark.kafka
def test_listen_reports_each_expected_match_once_and_dead_letters_garbage(
        kafka_broker: str, notices: dict, tmp_path: Path) -> None:
    from mmcross.app.service import ListenService

    names = unique_names()
    create_topics(kafka_broker, [names["alerts"]], 3)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(kafka_broker, [names["gw"], names["gbm"]], 1)
    config = Config.load(service_config(tmp_path / "c.toml", kafka_broker, names,
                                         notice_topics=[names["gw"], names["gbm"]]))
    gw, gbm = _events(config, notices)
    g0, b0 = gw.trigger_mjd_tai, gbm.trigger_mjd_tai
    early = sim_night(500, g0 - 0.005, 0.1, gw.localization, 5, g0, g0 + 0.1, 0, 1)
    late = sim_night(500, g0 + 0.11, 0.2, gw.localization, 5, g0 + 0.11, g0 + 0.3, 10**6, 2)
    grb = sim_night(500, b0 - 0.005, 0.2, gbm.localization, 5, b0, b0 + 0.2, 2 * 10**6, 3)
    early_msgs, late_msgs, grb_msgs = (list(n.messages()) for n in (early, late, grb))
    garbage = [b"not an alert", struct.pack(">bI", 0, 4242) + b"\x02\x04",
               early_msgs[0][:40]]

    service = ListenService(config, Store(f"sqlite:///{tmp_path / 'live.sqlite'}"), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    alerts = names["alerts"]
    # Alerts of the GW's first hours arrive before its notice (retro-matching) ...
    produce_values(kafka_broker, alerts, early_msgs[:250] + garbage + early_msgs[250:])
    thread.start()
    try:
        total = len(early_msgs) + len(garbage)
        wait_for(lambda: group_offset(kafka_broker, names["group"], alerts) == total,
                 "early alerts")
        produce_values(kafka_broker, names["gw"], [notices["gw"]])
        produce_values(kafka_broker, names["gbm"], [notices["gbm"]])
        wait_for(lambda: service.engine is not None and gw.event_id in service.engine.index
              and gbm.event_id in service.engine.index, "notices applied")
        # ... the later ones after it; the GRB's night comes last (it expires the GW event).
        produce_values(kafka_broker, alerts, late_msgs)
        total += len(late_msgs)
        wait_for(lambda: group_offset(kafka_broker, names["group"], alerts) == total, "late alerts")
        produce_values(kafka_broker, alerts, grb_msgs)
        total += len(grb_msgs)
        wait_for(lambda: group_offset(kafka_broker, names["group"], alerts) == total, "GRB alerts")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()

    expected = offline_matches(config, [early_msgs, gw, gbm, late_msgs, grb_msgs])
    # The reference finds every injected counterpart inside the 90% regions, early ones too.
    inside = (injected_in(early, gw, 0.9) | injected_in(late, gw, 0.9) | injected_in(grb, gbm, 0.9))
    assert inside and inside <= set(expected)
    assert injected_in(early, gw, 0.9) and injected_in(grb, gbm, 0.9)

    reports = read_topic(kafka_broker, names["reports"])
    counts = Counter(m.key().decode() for m in reports)
    assert set(counts) == set(expected)
    assert max(counts.values()) == 1  # each report exactly once, counted message by message
    for msg in reports:
        got = match_from_avro(msg.value())
        want = expected[msg.key().decode()]
        assert (got.event_id, got.alert_id, got.event_revision) == (
            want.event_id, want.alert_id, want.event_revision)
        assert got.credible_level == pytest.approx(want.credible_level)
        assert not got.retracted
    voevents = read_topic(kafka_broker, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == counts
    assert all(b"<voe:VOEvent" in m.value() or b"VOEvent" in m.value()[:400] for m in voevents)

    dead = read_topic(kafka_broker, names["dead"])
    assert sorted(m.value() for m in dead) == sorted(garbage)
    for m in dead:
        h = dict(m.headers())
        assert h["mmcross.error"] == b"BadAlertError" and h["mmcross.reason"]
        assert h["mmcross.source.topic"].decode() == alerts
        src = (int(h["mmcross.source.partition"]), int(h["mmcross.source.offset"]))
        original = _message_at(kafka_broker, alerts, *src)
        assert original == m.value()


def _message_at(bootstrap: str, topic: str, partition: int, offset: int) -> bytes:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"a-{uuid.uuid4().hex}"})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg.value()
    finally:
        c.close()
    raise AssertionError(f"no message at {topic}/{partition}/{offset}")




@pytest.mark.kafka
def test_kill_9_mid_stream_and_restart_delivers_every_report_exactly_once(
        kafka_broker: str, notices: dict, tmp_path: Path) -> None:
    names = unique_names()
    create_topics(kafka_broker, [names["alerts"]], 3)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(kafka_broker, [names["gw"], names["gbm"]], 1)
    cfg = service_config(tmp_path / "c.toml", kafka_broker, names,
                         notice_topics=[names["gw"], names["gbm"]], batch_size=10)
    config = Config.load(cfg)
    gw, gbm = _events(config, notices)
    g0 = gw.trigger_mjd_tai
    night = sim_night(2400, g0 - 0.005, 0.3, gw.localization, 24, g0, g0 + 0.3, 5 * 10**6, 7)
    msgs = list(night.messages())
    chunks = [msgs[:800], msgs[800:1600], msgs[1600:]]
    expected = offline_matches(config, [gw, gbm, msgs])
    assert injected_in(night, gw, 0.9) <= set(expected) and len(expected) >= 10
    # the first chunk must cause reports for the first crash point to be reached in it
    assert len(offline_matches(config, [gw, gbm, chunks[0]])) >= 5
    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    log_path = tmp_path / "listen.log"
    produce_values(kafka_broker, names["gw"], [notices["gw"]])
    produce_values(kafka_broker, names["gbm"], [notices["gbm"]])

    # kill -9 mid-stream at named crash points (no luck involved): after the 5th record of a
    # transaction was produced, then after the 2nd commit of the restarted process
    proc = start_listener(cfg, db, log_path, crash_at="after_produce:5")
    try:
        wait_for(lambda: {gw.event_id, gbm.event_id} <= {
            e["event_id"] for e in Store(db).events()}, "notices stored")
        for chunk in chunks:
            produce_values(kafka_broker, names["alerts"], chunk)
            if chunk is not chunks[-1]:
                assert proc.wait(60) == -signal.SIGKILL
                restart_crash = "after_commit:2" if chunk is chunks[0] else None
                proc = start_listener(cfg, db, log_path, crash_at=restart_crash)
        wait_for(lambda: group_offset(kafka_broker, names["group"], names["alerts"]) == len(msgs),
                 "all alerts committed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    reports = read_topic(kafka_broker, names["reports"])
    counts = Counter(m.key().decode() for m in reports)
    missing = set(expected) - set(counts)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} reports lost"
    assert not twice, f"reports delivered more than once: {twice}"
    assert set(counts) == set(expected)
    voevents = read_topic(kafka_broker, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == counts

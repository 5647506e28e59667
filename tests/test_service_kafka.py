"""``mmcross listen`` against the real local Apache Kafka broker (scripts/kafka_local.py).

Real GCN notices from ``../shared/data`` are published to their GCN topic names, simulated
Rubin wire-format alerts (counterparts injected inside the localizations, some before the
notice arrives) and garbage to an alert topic. The reports on the report topic are counted
message by message (no de-duplication by key on the reading side) and compared with the
offline engine run over the same notices and alerts, and with the injected counterparts inside
the 90% credible regions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from brokers.alert_decoding import decode_wire_many
from brokers.kafka_config import (
    alert_consumer_config,
    base_properties,
    gcn_consumer_config,
    producer_config,
)
from brokers.reports import match_from_avro
from catalogs import Store
from listeners import read_notice_file
from mmcross.config import Config, notice_options
from mmcross.engine import Engine
from mmcross.simulate import simulate_night

GW_NOTICE = "gcn/json/fink-mm/S230518h-initial.json"
GBM_NOTICE = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"
GW_TOPIC = "igwn.gwalert"
GBM_TOPIC = "gcn.classic.voevent.FERMI_GBM_GND_POS"
DEADLINE = 60.0  # s, bound of every wait (never asserted on)
REPO = Path(__file__).resolve().parents[1]


# -- helpers -----------------------------------------------------------------------------

def _create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    new = [NewTopic(n, num_partitions=partitions, replication_factor=1)
           for n in names if n not in existing]
    for future in (admin.create_topics(new).values() if new else ()):
        future.result(timeout=30)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
    finally:
        c.close()


def _count(bootstrap: str, topic: str) -> int:
    return sum(_end_offsets(bootstrap, topic).values())


def _read_all(bootstrap: str, topic: str) -> list:
    """Every message of ``topic`` (all partitions, from the start to the end offsets)."""
    ends = {p: o for p, o in _end_offsets(bootstrap, topic).items() if o > 0}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    out = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + DEADLINE
        while ends and time.monotonic() < deadline:
            for msg in c.consume(500, 0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
    finally:
        c.close()
    assert not ends, f"could not read {topic} to its end"
    return out


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """Offsets committed by ``group`` on ``topic``, summed over partitions.

    Read with a consumer of that group that does not join it (``committed``); the
    AdminClient's list_consumer_group_offsets crashes librdkafka 2.16 (null consumer-group
    handle in rd_kafka_handle_OffsetFetch) while the group coordinator is loading.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        got = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    except KafkaException as exc:  # e.g. NOT_COORDINATOR while the coordinator moves/loads
        if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_COORDINATOR:
            raise
        return -1
    finally:
        c.close()
    return sum(tp.offset for tp in got if tp.offset > 0)


@contextlib.contextmanager
def running(service):
    """Run a service's loop in a thread for the ``with`` block; it must stop cleanly after."""
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive(), "the service did not stop within 30 s"


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


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


def _night(n: int, start: float, days: float, loc, n_inject: int, t0: float, t1: float,
           first_id: int, seed: int):
    return simulate_night(n, start_mjd_tai=start, duration_days=days,
                          rng=np.random.default_rng(seed), inject=[(loc, n_inject, t0, t1)],
                          first_id=first_id, alerts_per_visit=100, cutout_bytes=300,
                          n_previous=2)


def _expected(config: Config, steps: list) -> dict[str, object]:
    """The offline engine (no Kafka, no store) over ``steps``: events or wire-message lists."""
    engine = Engine(config)
    out = {}
    for step in steps:
        if isinstance(step, list):
            batch, errors = decode_wire_many(step)
            assert errors == []
            found = engine.on_alerts(batch)
        else:
            found = engine.on_notice(step)
        out.update({m.key: m for m in found if not m.retracted})
    return out


def _inside(night, event, level: float) -> set[str]:
    """Keys of the injected alerts inside ``event``'s credible region of ``level``."""
    ids = np.concatenate(night.injected)
    rows = np.isin(night.alert_id, ids)
    cl = event.localization.credible_level_at(night.ra[rows], night.dec[rows])
    return {f"{event.event_id}|{a}" for a, c in zip(night.alert_id[rows], cl, strict=True)
            if c <= level}


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
    assert producer["acks"] == "1" and producer["enable.idempotence"] is True


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
    from mmcross.service import ListenService

    names = unique_names()
    _create_topics(kafka_broker, [names["alerts"]], 3)
    _create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    _create_topics(kafka_broker, [GW_TOPIC, GBM_TOPIC], 1)
    config = Config.load(service_config(tmp_path / "c.toml", kafka_broker, names,
                                         notice_topics=[GW_TOPIC, GBM_TOPIC]))
    gw, gbm = _events(config, notices)
    g0, b0 = gw.trigger_mjd_tai, gbm.trigger_mjd_tai
    early = _night(500, g0 - 0.005, 0.1, gw.localization, 5, g0, g0 + 0.1, 0, 1)
    late = _night(500, g0 + 0.11, 0.2, gw.localization, 5, g0 + 0.11, g0 + 0.3, 10**6, 2)
    grb = _night(500, b0 - 0.005, 0.2, gbm.localization, 5, b0, b0 + 0.2, 2 * 10**6, 3)
    early_msgs, late_msgs, grb_msgs = (list(n.messages()) for n in (early, late, grb))
    garbage = [b"not an alert", struct.pack(">bI", 0, 4242) + b"\x02\x04",
               early_msgs[0][:40]]

    service = ListenService(config, Store(f"sqlite:///{tmp_path / 'live.sqlite'}"), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    alerts = names["alerts"]
    # Alerts of the GW's first hours arrive before its notice (retro-matching) ...
    _produce(kafka_broker, alerts, early_msgs[:250] + garbage + early_msgs[250:])
    thread.start()
    try:
        total = len(early_msgs) + len(garbage)
        _wait(lambda: _committed(kafka_broker, names["group"], alerts) == total, "early alerts")
        _produce(kafka_broker, GW_TOPIC, [notices["gw"]])
        _produce(kafka_broker, GBM_TOPIC, [notices["gbm"]])
        _wait(lambda: service.engine is not None and gw.event_id in service.engine.index
              and gbm.event_id in service.engine.index, "notices applied")
        # ... the later ones after it; the GRB's night comes last (it expires the GW event).
        _produce(kafka_broker, alerts, late_msgs)
        total += len(late_msgs)
        _wait(lambda: _committed(kafka_broker, names["group"], alerts) == total, "late alerts")
        _produce(kafka_broker, alerts, grb_msgs)
        total += len(grb_msgs)
        _wait(lambda: _committed(kafka_broker, names["group"], alerts) == total, "GRB alerts")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()

    expected = _expected(config, [early_msgs, gw, gbm, late_msgs, grb_msgs])
    # The reference finds every injected counterpart inside the 90% regions, early ones too.
    inside = (_inside(early, gw, 0.9) | _inside(late, gw, 0.9) | _inside(grb, gbm, 0.9))
    assert inside and inside <= set(expected)
    assert _inside(early, gw, 0.9) and _inside(grb, gbm, 0.9)

    reports = _read_all(kafka_broker, names["reports"])
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
    voevents = _read_all(kafka_broker, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == counts
    assert all(b"<voe:VOEvent" in m.value() or b"VOEvent" in m.value()[:400] for m in voevents)

    dead = _read_all(kafka_broker, names["dead"])
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


def _start_listener(config_path: Path, db: str, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    return subprocess.Popen(
        [sys.executable, "-m", "mmcross.cli", "listen", "--config", str(config_path),
         "--db", db], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=open(log_path, "ab"))  # noqa: SIM115 (the child keeps it)


@pytest.mark.kafka
def test_kill_9_mid_stream_and_restart_delivers_every_report_exactly_once(
        kafka_broker: str, notices: dict, tmp_path: Path) -> None:
    names = unique_names()
    _create_topics(kafka_broker, [names["alerts"]], 3)
    _create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    _create_topics(kafka_broker, [GW_TOPIC, GBM_TOPIC], 1)
    cfg = service_config(tmp_path / "c.toml", kafka_broker, names,
                         notice_topics=[GW_TOPIC, GBM_TOPIC], batch_size=10)
    config = Config.load(cfg)
    gw, gbm = _events(config, notices)
    g0 = gw.trigger_mjd_tai
    night = _night(2400, g0 - 0.005, 0.3, gw.localization, 24, g0, g0 + 0.3, 5 * 10**6, 7)
    msgs = list(night.messages())
    chunks = [msgs[:800], msgs[800:1600], msgs[1600:]]
    expected = _expected(config, [gw, gbm, msgs])
    assert _inside(night, gw, 0.9) <= set(expected) and len(expected) >= 10
    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    log_path = tmp_path / "listen.log"
    _produce(kafka_broker, GW_TOPIC, [notices["gw"]])
    _produce(kafka_broker, GBM_TOPIC, [notices["gbm"]])

    proc = _start_listener(cfg, db, log_path)
    kills = 0
    try:
        _wait(lambda: {gw.event_id, gbm.event_id} <= {
            e["event_id"] for e in Store(db).events()}, "notices stored")
        published = 0
        for chunk in chunks:
            _produce(kafka_broker, names["alerts"], chunk)
            published += len(chunk)
            if chunk is chunks[-1]:
                break
            # kill -9 as soon as this chunk's reports start to appear, restart at once
            before = _count(kafka_broker, names["reports"])
            _wait(lambda b=before: _count(kafka_broker, names["reports"]) > b, "reports")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += int(_committed(kafka_broker, names["group"], names["alerts"]) < published)
            proc = _start_listener(cfg, db, log_path)
        _wait(lambda: _committed(kafka_broker, names["group"], names["alerts"]) == len(msgs),
              "all alerts committed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert kills >= 1, "no kill landed mid-stream"

    reports = _read_all(kafka_broker, names["reports"])
    counts = Counter(m.key().decode() for m in reports)
    missing = set(expected) - set(counts)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} reports lost"
    assert not twice, f"reports delivered more than once: {twice}"
    assert set(counts) == set(expected)
    voevents = _read_all(kafka_broker, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == counts

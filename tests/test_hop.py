"""Hopskotch in and out against the local Kafka broker, with hop-client on the other side:
hop publishes real GCN notices that our input parses, and hop reads back what our output
published, field by field; then both run through the service's transports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time
from hop import Stream
from hop.io import StartPosition
from hop.models import Blob

from mmcross.app.engine import Engine
from mmcross.app.transports import Transports
from mmcross.brokers.hop import HopPublishSettings, HopReportSink
from mmcross.listeners import parse_notice, read_notice_file
from mmcross.listeners.hop import HopListener, HopListenSettings, hop_auth
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError
from mmcross.model.event import Event
from mmcross.model.match import Match
from tests.helpers import (
    BAT,
    DEADLINE,
    GW_NOTICE,
    REPO,
    create_topics,
    free_port,
    make_match,
    offline_matches,
    sim_night,
    wait_for,
)


def _url(bootstrap: str, topic: str) -> str:
    return f"kafka://{bootstrap}/{topic}"


def _publish(url: str, messages: list[tuple[object, bool]]) -> None:
    """Publish with hop's own producer, no auth; ``(message, test)`` pairs."""
    with Stream(auth=False).open(url, "w") as producer:
        for message, test in messages:
            producer.write(message, test=test)


def _read_back(url: str, n: int) -> list[tuple[object, object]]:
    """The first ``n`` messages of the topic, read with hop's own consumer."""
    stream = Stream(auth=False, start_at=StartPosition.EARLIEST, until_eos=True)
    out = []
    with stream.open(url, "r", group_id=f"readback-{uuid.uuid4().hex[:8]}") as consumer:
        for message, meta in consumer.read(metadata=True):
            out.append((message, meta))
            if len(out) == n:
                break
    return out


@pytest.mark.kafka
def test_hop_input_parses_a_real_lvk_notice_and_skips_tests_and_garbage(
        kafka_broker, shared_file) -> None:
    topic = f"igwn.gwalert.hop-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    raw = shared_file(GW_NOTICE).read_bytes()
    url = _url(kafka_broker, topic)
    _publish(url, [(json.loads(raw), True), (b"not a notice", False),
                   (json.loads(raw), False)])
    got: list[Event] = []
    arrived = threading.Event()

    def on_event(event: Event) -> None:
        got.append(event)
        arrived.set()

    listener = HopListener(HopListenSettings(urls=(url,), start_at="earliest"), on_event)
    listener.start()
    try:
        assert arrived.wait(DEADLINE), "no event from the hop listener"
        wait_for(lambda: listener.stats["messages"] >= 2, "the garbage message")
    finally:
        listener.stop()
    direct = parse_notice(raw, topic="igwn.gwalert")
    assert len(got) == 1
    event = got[0]
    assert event.event_id == direct.event_id == "lvk:S230518h"
    assert event.kind == direct.kind and event.notice_type == direct.notice_type
    assert abs((event.trigger_time - direct.trigger_time).sec) < 1e-6
    assert event.source.startswith(f"hop://{topic}/0/")
    assert event.localization.area(0.9) == pytest.approx(direct.localization.area(0.9))
    # hop itself drops the test message; ours counts the rest.
    assert listener.stats["messages"] == 2 and listener.stats["bad_notices"] == 1



@pytest.mark.kafka
def test_hop_input_opens_again_until_its_topic_exists(kafka_broker, shared_file) -> None:
    topic = f"gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK.late-{uuid.uuid4().hex[:8]}"
    url = _url(kafka_broker, topic)
    got: list[Event] = []
    arrived = threading.Event()
    listener = HopListener(HopListenSettings(urls=(url,), start_at="earliest"),
                           lambda e: (got.append(e), arrived.set()))
    listener.backoff_min = listener.backoff_max = 0.2
    listener.start()
    try:
        wait_for(lambda: listener.stats["open_failures"] >= 1, "a refused open (no topic)")
        create_topics(kafka_broker, [topic], partitions=1)
        _publish(url, [(Blob(shared_file(BAT).read_bytes()), False)])
        assert arrived.wait(DEADLINE), "no event once the topic exists"
    finally:
        listener.stop()
    assert [e.event_id for e in got] == ["swift:1208389"]


def test_hop_input_refuses_urls_that_are_not_hop_urls() -> None:
    for url in ("http://kafka.scimma.org/igwn.gwalert", "kafka://kafka.scimma.org"):
        with pytest.raises(ConfigError, match="hop.listen"):
            HopListener(HopListenSettings(urls=(url,)), lambda e: None)

@pytest.mark.kafka
def test_hop_output_records_read_back_by_hop_field_by_field(kafka_broker) -> None:
    topic = f"mmcross.counterparts.hop-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    url = _url(kafka_broker, topic)
    sent = [make_match(0), make_match(1, distance_mean=None, distance_std=None),
            make_match(0, retracted=True)]
    sink = HopReportSink(HopPublishSettings(url=url, timeout=DEADLINE))
    try:
        sink.write(sent)
    finally:
        sink.close()
    assert sink.stats["sent"] == 3 and sink.stats["failed"] == 0
    received = _read_back(url, 3)
    for match, (message, meta) in zip(sent, received, strict=True):
        record = message.content
        assert set(record) == set(match.to_record())
        for name, value in match.to_record().items():
            assert record[name] == value, name
        assert Match(**record) == match
        assert meta.key == match.key.encode()
        headers = dict(meta.headers)
        assert headers["mmcross-kind"] == (b"retraction" if match.retracted
                                           else b"counterpart")
        assert headers["_format"] == b"json"


@pytest.mark.kafka
def test_listen_transports_take_notices_from_hop_and_publish_counterparts(
        kafka_broker, shared_file, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    notices, out = f"gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK.hop-{tag}", f"mmcross.hop-{tag}"
    create_topics(kafka_broker, [notices, out], partitions=1)
    config_path = tmp_path / "site.toml"
    config_path.write_text(
        f'[hop.listen]\nurls = ["{_url(kafka_broker, notices)}"]\nstart_at = "earliest"\n'
        f'[hop.publish]\nurl = "{_url(kafka_broker, out)}"\n')
    config = Config.load(config_path)
    engine = Engine(config)
    transports = Transports(config)
    transports.start(engine)
    try:
        assert transports.hop_sink in engine.sinks
        _publish(_url(kafka_broker, notices), [(Blob(shared_file(BAT).read_bytes()), False)])
        applied: list[Event] = []
        wait_for(lambda: transports.poll(lambda e: applied.append(e) or engine.on_notice(e)) > 0
              or bool(applied), "the BAT notice through hop")
        assert [e.event_id for e in applied] == ["swift:1208389"]
        # One alert at the BAT position (RA 270.6441, Dec 24.4866 deg) 2 h after the burst.
        t = Time("2024-01-12T19:37:00", scale="utc").tai.mjd
        found = engine.on_alerts(AlertBatch(np.array([42]), np.array(["4242"], object),
                                            np.array([270.6441]), np.array([24.4866]),
                                            np.array([t])))
        assert [m.key for m in found] == ["swift:1208389|42"]
    finally:
        transports.stop_inputs()
        transports.inbox.close()
        engine.close()
    (message, meta), = _read_back(_url(kafka_broker, out), 1)
    assert Match(**message.content) == found[0]
    assert meta.key == b"swift:1208389|42"



@pytest.mark.kafka
def test_mmcross_listen_reads_hop_notices_and_publishes_counterparts_to_hop(
        kafka_broker, shared_file, tmp_path: Path) -> None:
    """The command itself, in embedded mode: a notice from Hopskotch, alerts from the spool,
    every counterpart of the offline engine on the Hopskotch topic once."""
    tag = uuid.uuid4().hex[:8]
    notices, out = f"gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK.cli-{tag}", f"mmcross.cli-{tag}"
    create_topics(kafka_broker, [notices, out], partitions=1)
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        "[localization]\ncredible_level_tolerance = 1e-2\n[spool]\nsettle = 0.2\n"
        "poll_interval = 0.1\n"
        f'[hop.listen]\nurls = ["{_url(kafka_broker, notices)}"]\nstart_at = "earliest"\n'
        f'[hop.publish]\nurl = "{_url(kafka_broker, out)}"\n')
    config = Config.load(cfg)
    bat = read_notice_file(shared_file(BAT), **notice_options(config))
    t0 = bat.trigger_mjd_tai
    night = sim_night(300, t0 - 0.002, 0.1, bat.localization, 4, t0, t0 + 0.1, 31 * 10**6, 7)
    expected = offline_matches(config, [bat, list(night.messages())])
    assert len(expected) >= 4
    spool = tmp_path / "spool"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    log_path = tmp_path / "listen.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmcross", "listen", "--config",
                                 str(cfg), "--spool", str(spool), "--db",
                                 f"sqlite:///{tmp_path / 'live.sqlite'}"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=log)
    try:
        _publish(_url(kafka_broker, notices), [(Blob(shared_file(BAT).read_bytes()), False)])
        wires = tmp_path / "night.wires"
        night.write_wire_stream(wires)
        (spool / "in").mkdir(parents=True, exist_ok=True)
        os.replace(wires, spool / "in" / "night.wires")
        published: dict[str, tuple] = {}

        def all_published() -> bool:
            published.update({meta.key.decode(): (message, meta) for message, meta in
                              _read_back(_url(kafka_broker, out), len(expected) + 1)})
            return set(published) >= set(expected)

        wait_for(all_published, "the counterparts on the hop topic")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(DEADLINE)
    assert set(published) == set(expected)
    for key, (message, _meta) in published.items():
        got, want = Match(**message.content), expected[key]
        assert (got.event_id, got.alert_id, got.object_id) == (want.event_id, want.alert_id,
                                                               want.object_id)
        assert (got.ra, got.dec) == (want.ra, want.dec)
        assert got.credible_level == pytest.approx(want.credible_level, abs=1e-9)
        assert not got.retracted



@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")  # adc
def test_an_unreachable_hopskotch_is_counted_and_never_raises() -> None:
    sink = HopReportSink(HopPublishSettings(url=f"kafka://127.0.0.1:{free_port()}/nowhere",
                                            timeout=1.0))
    try:
        sink.write([make_match(0), make_match(1)])
    finally:
        sink.close()
    assert (sink.stats["sent"], sink.stats["failed"]) == (0, 2)

def test_hop_auth_is_a_hop_auth_file_or_none(tmp_path: Path) -> None:
    assert hop_auth("") is False
    path = tmp_path / "auth.toml"
    path.write_text('[[auth]]\nusername = "mmcross-bot"\npassword = "not-a-secret"\n'
                    'hostname = "kafka.scimma.org"\n')
    path.chmod(0o600)
    (credential,) = hop_auth(str(path))
    assert (credential.username, credential.hostname) == ("mmcross-bot", "kafka.scimma.org")
    path.chmod(0o644)  # hop refuses credentials others can read
    with pytest.raises(ConfigError, match="unsafe permissions"):
        hop_auth(str(path))
    with pytest.raises(ConfigError, match="missing.toml"):
        hop_auth(str(tmp_path / "missing.toml"))

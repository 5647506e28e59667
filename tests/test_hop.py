"""Hopskotch in and out against the local Kafka broker, with hop-client on the other side:
hop publishes real GCN notices that our input parses, and hop reads back what our output
published, field by field; then both run through the service's transports."""

from __future__ import annotations

import json
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
from mmcross.listeners import parse_notice
from mmcross.listeners.hop import HopListener, HopListenSettings
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.event import Event
from mmcross.model.match import Match
from tests.helpers import BAT, DEADLINE, GW_NOTICE, create_topics, make_match, wait_for

pytestmark = pytest.mark.kafka


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

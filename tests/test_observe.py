"""``mmcross subscribe``: counterpart notices from real peers, filtered, printed and stored.

VTP: our :class:`mmcross.brokers.vtp.VTPBroadcaster` on 127.0.0.1 feeds the command (run in-process
in a thread, stopped by ``--count``); Kafka: Avro reports written by ``match_to_avro`` to the
real local broker.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import replace

import pytest
import voeventparse as vp

from mmcross.app import cli_observe
from mmcross.app.observe import format_counterpart, match_from_voevent
from mmcross.brokers.reports import match_to_avro
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.brokers.vtp import BroadcasterSettings, VTPBroadcaster
from mmcross.catalogs import Store
from mmcross.model.match import Match

DEADLINE = 30.0  # s, bound of every wait (never asserted on)


def _match(i: int, *, kind: str = "gw", instrument: str = "LVK", cl: float = 0.4,
           p_chance: float = 1e-3, retracted: bool = False) -> Match:
    return Match(event_id="lvk:S230518h" if kind == "gw" else "fermi-gbm:726773850",
                 event_revision=2, event_kind=kind, instrument=instrument,
                 event_time="2023-05-18T12:59:08.167Z", alert_id=170_000_000_000 + i,
                 object_id=f"{900 + i}", ra=95.7 + i, dec=-10.9 - i,
                 alert_time="2023-05-19T01:02:03.000Z", time_offset=0.5013, credible_level=cl,
                 searched_area=123.4, prob_density=2e-3,
                 distance_mean=278.0 if kind == "gw" else None,
                 distance_std=68.0 if kind == "gw" else None, p_chance=p_chance,
                 retracted=retracted)


def _wait_for(condition, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(cli_observe.main(argv)), daemon=True)
    thread.start()
    return thread, result


# -- VOEvent decoding --------------------------------------------------------------------


def test_counterpart_and_retraction_voevents_decode_back_to_the_match() -> None:
    m = _match(1)
    assert match_from_voevent(counterpart_voevent(m)) == m
    r = replace(_match(2, kind="grb", instrument="Fermi-GBM"), retracted=True)
    assert match_from_voevent(retraction_voevent(r)) == r  # optional distances stay None


def test_voevent_without_match_params_is_refused_with_its_ivorn() -> None:
    from mmcross.model.errors import BadNoticeError

    v = vp.Voevent(stream="example/other", stream_id="1", role=vp.definitions.roles.test)
    with pytest.raises(BadNoticeError, match="example/other"):
        match_from_voevent(vp.dumps(v))


def test_counterpart_line_names_event_alert_position_and_state() -> None:
    line = format_counterpart(_match(3, retracted=True))
    for text in ("RETRACTED", "lvk:S230518h", "170000000003", "98.70000", "-13.90000",
                 "cl 0.400", "p_chance 0.001"):
        assert text in line


# -- VTP -----------------------------------------------------------------------------------


def test_vtp_subscriber_filters_acks_answers_iamalive_prints_and_stores(
        tmp_path, capsys) -> None:
    broadcaster = VTPBroadcaster(BroadcasterSettings(port=0, iamalive_interval=0.2,
                                                     max_missed_iamalive=3))
    host, port = broadcaster.start()
    db = f"sqlite:///{tmp_path / 'obs.sqlite'}"
    out = tmp_path / "voevents"
    try:
        thread, rc = _run_in_thread([
            "-q", "subscribe", "--vtp", f"{host}:{port}", "--kind", "gw",
            "--max-credible-level", "0.9", "--max-p-chance", "0.01", "--count", "3",
            "--timeout", str(DEADLINE), "--out", str(out), "--db", db])
        _wait_for(lambda: broadcaster.subscribers(), "the subscriber to connect")
        _wait_for(lambda: broadcaster.stats["iamalive_replies"] >= 2, "iamalive answers")
        rejected = [_match(1, kind="grb", instrument="Fermi-GBM"),  # wrong kind
                    _match(2, cl=0.95),  # outside the 90% region
                    _match(3, p_chance=0.2)]  # too likely by chance
        kept = [_match(4), _match(5, cl=0.89)]
        revoked = replace(kept[0], retracted=True)
        broadcaster.write(rejected + kept + [revoked])
        thread.join(DEADLINE)
        assert not thread.is_alive()
        assert rc == [0]
        _wait_for(lambda: broadcaster.stats["acks"] >= 6, "acks of every VOEvent")
    finally:
        broadcaster.close()
    assert broadcaster.stats["sent"] == 6
    assert broadcaster.stats["acks"] == 6
    assert broadcaster.stats["naks"] == 0 and broadcaster.stats["bad_replies"] == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines == [format_counterpart(m) for m in kept + [revoked]]

    files = sorted(p.name for p in out.iterdir())
    assert files == ["lvk_S230518h_170000000004.retraction.xml", "lvk_S230518h_170000000004.xml",
                     "lvk_S230518h_170000000005.xml"]
    for path in out.iterdir():
        with open(path, "rb") as f:
            assert vp.valid_as_v2_0(vp.load(f)), path
    with Store(db) as store:
        stored = {m.alert_id: m for m in store.matches()}
    assert set(stored) == {kept[0].alert_id, kept[1].alert_id}
    assert stored[kept[0].alert_id].retracted is True
    assert stored[kept[1].alert_id] == kept[1]


def test_vtp_subscribe_stops_at_its_timeout_without_counterparts(capsys) -> None:
    broadcaster = VTPBroadcaster(BroadcasterSettings(port=0))
    host, port = broadcaster.start()
    try:
        assert cli_observe.main(["-q", "subscribe", "--vtp", f"{host}:{port}",
                                 "--timeout", "1"]) == 0
    finally:
        broadcaster.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "0 counterpart notices kept" in captured.err


def test_unknown_event_kind_is_refused_by_the_command(capsys) -> None:
    assert cli_observe.main(["subscribe", "--vtp", "127.0.0.1:1", "--kind", "comet"]) == 2
    assert "comet" in capsys.readouterr().err


# -- Kafka ---------------------------------------------------------------------------------


@pytest.mark.kafka
def test_kafka_subscriber_reads_avro_reports_and_filters(kafka_broker, tmp_path,
                                                         capsys) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"mmcross.app.observe.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)
    reports = [_match(1), _match(2, kind="grb", instrument="Fermi-GBM"),
               _match(3, instrument="Virgo-only"), _match(4),
               replace(_match(1), retracted=True)]
    producer = Producer({"bootstrap.servers": kafka_broker})
    for m in reports:
        producer.produce(topic, key=m.key.encode(), value=match_to_avro(m))
    assert producer.flush(30) == 0

    db = f"sqlite:///{tmp_path / 'obs.sqlite'}"
    rc = cli_observe.main([
        "-q", "subscribe", "--kafka-bootstrap", kafka_broker, "--topic", topic,
        "--from-beginning", "--instrument", "lvk", "--json", "--count", "3",
        "--timeout", "60", "--db", db])
    assert rc == 0
    printed = [Match(**json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    expected = [reports[0], reports[3], reports[4]]
    # one key per partition keeps each event's order; across partitions order is free
    assert sorted(printed, key=lambda m: (m.alert_id, m.retracted)) == sorted(
        expected, key=lambda m: (m.alert_id, m.retracted))
    with Store(db) as store:
        stored = {m.alert_id: m.retracted for m in store.matches()}
    assert stored == {reports[0].alert_id: True, reports[3].alert_id: False}

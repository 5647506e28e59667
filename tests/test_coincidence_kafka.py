"""Coincidence records on a real Kafka broker, in the service's transactional output: one
Avro record per new and revoked coincidence, keyed by the two event ids."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import pytest
from astropy.time import TimeDelta
from confluent_kafka import Producer

from mmcross.app.demo import place_voevent
from mmcross.app.engine import Engine
from mmcross.brokers.coincidence_reports import KafkaCoincidenceSink, coincidence_from_avro
from mmcross.brokers.kafka_reports import TransactionalOutput
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config
from mmcross.model.event import NoticeAction
from tests.helpers import GBM_NOTICE, GW_NOTICE, create_topics, read_topic


@pytest.mark.kafka
def test_coincidence_records_on_kafka_keyed_by_both_events(kafka_broker, shared_file,
                                                           tmp_path):
    tag = uuid.uuid4().hex[:10]
    topic, markers = f"coincidences-{tag}", f"markers-{tag}"
    create_topics(kafka_broker, [topic, markers], partitions=1)
    owner = f"mmcross-test-{tag}"
    output = TransactionalOutput(
        Producer({"bootstrap.servers": kafka_broker, "transactional.id": owner}), owner,
        markers)
    output.init()
    engine = Engine(Config.load(), coincidence_sinks=[KafkaCoincidenceSink(output, topic)])
    gw = read_notice_file(shared_file(GW_NOTICE))
    ra, dec = (float(x[0]) for x in gw.localization.sample(1, np.random.default_rng(4)))
    path = tmp_path / "gbm.xml"
    path.write_bytes(place_voevent(shared_file(GBM_NOTICE).read_bytes(),
                                   gw.trigger_time + TimeDelta(1.74, format="sec"), ra, dec, 60))
    ext = read_notice_file(path)
    engine.on_notice(gw)
    (found,) = engine.on_notice(ext).coincidences
    output.commit()
    engine.on_notice(replace(ext, action=NoticeAction.RETRACT, localization=None, raw=b"r",
                             notice_time=ext.notice_time + TimeDelta(60, format="sec")))
    output.commit()

    messages = read_topic(kafka_broker, topic)
    assert [m.key() for m in messages] == [f"{gw.event_id}|{ext.event_id}".encode()] * 2
    records = [coincidence_from_avro(m.value()) for m in messages]
    assert records[0] == found
    assert [r.retracted for r in records] == [False, True]
    assert [dict(m.headers())["mmcross-kind"] for m in messages] == [b"coincidence"] * 2


@pytest.mark.kafka
def test_listen_publishes_the_coincidence_of_two_notices(kafka_broker, shared_file, tmp_path):
    """`mmcross listen` reading the real S230518h notice and the real GBM notice placed 1.74 s
    after it publishes one coincidence record on [kafka] coincidence_topic, in its
    transactions, and indexes the combined map."""
    import threading

    from mmcross.app.service import ListenService
    from mmcross.catalogs import Store
    from tests.helpers import (
                produce_values,
        service_config,
        unique_names,
        wait_for,
    )

    names = unique_names()
    coinc_topic = f"coincidences-{names['group']}"
    create_topics(kafka_broker, [names["alerts"], names["reports"], names["voevents"],
                                 names["dead"], coinc_topic], 1)
    create_topics(kafka_broker, [names["gw"], names["gbm"]], 1)
    config = Config.load(service_config(tmp_path / "c.toml", kafka_broker, names,
                                        notice_topics=[names["gw"], names["gbm"]]),
                         overrides={"kafka": {"coincidence_topic": coinc_topic}})
    gw = read_notice_file(shared_file(GW_NOTICE))
    ra, dec = (float(x[0]) for x in gw.localization.sample(1, np.random.default_rng(5)))
    gbm_xml = place_voevent(shared_file(GBM_NOTICE).read_bytes(),
                            gw.trigger_time + TimeDelta(1.74, format="sec"), ra, dec, 60)
    service = ListenService(config, Store(f"sqlite:///{tmp_path / 'live.sqlite'}"), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        produce_values(kafka_broker, names["gw"], [shared_file(GW_NOTICE).read_bytes()])
        produce_values(kafka_broker, names["gbm"], [gbm_xml])
        wait_for(lambda: service.engine is not None and service.engine.live_coincidences,
                 "coincidence found")
        (found,) = service.engine.live_coincidences
        wait_for(lambda: len(read_topic(kafka_broker, coinc_topic)) == 1,
                 "coincidence record committed")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()
    (message,) = read_topic(kafka_broker, coinc_topic)
    assert message.key() == f"{found.gw_event_id}|{found.ext_event_id}".encode()
    assert coincidence_from_avro(message.value()) == found

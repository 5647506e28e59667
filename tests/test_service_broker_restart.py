"""The Kafka broker stopped and restarted under a running ``mmcross listen``.

The test owns its broker (``local_kafka``), stops it while the service is reading a stream of
simulated Rubin alerts around a real GW notice, starts it again on the same ports and data,
and publishes the rest of the stream. The service must carry on by itself (no restart of it),
and the report topic must hold every expected report exactly once, message by message.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    GW_NOTICE,
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


@pytest.mark.kafka
def test_service_resumes_by_itself_after_the_broker_restarts(
        local_kafka, shared_file, tmp_path: Path) -> None:
    from mmcross.app.service import ListenService

    bootstrap = local_kafka.bootstrap
    names = unique_names()
    create_topics(bootstrap, [names["alerts"]], 2)
    create_topics(bootstrap, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(bootstrap, [names["gw"]], 1)
    config = Config.load(service_config(tmp_path / "c.toml", bootstrap, names,
                                        notice_topics=[names["gw"]], batch_size=50))
    notice = shared_file(GW_NOTICE)
    gw = read_notice_file(notice, **notice_options(config))
    t0 = gw.trigger_mjd_tai
    night = sim_night(1600, t0 - 0.002, 0.2, gw.localization, 16, t0, t0 + 0.2, 9 * 10**6, 21)
    msgs = list(night.messages())
    first, rest = msgs[:800], msgs[800:]
    expected = offline_matches(config, [gw, msgs])
    assert injected_in(night, gw, 0.9) <= set(expected) and len(expected) >= 8

    service = ListenService(config, Store(f"sqlite:///{tmp_path / 'live.sqlite'}"), env={})
    with running(service) as thread:
        produce_notices(bootstrap, names["gw"], [notice.read_bytes()])
        wait_for(lambda: service.engine is not None and gw.event_id in service.engine.index,
                 "notice applied")
        produce_values(bootstrap, names["alerts"], first)
        wait_for(lambda: topic_size(bootstrap, names["reports"]) > 0, "first reports")
        seen_before = service.stats.transport_errors + service.stats.aborts
        local_kafka.stop()
        time.sleep(3.0)  # the service polls, fails to reach the broker, backs off
        assert thread.is_alive()
        local_kafka.start()
        produce_values(bootstrap, names["alerts"], rest)
        wait_for(lambda: group_offset(bootstrap, names["group"], names["alerts"]) == len(msgs),
                 "every alert committed after the restart")
        assert thread.is_alive()
        # it did see the outage: as transport errors, or (when the outage caught it inside a
        # commit, which then timed out) as an aborted transaction, which one is up to timing
        assert service.stats.transport_errors + service.stats.aborts > seen_before

    reports = read_topic(bootstrap, names["reports"])
    counts = Counter(m.key().decode() for m in reports)
    assert set(counts) == set(expected), (
        f"missing {set(expected) - set(counts)}, unexpected {set(counts) - set(expected)}")
    assert max(counts.values()) == 1, {k: n for k, n in counts.items() if n > 1}
    voevents = read_topic(bootstrap, names["voevents"])
    assert Counter(m.key().decode() for m in voevents) == counts

"""The Prometheus metrics endpoint and ``mmcross status`` of a running service.

The registry is checked alone (text format), then a service on the real broker is scraped
during its run: every number is compared with what the test published (alerts, garbage,
notices) and with the offline engine's matches.
"""

from __future__ import annotations

import json
import re
import struct
import urllib.request
from pathlib import Path

import pytest

from mmcross.app.cli import main
from mmcross.app.metrics import Metrics, MetricsServer, parse_metrics
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    GW_NOTICE,
    create_topics,
    group_offset,
    offline_matches,
    produce_notices,
    produce_values,
    running,
    service_config,
    sim_night,
    unique_names,
    wait_for,
)

# One sample line of the text exposition format 0.0.4.
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})?'
                     r" (-?[0-9.eE+-]+|NaN|[+-]Inf)$")


def _check_exposition(text: str) -> None:
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge")
            typed.add(name)
        elif not line.startswith("# HELP "):
            assert _SAMPLE.match(line), line
            assert re.split(r"[{ ]", line)[0] in typed, line


def test_registry_renders_prometheus_text_and_serves_it_on_localhost() -> None:
    metrics = Metrics()
    metrics.counter("things_total", "Things.")
    metrics.gauge("level", "A level.")
    metrics.inc("things_total", 2, kind='a"b')
    metrics.inc("things_total", kind='a"b')
    metrics.set("level", 0.25)
    with pytest.raises(ValueError):
        metrics.inc("things_total", -1)
    text = metrics.render()
    _check_exposition(text)
    assert 'mmcross_things_total{kind="a\\"b"} 3' in text
    server = MetricsServer(metrics, 0)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = resp.read().decode()
    finally:
        server.close()
    assert parse_metrics(body)["mmcross_level"] == {(): 0.25}


def _scrape(url: str) -> tuple[str, dict]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return text, parse_metrics(text)


def _total(scraped: dict, name: str) -> float:
    return sum(scraped.get(name, {}).values())


@pytest.mark.kafka
def test_metrics_endpoint_and_status_during_a_run(
        kafka_broker: str, shared_file, tmp_path: Path, capsys) -> None:
    from mmcross.app.service import ListenService

    names = unique_names()
    create_topics(kafka_broker, [names["alerts"]], 2)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 1)
    create_topics(kafka_broker, [names["gw"]], 1)
    config = Config.load(service_config(tmp_path / "c.toml", kafka_broker, names,
                                        notice_topics=[names["gw"]]))
    notice = shared_file(GW_NOTICE)
    gw = read_notice_file(notice, **notice_options(config))
    t0 = gw.trigger_mjd_tai
    night = sim_night(900, t0 - 0.002, 0.1, gw.localization, 10, t0, t0 + 0.1, 13 * 10**6, 8)
    msgs = list(night.messages())
    garbage = [b"nope", struct.pack(">bI", 0, 4242) + b"\x02"]
    expected = offline_matches(config, [gw, msgs])
    assert len(expected) >= 5

    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    service = ListenService(config, Store(db), env={}, metrics_port=0)
    with running(service):
        wait_for(lambda: service.metrics_server is not None, "metrics endpoint up")
        url = service.metrics_server.url
        text, scraped = _scrape(url)
        _check_exposition(text)
        assert _total(scraped, "mmcross_alerts_total") == 0
        produce_notices(kafka_broker, names["gw"], [notice.read_bytes(), b"{not json"])
        produce_values(kafka_broker, names["alerts"], msgs + garbage)
        total = len(msgs) + len(garbage)
        wait_for(lambda: group_offset(kafka_broker, names["group"], names["alerts"]) == total,
                 "alerts committed")
        wait_for(lambda: _scrape(url)[1].get("mmcross_consumer_lag") == {(): 0.0}, "lag 0")
        # The notice may be applied after the alerts (retro-matching): wait for its reports.
        wait_for(lambda: _total(_scrape(url)[1], "mmcross_reports_delivered_total") >= len(
            expected), "reports delivered")
        wait_for(lambda: _total(_scrape(url)[1], "mmcross_notices_total") >= 2, "both notices")
        text, scraped = _scrape(url)
        _check_exposition(text)
        assert _total(scraped, "mmcross_alerts_total") == len(msgs)
        assert scraped["mmcross_dead_letters_total"] == {
            (("error", "BadAlertError"),): 2.0, (("error", "BadNoticeError"),): 1.0}
        assert scraped["mmcross_notices_total"] == {
            (("outcome", "added"),): 1.0, (("outcome", "refused"),): 1.0}
        assert _total(scraped, "mmcross_matches_total") == len(expected)
        assert _total(scraped, "mmcross_reports_delivered_total") == len(expected)
        assert _total(scraped, "mmcross_live_events") == 1
        assert _total(scraped, "mmcross_last_alert_mjd_tai") == pytest.approx(
            float(night.mjd_tai.max()), abs=1e-9)
        assert _total(scraped, "mmcross_alerts_per_second") >= 0

        capsys.readouterr()
        assert main(["status", "--db", db, "--metrics-url", url, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["store"]["live_event_ids"] == [gw.event_id]
        assert status["store"]["matches"] == len(expected)
        assert status["store"]["alerts_in_history"] == len(msgs)
        assert status["store"]["last_alert_mjd_tai"] == pytest.approx(
            float(night.mjd_tai.max()), abs=1e-9)
        assert status["service"]["alerts"] == len(msgs)
        assert status["service"]["consumer_lag"] == 0
        assert status["service"]["dead_letters"] == 3
        assert main(["status", "--db", db, "--metrics-url", url]) == 0
        assert f"live events: {gw.event_id}" in capsys.readouterr().out
    assert service.metrics_server is None  # closed with the service

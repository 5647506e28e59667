"""Partner detection streams through ``mmcross listen``, in Kafka mode and in embedded mode.

A partner with a stream rule submits detections at the positions and times of some simulated
Rubin alerts: some before those alerts arrive (matched when they do), some after (matched
against the alert history), some that must not match (outside the time window, far away).
The matches on the output topic / in ``partner_matches.jsonl`` must be exactly the pairs an
independent reference (astropy separations, the rule's time window) finds, each once; a
wrongly signed (Kafka) or unknown-partner (spool) submission is refused and counted.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import Counter
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from confluent_kafka import Producer

from mmcross.app.simulate import simulate_night
from mmcross.catalogs import Store
from mmcross.listeners.partners import PARTNER_HEADER, SIGNATURE_HEADER, hash_token, sign_submission
from mmcross.model.config import Config
from tests.helpers import create_topics, group_offset, read_topic, wait_for

TOKEN = "goto-secret"
RADIUS_DEG = 1.0 / 3600.0
BEFORE, AFTER = -0.05, 0.5  # days, t_alert - t_detection


def _partner_toml() -> str:
    return f"""
[partners.goto]
token_sha256 = "{hash_token(TOKEN)}"
rate = 0.0
burst = 50
[partners.goto.stream]
radius_deg = {RADIUS_DEG!r}
time_window = [{BEFORE}, {AFTER}]
"""


def _nights():
    kw = {"alerts_per_visit": 40, "cutout_bytes": 100, "n_previous": 1}
    first = simulate_night(160, start_mjd_tai=60300.0, duration_days=0.1,
                           rng=np.random.default_rng(7), first_id=0, **kw)
    second = simulate_night(160, start_mjd_tai=60300.2, duration_days=0.1,
                            rng=np.random.default_rng(8), first_id=10**6, **kw)
    return first, second


def _det(i: str, ra: float, dec: float, mjd: float) -> dict:
    return {"partner": "goto", "detection_id": i, "ra": float(ra), "dec": float(dec),
            "error": 1e-4, "mjd_tai": float(mjd), "properties": {"mag": 19.0}}


def _near(night, k: int, dt: float, name: str) -> dict:
    """A detection 0.3 arcsec from alert ``k`` of ``night``, ``dt`` days before it."""
    dec = night.dec[k] + 0.3 / 3600.0 * (1 if night.dec[k] < 0 else -1)
    return _det(name, night.ra[k], dec, night.mjd_tai[k] - dt)


def _payloads(first, second) -> dict[str, list[dict]]:
    """Detections before the first night (matched on arrival), after it (history) and a
    refused one; ids tell what each tests."""
    early = [_near(first, 5, 0.01, "early-0"), _near(first, 60, 0.02, "early-1"),
             _near(first, 120, 0.0, "early-2"),
             _near(first, 30, -0.2, "too-late-for-alert"),      # t_alert - t_det = -0.2
             _det("nowhere", (first.ra[5] + 90.0) % 360.0, 0.0, first.mjd_tai[5])]
    late = [_near(first, 10, 0.01, "history-0"), _near(first, 90, 0.03, "history-1"),
            _near(first, 150, 0.001, "history-2"), _near(second, 20, 0.25, "next-night")]
    refused = [_near(first, 40, 0.01, "refused-0")]
    return {"early": early, "late": late, "refused": refused}


def offline_matches(first, second, detections: list[dict]) -> Counter:
    """Reference pairs ``goto|detection_id|alert_id`` (astropy separation, time window)."""
    ra = np.concatenate([first.ra, second.ra])
    dec = np.concatenate([first.dec, second.dec])
    t = np.concatenate([first.mjd_tai, second.mjd_tai])
    ids = np.concatenate([first.alert_id, second.alert_id])
    alerts = SkyCoord(ra * u.deg, dec * u.deg)
    out = Counter()
    for d in detections:
        sep = SkyCoord(d["ra"] * u.deg, d["dec"] * u.deg).separation(alerts).deg
        dt = t - d["mjd_tai"]
        for a in ids[(sep <= RADIUS_DEG) & (dt >= BEFORE) & (dt <= AFTER)]:
            out[f"goto|{d['detection_id']}|{int(a)}"] += 1
    return out


def _check_expected(expected: Counter) -> None:
    """The scenario exercises both paths and the non-matches."""
    names = {k.split("|")[1] for k in expected}
    assert {"early-0", "early-1", "early-2", "history-0", "history-1", "history-2",
            "next-night"} <= names
    assert not names & {"too-late-for-alert", "nowhere", "refused-0"}


# -- Kafka mode ------------------------------------------------------------------------------

def _send(bootstrap: str, topic: str, records: list[dict], token: str) -> None:
    value = json.dumps(records).encode()
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"goto", value=value, headers=[
        ("mmcross-kind", b"detections"), (PARTNER_HEADER, b"goto"),
        (SIGNATURE_HEADER, sign_submission(token, "goto", value).encode())])
    assert producer.flush(30) == 0


def _send_alerts(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, m in enumerate(messages):
        producer.produce(topic, key=str(i).encode(), value=m)
    assert producer.flush(30) == 0


@pytest.mark.kafka
def test_listen_kafka_reports_partner_stream_matches_once(kafka_broker: str,
                                                           tmp_path: Path) -> None:
    from mmcross.app.service import ListenService

    tag = uuid.uuid4().hex[:10]
    names = {k: f"{k}-{tag}" for k in ("alerts", "reports", "voevents", "dead", "submit",
                                       "pmatches", "group")}
    create_topics(kafka_broker, [names["alerts"]], 2)
    create_topics(kafka_broker, [names[k] for k in ("reports", "voevents", "dead", "submit",
                                                     "pmatches")], 1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[kafka]
bootstrap_servers = "{kafka_broker}"
alert_topics = ["{names['alerts']}"]
group_id = "{names['group']}"
report_topic = "{names['reports']}"
voevent_topic = "{names['voevents']}"
dead_letter_topic = "{names['dead']}"
[kafka.alert_properties]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000
[kafka.gcn]
topics = []
[service]
batch_size = 100
poll_timeout = 0.2
[submit.kafka]
enabled = true
topic = "{names['submit']}"
group_id = "{names['group']}-partners"
stream_match_topic = "{names['pmatches']}"
""" + _partner_toml())
    config = Config.load(cfg)
    first, second = _nights()
    p = _payloads(first, second)
    expected = offline_matches(first, second, p["early"] + p["late"])
    _check_expected(expected)
    first_msgs, second_msgs = list(first.messages()), list(second.messages())

    service = ListenService(config, Store(f"sqlite:///{tmp_path / 'live.sqlite'}"), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    bootstrap, alerts = kafka_broker, names["alerts"]
    try:
        _send(bootstrap, names["submit"], p["early"], TOKEN)
        wait_for(lambda: service.stats.detections == len(p["early"]), "early detections")
        _send_alerts(bootstrap, alerts, first_msgs)
        wait_for(lambda: group_offset(bootstrap, names["group"], alerts) == len(first_msgs),
                 "first night")
        _send(bootstrap, names["submit"], p["refused"], "wrong-token")
        _send(bootstrap, names["submit"], p["late"], TOKEN)
        n_det = len(p["early"]) + len(p["late"])
        wait_for(lambda: service.stats.detections == n_det, "late detections")
        _send_alerts(bootstrap, alerts, second_msgs)
        total = len(first_msgs) + len(second_msgs)
        wait_for(lambda: group_offset(bootstrap, names["group"], alerts) == total, "second night")
        # Partner offsets are committed after the matches were acknowledged.
        partners_group = f"{names['group']}-partners"
        wait_for(lambda: group_offset(bootstrap, partners_group, names["submit"]) == 3,
                 "partner topic committed")
        stats = dict(service.transports.stats()["partner_kafka"])
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()

    got = read_topic(bootstrap, names["pmatches"])
    keys = Counter(m.key().decode() for m in got)
    assert keys == expected
    for m in got:
        record = json.loads(m.value())
        assert m.key().decode() == f"goto|{record['detection_id']}|{record['alert_id']}"
        assert record["separation_deg"] <= RADIUS_DEG
    assert stats["bad_credential"] == 1 and stats["refused"] == 1
    assert stats["detections_accepted"] == 2
    assert service.stats.partner_matches == sum(expected.values())


# -- embedded mode ---------------------------------------------------------------------------

def _drop(inbox: Path, name: str, data: bytes) -> None:
    target = inbox / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def test_embedded_spool_reports_partner_stream_matches_once(tmp_path: Path) -> None:
    from mmcross.app.embedded import EmbeddedService

    spool = tmp_path / "spool"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[kafka]
bootstrap_servers = ""
[spool]
directory = "{spool}"
settle = 0.1
poll_interval = 0.05
""" + _partner_toml())
    config = Config.load(cfg)
    first, second = _nights()
    p = _payloads(first, second)
    expected = offline_matches(first, second, p["early"] + p["late"])
    _check_expected(expected)
    first.write_wire_stream(tmp_path / "first.wires")
    second.write_wire_stream(tmp_path / "second.wires")

    service = EmbeddedService(config, Store(f"sqlite:///{tmp_path / 'e.sqlite'}"))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    inbox = spool / "in"
    steps = [("detections/goto/early.json", json.dumps(p["early"]).encode()),
             ("first.wires", (tmp_path / "first.wires").read_bytes()),
             ("detections/stranger/x.json",
              json.dumps([dict(d, partner="stranger") for d in p["refused"]]).encode()),
             ("detections/goto/bad.json", b'[{"partner": "goto", "ra": 1}]'),
             ("detections/goto/late.json", json.dumps(p["late"]).encode()),
             ("second.wires", (tmp_path / "second.wires").read_bytes())]
    try:
        for name, data in steps:  # one at a time, so the order is the one written here
            _drop(inbox, name, data)
            wait_for(lambda: service.spool is not None and service.spool.pending() == 0,
                     f"{name} handled")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()

    lines = (spool / "out" / "partner_matches.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert Counter(f"{r['partner']}|{r['detection_id']}|{r['alert_id']}"
                   for r in records) == expected
    failed = sorted(str(q.relative_to(spool / "failed")) for q in (spool / "failed").rglob("*")
                    if q.is_file() and not q.name.endswith(".reason.txt"))
    assert failed == ["detections/goto/bad.json", "detections/stranger/x.json"]
    reason = (spool / "failed" / "detections/stranger/x.json.reason.txt").read_text()
    assert reason.startswith("unknown_partner")
    assert service.stats.detections_refused == 2
    assert service.stats.detections == len(p["early"]) + len(p["late"])
    assert service.stats.alerts == len(first) + len(second)

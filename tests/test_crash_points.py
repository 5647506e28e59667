"""``kill -9`` at each named crash point, then a restart: every output exactly once.

Each test arms one crash point (``MMCROSS_CRASH_AT``, :mod:`mmcross.model.crashpoints`) in a
``mmcross listen`` child process, checks that the process did die by SIGKILL (the point was
reached: no kill depends on timing), restarts it without the crash point and reads every
output with ``read_committed``: each expected report, VOEvent and dead letter is there once,
nothing else is. The expected reports come from the offline engine over the same notice and
alerts; the store must hold exactly those matches.

Kafka mode here; the spool mode's points are in the second half.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mmcross.brokers.alert_files import write_wire_stream
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    GW_NOTICE,
    REPO,
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

GARBAGE = [b"not an alert", struct.pack(">bI", 0, 4242) + b"\x02\x04"]


@pytest.mark.kafka
@pytest.mark.parametrize("point", ["after_produce:7", "notice_apply:1", "before_commit:3",
                                   "after_commit:2", "store_write:3"])
def test_kill_at_crash_point_then_restart_outputs_each_record_once(
        point: str, kafka_broker: str, shared_file, tmp_path: Path) -> None:
    names = unique_names()
    create_topics(kafka_broker, [names["alerts"]], 2)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(kafka_broker, [names["gw"]], 1)
    cfg = service_config(tmp_path / "c.toml", kafka_broker, names, notice_topics=[names["gw"]],
                         batch_size=60)
    config = Config.load(cfg)
    gw_path = shared_file(GW_NOTICE)
    gw = read_notice_file(gw_path, **notice_options(config))
    g0 = gw.trigger_mjd_tai
    night = sim_night(600, g0 - 0.005, 0.2, gw.localization, 12, g0, g0 + 0.2, 7 * 10**6, 9)
    msgs = list(night.messages())
    expected = offline_matches(config, [gw, msgs])
    assert injected_in(night, gw, 0.9) <= set(expected) and len(expected) >= 8
    produce_notices(kafka_broker, names["gw"], [gw_path.read_bytes()])
    produce_values(kafka_broker, names["alerts"], msgs[:300] + GARBAGE + msgs[300:])
    total = len(msgs) + len(GARBAGE)
    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    log_path = tmp_path / "listen.log"

    proc = start_listener(cfg, db, log_path, crash_at=point)
    try:
        assert proc.wait(120) == -signal.SIGKILL, log_path.read_text(errors="replace")[-3000:]
        proc = start_listener(cfg, db, log_path)
        wait_for(lambda: group_offset(kafka_broker, names["group"], names["alerts"]) == total,
                 "all alerts committed after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    reports = Counter(m.key().decode() for m in read_topic(kafka_broker, names["reports"]))
    assert set(reports) == set(expected), set(reports) ^ set(expected)
    assert max(reports.values()) == 1, {k: n for k, n in reports.items() if n > 1}
    voevents = Counter(m.key().decode() for m in read_topic(kafka_broker, names["voevents"]))
    assert voevents == reports
    dead = read_topic(kafka_broker, names["dead"])
    assert sorted(m.value() for m in dead) == sorted(GARBAGE)
    stored = Store(db).matches()
    assert sorted(m.key for m in stored) == sorted(expected)


# -- spool (embedded) mode ----------------------------------------------------------------

SPOOL_POINTS = ["spool_output:2", "spool_journal:2", "spool_append:3", "notice_apply:1",
                "store_write:3"]


def _listen_spool(cfg: Path, spool: Path, db: str, log_path: Path,
                  crash_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAFKA_") and k != "MMCROSS_CRASH_AT"}
    if crash_at:
        env["MMCROSS_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "mmcross", "listen", "--config", str(cfg), "--spool", str(spool),
         "--db", db], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=open(log_path, "ab"))  # noqa: SIM115 (the child keeps it)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("point", SPOOL_POINTS)
def test_spool_kill_at_crash_point_then_restart_outputs_each_line_and_file_once(
        point: str, shared_file, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[localization]\ncredible_level_tolerance = 1e-2\n"
                   '[listeners]\nroles = ["observation", "test"]\n'
                   '[kafka]\nbootstrap_servers = ""\n'
                   "[spool]\nsettle = 0.0\npoll_interval = 0.1\n")
    config = Config.load(cfg)
    gw_path = shared_file(GW_NOTICE)
    gw = read_notice_file(gw_path, **notice_options(config))
    g0 = gw.trigger_mjd_tai
    night = sim_night(600, g0 - 0.005, 0.2, gw.localization, 12, g0, g0 + 0.2, 8 * 10**6, 4)
    msgs = list(night.messages())
    expected = offline_matches(config, [gw, msgs])
    assert injected_in(night, gw, 0.9) <= set(expected) and len(expected) >= 8
    inbox = spool / "in"
    (inbox / "notices").mkdir(parents=True)
    now = time.time()
    (inbox / "notices" / gw_path.name).write_bytes(gw_path.read_bytes())
    os.utime(inbox / "notices" / gw_path.name, (now - 60, now - 60))
    names = []
    for i, lo in enumerate(range(0, len(msgs), 150)):
        chunk = msgs[lo:lo + 150] + (GARBAGE[:1] if i == 1 else [])
        names.append(f"night-{i}.wires")
        write_wire_stream(inbox / names[-1], chunk)
        os.utime(inbox / names[-1], (now - 50 + i, now - 50 + i))
    (inbox / "junk.wires").write_bytes(b"definitely not alerts")
    os.utime(inbox / "junk.wires", (now - 30, now - 30))
    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    log_path = tmp_path / "listen.log"

    proc = _listen_spool(cfg, spool, db, log_path, crash_at=point)
    try:
        assert proc.wait(120) == -signal.SIGKILL, log_path.read_text(errors="replace")[-3000:]
        proc = _listen_spool(cfg, spool, db, log_path)
        wait_for(lambda: not any(p.is_file() for p in inbox.rglob("*"))
                 and not any((spool / "journal").iterdir()), "spool emptied")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    out = spool / "out"
    reports = Counter(json.loads(line)["event_id"] + "|" + str(json.loads(line)["alert_id"])
                      for line in _lines(out / "matches.jsonl"))
    assert set(reports) == set(expected), set(reports) ^ set(expected)
    assert max(reports.values()) == 1, {k: n for k, n in reports.items() if n > 1}
    assert len(list((out / "voevents").glob("*.xml"))) == len(expected)
    dead = [json.loads(line) for line in _lines(out / "dead-letters.jsonl")]
    assert sorted(d["file"] for d in dead) == ["junk.wires", "night-1.wires"]
    done = sorted(p.name for p in (spool / "done").rglob("*") if p.is_file())
    assert done == sorted([*names, gw_path.name])
    assert sorted(p.name for p in (spool / "failed").iterdir()) == [
        "junk.wires", "junk.wires.reason.txt"]
    assert sorted(m.key for m in Store(db).matches()) == sorted(expected)

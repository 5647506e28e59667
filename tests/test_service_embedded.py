"""Embedded mode: ``mmcross listen`` with no Kafka, on SQLite and a file spool.

Real notices and simulated Rubin alert files (a wire stream before the notice arrives, an Avro
container after) are dropped into the spool; the JSON Lines reports must be exactly the
offline engine's matches, each once, with one VOEvent file each; refused files go to
``failed/`` with their reason; a file dropped twice and a restart add no report. Also: the
stored alert history is pruned to the longest window at start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config, notice_options
from tests.helpers import (
    GBM_NOTICE,
    GW_NOTICE,
    REPO,
    injected_in,
    offline_matches,
    sim_night,
    wait_for,
)


def _config(path: Path, spool: Path) -> Path:
    path.write_text(f"""
[localization]
credible_level_tolerance = 1e-2
[kafka]
bootstrap_servers = ""
[spool]
directory = "{spool}"
settle = 0.2
poll_interval = 0.1
chunk = 300
""")
    return path


def _drop(inbox: Path, name: str, data: bytes | None = None, *, src: Path | None = None,
          mtime: float | None = None) -> Path:
    """Write a file next to the inbox, then rename it in (as an operator should)."""
    target = inbox / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    if src is not None:
        shutil.copyfile(src, tmp)
    else:
        tmp.write_bytes(data or b"")
    os.replace(tmp, target)
    if mtime is not None:
        os.utime(target, (mtime, mtime))
    return target


def _jsonl_keys(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(f"{r['event_id']}|{r['alert_id']}"
                   for r in map(json.loads, path.read_text().splitlines()))


@pytest.fixture(scope="module")
def scenario(shared_file):
    config = Config.load(None, overrides={"localization": {"credible_level_tolerance": 1e-2}})
    opts = notice_options(config)
    gw_path, gbm_path = shared_file(GW_NOTICE), shared_file(GBM_NOTICE)
    gw, gbm = read_notice_file(gw_path, **opts), read_notice_file(gbm_path, **opts)
    g0, b0 = gw.trigger_mjd_tai, gbm.trigger_mjd_tai
    early = sim_night(600, g0 - 0.002, 0.1, gw.localization, 8, g0, g0 + 0.1, 20 * 10**6, 31)
    grb = sim_night(500, b0 - 0.002, 0.1, gbm.localization, 6, b0, b0 + 0.1, 21 * 10**6, 32)
    early_msgs, grb_msgs = list(early.messages()), list(grb.messages())
    expected = offline_matches(config, [early_msgs, gw, gbm, grb_msgs])
    assert injected_in(early, gw, 0.9) | injected_in(grb, gbm, 0.9) <= set(expected)
    assert {k.split("|")[0] for k in expected} == {gw.event_id, gbm.event_id}
    return {"gw_path": gw_path, "gbm_path": gbm_path, "gw": gw, "early": early, "grb": grb,
            "expected": expected}


def test_embedded_spool_reports_each_match_once_and_survives_restart(
        scenario: dict, tmp_path: Path) -> None:
    from mmcross.app.embedded import EmbeddedService

    spool = tmp_path / "spool"
    config = Config.load(_config(tmp_path / "c.toml", spool))
    db = f"sqlite:///{tmp_path / 'embedded.sqlite'}"
    inbox, out = spool / "in", spool / "out"
    wires = tmp_path / "early.wires"
    scenario["early"].write_wire_stream(wires)
    container = tmp_path / "grb.avro"
    scenario["grb"].write_container(container)
    now = time.time()
    # Alerts first (retro-matching), then the notices, then the GRB's alerts as a container.
    _drop(inbox, "early.wires", src=wires, mtime=now - 50)
    _drop(inbox, "notices/S230518h.json", src=scenario["gw_path"], mtime=now - 40)
    _drop(inbox, "gbm.xml", src=scenario["gbm_path"], mtime=now - 30)
    _drop(inbox, "bad.json", b"{not a notice", mtime=now - 25)
    _drop(inbox, "junk.wires", b"definitely not alerts", mtime=now - 22)
    _drop(inbox, "alerts/grb.avro", src=container, mtime=now - 20)

    service = EmbeddedService(config, Store(db))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    expected = scenario["expected"]
    try:
        wait_for(lambda: service.spool is not None and service.spool.pending() == 0,
                 "spool emptied")
        done = sorted(str(p.relative_to(spool / "done")) for p in (spool / "done").rglob("*")
                      if p.is_file())
        assert done == ["alerts/grb.avro", "early.wires", "gbm.xml", "notices/S230518h.json"]
        assert _jsonl_keys(out / "matches.jsonl") == Counter(set(expected))
        # The same alerts dropped again: read, but nothing reported twice (store de-dup).
        _drop(inbox, "early-again.wires", src=wires)
        wait_for(lambda: (spool / "done" / "early-again.wires").exists(), "second copy handled")
        assert service.metrics.value("alerts_total") == len(scenario["early"]) * 2 + len(
            scenario["grb"])
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert _jsonl_keys(out / "matches.jsonl") == Counter(set(expected))
    voevents = sorted((out / "voevents").glob("*.xml"))
    assert len(voevents) == len(expected)
    failed = sorted(p.name for p in (spool / "failed").iterdir())
    assert failed == ["bad.json", "bad.json.reason.txt", "junk.wires", "junk.wires.reason.txt"]
    assert "BadNoticeError" in (spool / "failed" / "bad.json.reason.txt").read_text()
    assert "not an alert file" in (spool / "failed" / "junk.wires.reason.txt").read_text()

    # A restart restores the events from the store and adds no report.
    again = EmbeddedService(config, Store(db))
    again.start()
    try:
        assert scenario["gw"].event_id in again.engine.index
        _drop(inbox, "early-third.wires", src=wires, mtime=time.time() - 5)
        deadline = time.monotonic() + 30
        while again.spool.pending() and time.monotonic() < deadline:
            again.step()
            time.sleep(0.1)
        assert again.spool.pending() == 0
    finally:
        again.close()
    assert _jsonl_keys(out / "matches.jsonl") == Counter(set(expected))


def test_mmcross_listen_without_kafka_runs_on_the_spool(scenario: dict, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    db = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[localization]\ncredible_level_tolerance = 1e-2\n"
                   "[spool]\nsettle = 0.2\npoll_interval = 0.1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    log_path = tmp_path / "listen.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmcross", "listen", "--config",
                                 str(cfg), "--spool", str(spool), "--db", db], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        wires = tmp_path / "early.wires"
        scenario["early"].write_wire_stream(wires)
        now = time.time()
        _drop(spool / "in", "S230518h.json", src=scenario["gw_path"], mtime=now - 10)
        _drop(spool / "in", "early.wires", src=wires, mtime=now - 5)
        want = {k for k in scenario["expected"] if k.startswith(scenario["gw"].event_id)}
        wait_for(lambda: set(_jsonl_keys(spool / "out" / "matches.jsonl")) == want,
                 "reports of the GW", proc)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert b"stopped:" in stdout
    assert "embedded mode" in log_path.read_text()
    assert max(_jsonl_keys(spool / "out" / "matches.jsonl").values()) == 1


def test_stored_alert_history_is_pruned_to_the_longest_window_at_start(
        tmp_path: Path) -> None:
    from mmcross.app.embedded import EmbeddedService

    spool = tmp_path / "spool"
    config = Config.load(_config(tmp_path / "c.toml", spool))
    window = config.longest_window_days
    rng = np.random.default_rng(3)
    mjd = np.sort(61000.0 + rng.uniform(0, 3 * window, 400))
    n = len(mjd)
    batch = AlertBatch(np.arange(n, dtype=np.int64) + 1, np.array([str(i) for i in range(n)],
                       dtype=object), rng.uniform(0, 360, n), rng.uniform(-90, 90, n), mjd,
                       is_new=np.ones(n, bool))
    db = f"sqlite:///{tmp_path / 'prune.sqlite'}"
    with Store(db) as store:
        store.save_alert_history(batch)
    service = EmbeddedService(config, Store(db))
    service.start()
    service.close()
    with Store(db) as store:
        kept = store.load_alert_history(0.0)
    keep = mjd >= mjd.max() - window
    assert 0 < keep.sum() < n
    assert sorted(kept.alert_id.tolist()) == sorted(batch.alert_id[keep].tolist())


def test_alert_history_is_pruned_periodically_while_running(tmp_path: Path) -> None:
    from mmcross.app.embedded import EmbeddedService
    from mmcross.app.simulate import simulate_night

    spool = tmp_path / "spool"
    cfg = _config(tmp_path / "c.toml", spool)
    cfg.write_text(cfg.read_text() + "[service]\nprune_interval = 0.01\n")
    config = Config.load(cfg)
    window = config.longest_window_days
    db = f"sqlite:///{tmp_path / 'p.sqlite'}"
    service = EmbeddedService(config, Store(db))
    service.start()
    try:
        old = AlertBatch(np.array([1, 2], np.int64), np.array(["1", "2"], dtype=object),
                         np.array([10.0, 20.0]), np.array([0.0, 5.0]),
                         np.array([60000.0, 60000.5]), is_new=np.ones(2, bool))
        service.store.save_alert_history(old)
        night = simulate_night(50, start_mjd_tai=60000.0 + 2 * window, duration_days=0.01,
                               rng=np.random.default_rng(9), first_id=10**6,
                               cutout_bytes=10, n_previous=0)
        wires = tmp_path / "n.wires"
        night.write_wire_stream(wires)
        _drop(spool / "in", "n.wires", src=wires, mtime=time.time() - 5)
        time.sleep(0.05)
        deadline = time.monotonic() + 30
        while service.spool.pending() and time.monotonic() < deadline:
            service.step()
            time.sleep(0.05)
        service.step()
        kept = set(service.store.load_alert_history(0.0).alert_id.tolist())
    finally:
        service.close()
    assert kept == set(night.alert_id.tolist())  # the two old alerts are gone

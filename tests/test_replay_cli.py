"""`mmcross replay` / `events` / `matches` / `simulate` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import voeventparse

from mmcross.app.cli import main
from mmcross.app.simulate import simulate_night
from mmcross.brokers.reports import read_json_lines
from mmcross.listeners import read_notice_file

CONFIG = """
[localization]
credible_level_tolerance = 1e-2
[listeners]
roles = ["observation", "test"]
"""


def test_replay_matches_then_retraction_revokes_and_bad_inputs_are_counted(
        shared_file, tmp_path, capsys):
    prelim = shared_file("gcn/json/userguide/MS181101ab-preliminary.json")
    retraction = shared_file("gcn/json/userguide/MS181101ab-retraction.json")
    event = read_notice_file(prelim, roles=("test",), tolerance=1e-2)
    t0 = event.trigger_mjd_tai
    night = simulate_night(300, start_mjd_tai=t0 - 0.005, duration_days=0.045,
                           rng=np.random.default_rng(11), n_previous=2, cutout_bytes=100,
                           inject=[(event.localization, 12, t0, t0 + 0.04)])
    alerts = tmp_path / "night.wires"
    night.write_wire_stream(alerts)
    junk_alerts = tmp_path / "junk.avro"
    junk_alerts.write_bytes(b"\x00\x00\x00\x04\x4dnot avro at all")
    junk_notice = tmp_path / "junk.xml"
    junk_notice.write_bytes(b"<voe:VOEvent><unclosed>")
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"

    status = main(["-q", "replay", "--notices", str(prelim), str(retraction), str(junk_notice),
                   "--alerts", str(alerts), str(junk_alerts), "--out", str(out),
                   "--config", str(config)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "notices applied: 2 (refused: BadNoticeError 1)" in printed
    assert "(1 unreadable)" in printed

    reports = read_json_lines(out / "matches.jsonl")
    injected = {int(a) for a in night.injected[0]}
    cl = event.localization.credible_level_at(night.ra, night.dec)
    expected = {int(a) for a, c in zip(night.alert_id, cl, strict=True)
                if c <= 0.9 and int(a) in injected}
    matched = {m.alert_id for m in reports if not m.retracted}
    revoked = {m.alert_id for m in reports if m.retracted}
    assert expected and expected <= matched
    assert revoked == matched  # the retraction revoked every match
    xml = sorted((out / "voevents").glob("*.xml"))
    assert len([p for p in xml if p.name.endswith(".retraction.xml")]) == len(revoked)
    assert len(xml) == 2 * len(matched)
    for path in xml[:4]:
        assert voeventparse.valid_as_v2_0(voeventparse.load(path.open("rb")))

    db = f"sqlite:///{out / 'mmcross.sqlite'}"
    assert main(["events", "--db", db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["event_id"], r["retracted"]) for r in rows] == [("lvk:MS181101ab", True)]
    assert main(["matches", "--db", db, "--all", "--json"]) == 0
    stored = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {m["alert_id"] for m in stored} == matched
    assert all(m["retracted"] for m in stored)


def test_replay_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    status = main(["replay", "--notices", str(tmp_path / "nope.xml"), "--alerts",
                   str(tmp_path), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "nope.xml" in capsys.readouterr().err


def test_simulate_writes_a_readable_stream_with_injections(shared_file, tmp_path, capsys):
    from mmcross.brokers.alert_files import read_alert_file

    out = tmp_path / "sim.avro"
    truth = tmp_path / "truth.json"
    notice = shared_file("gcn/json/fink-mm/S230518h-initial.json")
    assert main(["-q", "simulate", "--out", str(out), "--n", "200", "--inject-notice",
                 str(notice), "--inject", "4", "--truth", str(truth)]) == 0
    batch = read_alert_file(out)
    assert len(batch) == 204
    ids = json.loads(truth.read_text())[0]
    event = read_notice_file(notice, tolerance=1e-2)
    rows = np.isin(batch.alert_id, ids)
    assert rows.sum() == 4
    # injected positions are drawn from the map: all have non-zero probability density
    assert np.all(event.localization.density_at(batch.ra[rows], batch.dec[rows]) > 0)

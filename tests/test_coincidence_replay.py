"""A replay of real notices producing a coincidence: FARs, combined map, Rubin counterparts,
report files (JSON Lines, Avro, VOEvent), and the LVK retraction revoking all of it once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.time import TimeDelta
from lxml import etree

from mmcross.app.cli import main
from mmcross.app.demo import place_voevent
from mmcross.app.engine import Engine
from mmcross.app.replay import coincidence_sinks, replay
from mmcross.brokers.coincidence_reports import (
    coincidence_from_avro,
    coincidence_to_avro,
    coincidence_voevent,
)
from mmcross.brokers.sinks import JsonLinesSink
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.coincidence import Coincidence
from mmcross.model.config import Config
from tests.helpers import GBM_NOTICE, GW_NOTICE, sim_night


def test_replay_finds_coincidence_counterparts_and_revokes_on_retraction(shared_file, tmp_path,
                                                                         capsys):
    gw = read_notice_file(shared_file(GW_NOTICE))
    loc = gw.localization
    k = int(np.argmax(loc.probdensity))
    ra, dec = (float(x[0]) for x in loc.sample(1, np.random.default_rng(k)))
    notices = tmp_path / "notices"
    notices.mkdir()
    (notices / "gw.json").write_bytes(shared_file(GW_NOTICE).read_bytes())
    (notices / "gbm.xml").write_bytes(place_voevent(
        shared_file(GBM_NOTICE).read_bytes(), gw.trigger_time + TimeDelta(1.74, format="sec"),
        ra, dec, 60.0))
    # The combined map the engine will build, to inject Rubin counterparts inside it.
    probe = Engine(Config.load())
    probe.on_notice(gw)
    (c,) = probe.on_notice(read_notice_file(notices / "gbm.xml")).coincidences
    combined = probe.index.get(c.coincidence_id)
    t0 = gw.trigger_mjd_tai
    retract_at = gw.arrival_mjd_tai + 0.2
    night = sim_night(2000, t0 - 0.001, 0.15, combined.localization, 8, t0 + 0.001,
                      t0 + 0.1, first_id=0, seed=5)
    alerts = tmp_path / "alerts.wires"
    night.write_wire_stream(alerts)
    retraction = {"alert_type": "RETRACTION", "superevent_id": "S230518h",
                  "time_created": (gw.notice_time + TimeDelta((retract_at - gw.arrival_mjd_tai)
                                                              * 86400, format="sec")).utc.isot
                  + "Z", "event": None, "external_coinc": None, "urls": {}}
    later = tmp_path / "later"
    later.mkdir()
    (later / "retraction.json").write_text(json.dumps(retraction))
    # Alerts after the retraction would not be matched: keep the stream before it.
    assert night.mjd_tai.max() < retract_at

    out = tmp_path / "out"
    out.mkdir()
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    store = Store(db)
    engine = Engine(Config.load(), store=store, sinks=[JsonLinesSink(out / "matches.jsonl")],
                    coincidence_sinks=coincidence_sinks(out, store))
    try:
        summary = replay(engine, [notices, later], [alerts])
    finally:
        engine.close()
    assert summary.coincidences == 1 and summary.coincidences_revoked == 1

    records = [Coincidence.from_record(json.loads(x))
               for x in (out / "coincidences.jsonl").read_text().splitlines()]
    assert [r.retracted for r in records] == [False, True]
    assert records[0].spacetime_far == c.spacetime_far and records[0].temporal_far
    matches = [json.loads(x) for x in (out / "matches.jsonl").read_text().splitlines()]
    on_combined = [m for m in matches if m["event_id"] == c.coincidence_id]
    found = {m["alert_id"] for m in on_combined if not m["retracted"]}
    injected = np.concatenate(night.injected)
    rows = np.isin(night.alert_id, injected)
    cl = combined.localization.credible_level_at(night.ra[rows], night.dec[rows])
    inside = set(night.alert_id[rows][cl <= 0.9].tolist())
    assert inside and inside <= found
    revoked = sorted(m["alert_id"] for m in on_combined if m["retracted"])
    assert revoked == sorted(found)  # every match of the combined region revoked, once

    # Avro round trip and the VOEvent citing the Fermi notice's IVORN and the LVK event id.
    assert coincidence_from_avro(coincidence_to_avro(records[0])) == records[0]
    root = etree.fromstring(coincidence_voevent(records[0]))
    cited = [e.text for e in root.iter("EventIVORN")]
    assert cited == [read_notice_file(notices / "gbm.xml").ivorn]
    params = {p.get("name"): p.get("value") for p in root.iter("Param")}
    assert params["parent_event_ids"].split() == ["lvk:S230518h", records[0].ext_event_id]
    xml_files = sorted(p.name for p in (out / "voevents" / "coincidences").glob("*.xml"))
    assert len(xml_files) == 2 and any("retraction" in n for n in xml_files)

    # The store keeps both records; `mmcross coincidences` lists the live ones (none left).
    capsys.readouterr()
    assert main(["coincidences", "--db", db]) == 0
    assert capsys.readouterr().out.strip() == "(none)"
    assert main(["coincidences", "--db", db, "--all", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert Coincidence.from_record(json.loads(line)) == records[1]


def test_plot_draws_the_combined_map_and_both_parents(shared_file, tmp_path):
    import matplotlib.image

    from mmcross.app.plot import PARENT_COLORS, plot_event

    gw = read_notice_file(shared_file(GW_NOTICE))
    ra, dec = (float(x[0]) for x in gw.localization.sample(1, np.random.default_rng(3)))
    path = tmp_path / "gbm.xml"
    path.write_bytes(place_voevent(shared_file(GBM_NOTICE).read_bytes(),
                                   gw.trigger_time + TimeDelta(1.74, format="sec"), ra, dec, 60))
    ext = read_notice_file(path)
    engine = Engine(Config.load())
    engine.on_notice(gw)
    (c,) = engine.on_notice(ext).coincidences
    combined = engine.index.get(c.coincidence_id)
    drawn = plot_event(combined, [], tmp_path / "coinc.png", parents=[gw, ext])
    assert drawn.area90 == pytest.approx(c.combined_area90)
    image = matplotlib.image.imread(drawn.path)[..., :3]
    for color in PARENT_COLORS:  # each parent's dotted contour is on the image
        rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert np.any(np.all(np.abs(image - rgb) < 0.02, axis=-1)), color

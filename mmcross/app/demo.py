"""``mmcross demo``: a night of simulated Rubin alerts around real GCN notices, replayed.

The notices are real: from ``../shared/data`` beside the checkout when present (an O4 LVK
skymap notice, Fermi GBM, Swift BAT and IceCube VOEvents), else the real VOEvents that pygcn
and voevent-parse ship. For each event a stream of background alerts is simulated from its
trigger time, with counterparts injected inside its localization, some of them *before* the
notice arrives (found by retro-matching). The replay writes ``matches.jsonl`` and VOEvents;
the demo then says how many injected counterparts inside the credible region were found.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from mmcross.app.tables import print_replay_summary
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import MmcrossError
from mmcross.model.event import Event

log = logging.getLogger(__name__)

SHARED_NOTICES = (
    "gcn/json/fink-mm/S230518h-initial.json",
    "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml",
    "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml",
    "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml",
)


def shared_data_dir() -> Path | None:
    """``$MMCROSS_SHARED_DATA``, else ``shared/data`` beside the checkout, if it exists."""
    env = os.environ.get("MMCROSS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data",
                   Path.cwd().parent / "shared" / "data"]
    return next((p for p in candidates if p.is_dir()), None)


def packaged_notices() -> list[Path]:
    """Real VOEvents shipped inside pygcn and voevent-parse (Fermi GBM, Swift BAT)."""
    import gcn
    import voeventparse

    return [Path(gcn.__file__).parent / "tests" / "data" / "gbm_flt_pos.xml",
            Path(voeventparse.__file__).parent / "fixtures" / "SWIFT_bat_position_v2.0_example.xml"]


def demo_notices() -> list[Path]:
    shared = shared_data_dir()
    if shared is not None:
        paths = [shared / p for p in SHARED_NOTICES]
        if all(p.exists() for p in paths):
            return paths
    log.info("../shared/data not found: using the VOEvents shipped by pygcn and voevent-parse")
    return packaged_notices()


def run_demo(out: Path, *, n_alerts: int = 20_000, seed: int = 1,
             n_inject: int = 6, config: Config | None = None) -> int:
    """Simulate, replay and report; returns the process exit status (0 when all found)."""
    from mmcross.app.engine import Engine
    from mmcross.app.replay import replay
    from mmcross.app.simulate import simulate_night
    from mmcross.brokers.sinks import JsonLinesSink, VOEventDirectorySink
    from mmcross.catalogs import Store

    config = config or Config.load()
    out.mkdir(parents=True, exist_ok=True)
    alerts_dir = out / "alerts"
    alerts_dir.mkdir(exist_ok=True)
    for old in [*alerts_dir.glob("*.wires"), out / "matches.jsonl", out / "mmcross.sqlite"]:
        old.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    notices = demo_notices()
    events: list[Event] = []
    for path in notices:
        try:
            events.append(read_notice_file(path, **notice_options(config)))
        except MmcrossError as exc:
            log.warning("demo notice %s refused: %s", path, exc)
    events = [e for e in events if e.localization is not None]
    truth: dict[str, list[int]] = {}
    inside: dict[str, list[int]] = {}
    per_event = max(1, n_alerts // max(1, len(events)))
    for i, event in enumerate(sorted(events, key=lambda e: e.trigger_mjd_tai)):
        t0, arrival = event.trigger_mjd_tai, event.arrival_mjd_tai
        early = max(1, n_inject // 3)
        night = simulate_night(
            per_event, start_mjd_tai=t0 - 0.005, duration_days=0.3, rng=rng,
            first_id=i * 10_000_000,
            inject=[(event.localization, early, t0, max(arrival, t0 + 1e-5)),
                    (event.localization, n_inject - early, arrival, arrival + 0.25)])
        night.write_wire_stream(alerts_dir / f"{i:02d}.wires")
        ids = [int(a) for group in night.injected for a in group]
        truth[event.event_id] = ids
        rows = np.isin(night.alert_id, ids)
        cl = event.localization.credible_level_at(night.ra[rows], night.dec[rows])
        inside[event.event_id] = [int(a) for a, c in zip(night.alert_id[rows], cl, strict=True)
                                  if c <= config.credible_level]
    (out / "injected.json").write_text(json.dumps(truth, indent=1))

    db = f"sqlite:///{out / 'mmcross.sqlite'}"
    engine = Engine(config, store=Store(db),
                    sinks=[JsonLinesSink(out / "matches.jsonl"), VOEventDirectorySink(
                        out / "voevents")])
    try:
        summary = replay(engine, events, [alerts_dir])
    finally:
        engine.close()


    print_replay_summary(summary, out, db)
    matched = {(m["event_id"], m["alert_id"]) for m in map(
        json.loads, (out / "matches.jsonl").read_text().splitlines()) if not m["retracted"]}
    print()
    missing = 0
    for event_id, ids in inside.items():
        found = sum((event_id, a) in matched for a in ids)
        missing += len(ids) - found
        print(f"{event_id}: {len(truth[event_id])} counterparts injected, {len(ids)} inside the "
              f"{config.credible_level:.0%} region, {found} matched")
    return 0 if missing == 0 else 1

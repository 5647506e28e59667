"""``mmcross demo``: a night of simulated Rubin alerts around real GCN notices, replayed.

The notices are real: from ``../shared/data`` beside the checkout when present (an O4 LVK
skymap notice, Fermi GBM, Swift BAT and IceCube VOEvents), else the real VOEvents that pygcn
and voevent-parse ship. For each event a stream of background alerts is simulated from its
trigger time, with counterparts injected inside its localization, some of them *before* the
notice arrives (found by retro-matching). The replay writes ``matches.jsonl`` and VOEvents;
the demo then says how many injected counterparts inside the credible region were found.

With ``../shared/data``, the real Fermi GBM notice of burst 727009399 is also placed 1.74 s
after S230518h (as GRB 170817A followed GW170817) at a point of the GW map: the replay finds
the coincidence (ligo-raven FARs in ``coincidences.jsonl``) and the counterparts injected
inside the combined GW x GBM map.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
from astropy.time import Time, TimeDelta

from mmcross.app.tables import print_replay_summary
from mmcross.listeners import parse_notice, read_notice_file
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


PLACED_GRB = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_727009399-724.xml"
GRB_AFTER_GW_S = 1.74  # GRB 170817A came 1.74 s after the GW170817 merger
GRB_NOTICE_DELAY_S = 60.0


def place_voevent(xml: bytes, trigger: Time, ra: float, dec: float, delay_s: float) -> bytes:
    """A real VOEvent with its trigger time (``ISOTime``), position (``C1``/``C2``, degrees
    ICRS) and issue time (``Who/Date`` = trigger + ``delay_s`` seconds) replaced."""
    text = xml.decode()
    text = re.sub(r"<ISOTime>[^<]*</ISOTime>", f"<ISOTime>{trigger.utc.isot}</ISOTime>", text)
    issued = (trigger + TimeDelta(delay_s, format="sec")).utc.isot[:19]
    text = re.sub(r"<Date>[^<]*</Date>", f"<Date>{issued}</Date>", text, count=1)
    text = re.sub(r"<C1>[^<]*</C1>", f"<C1>{ra:.4f}</C1>", text)
    text = re.sub(r"<C2>[^<]*</C2>", f"<C2>{dec:.4f}</C2>", text)
    return text.encode()


def placed_grb(shared: Path, gw: Event, rng: np.random.Generator, config: Config) -> Event:
    """The real GBM notice :data:`PLACED_GRB` moved 1.74 s after ``gw``, at a point drawn
    from ``gw``'s map, issued a minute later."""
    ra, dec = (float(x[0]) for x in gw.localization.sample(1, rng))
    xml = place_voevent((shared / PLACED_GRB).read_bytes(),
                        gw.trigger_time + TimeDelta(GRB_AFTER_GW_S, format="sec"), ra, dec,
                        GRB_NOTICE_DELAY_S)
    return parse_notice(xml, source=f"{PLACED_GRB} placed after {gw.event_id}",
                        **notice_options(config))


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
    from mmcross.app.replay import coincidence_sinks, replay
    from mmcross.app.simulate import simulate_night
    from mmcross.brokers.sinks import JsonLinesSink, VOEventDirectorySink
    from mmcross.catalogs import Store

    config = config or Config.load()
    out.mkdir(parents=True, exist_ok=True)
    alerts_dir = out / "alerts"
    alerts_dir.mkdir(exist_ok=True)
    for old in [*alerts_dir.glob("*.wires"), out / "matches.jsonl", out / "mmcross.sqlite",
                out / "coincidences.jsonl"]:
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
    shared = shared_data_dir()
    gws = [e for e in events if e.event_id == "lvk:S230518h"]
    targets = list(events)
    if shared is not None and gws and (shared / PLACED_GRB).exists():
        grb = placed_grb(shared, gws[0], rng, config)
        events.append(grb)
        # The combined map the replay will build, to inject counterparts inside it.
        probe = Engine(config)
        probe.on_notice(gws[0])
        targets += [probe.index.get(c.coincidence_id)
                    for c in probe.on_notice(grb).coincidences]
        targets.append(grb)
    truth: dict[str, list[int]] = {}
    inside: dict[str, list[int]] = {}
    per_event = max(1, n_alerts // max(1, len(targets)))
    for i, event in enumerate(sorted(targets, key=lambda e: e.trigger_mjd_tai)):
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
    store = Store(db)
    engine = Engine(config, store=store,
                    sinks=[JsonLinesSink(out / "matches.jsonl"), VOEventDirectorySink(
                        out / "voevents")], coincidence_sinks=coincidence_sinks(out, store))
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
    for line in ((out / "coincidences.jsonl").read_text().splitlines()
                 if (out / "coincidences.jsonl").exists() else []):
        c = {k: "n/a" if v is None else v for k, v in json.loads(line).items()}
        print(f"{c['coincidence_id']} revision {c['revision']}: t_GW - t_ext "
              f"{c['time_difference']:.2f} s, temporal FAR {c['temporal_far']:.3g} Hz, "
              f"space-time FAR {c['spacetime_far']:.3g} Hz (RAVEN overlap {c['overlap']:.4g}, "
              f"exact {c['overlap_exact']:.4g}), 90% area {c['combined_area90']:.4g} deg2, "
              f"{'publishable' if c['publishable'] else 'not publishable'}"
              f"{' (revoked)' if c['retracted'] else ''}")
    return 0 if missing == 0 else 1

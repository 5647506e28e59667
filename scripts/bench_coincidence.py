#!/usr/bin/env python
"""Benchmark: the coincidence search when a notice lands against 1,000 live events, and the
combined map built and indexed.

Live events: 100 GW events (the real S230518h and MS181101ab maps, ids and trigger times
changed) and 900 external triggers (the real Fermi GBM ground, Swift BAT and IceCube bronze
notices, times and positions changed), spread over 30 days. The landing notice is the real
GBM notice placed 1.74 s after one of the GW events (so exactly one pair is in its window),
each repeat with a new id (nothing cached for it). Measured, median of the repeats:

* ``search``: :meth:`CoincidenceSearch.search` for the landing notice: time filter over the
  1,000 live events, its gwcelery sky map, ligo-raven's overlap (nearest-centre KD-tree) and
  the exact overlap, FARs and publication decision; also with no pair in the window;
* ``combined map``: :meth:`CoincidenceSearch.combined` and indexing it in the engine (index,
  matcher, retro-match against an empty history), i.e. ``Engine.on_notice`` of the notice
  minus the search and the notice's own indexing;
* peers in the same run, when installed: ligo-raven's ``skymap_overlap_integral`` on the same
  pair and gwcelery's ``create_external_skymap`` (gwcelery 3.0 from its wheel, see
  ``tests/helpers.gwcelery_module``), against our overlap and sky-map builder.

Prints a Markdown table. Usage: python scripts/bench_coincidence.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.time import TimeDelta

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmcross.app.demo import place_voevent, shared_data_dir  # noqa: E402
from mmcross.app.engine import Engine  # noqa: E402
from mmcross.listeners import parse_notice, read_notice_file  # noqa: E402
from mmcross.matchers import raven  # noqa: E402
from mmcross.matchers.coincidence import CoincidenceSearch  # noqa: E402
from mmcross.matchers.external_skymaps import external_skymap  # noqa: E402
from mmcross.model.config import Config  # noqa: E402

GW_FILES = ("gcn/json/fink-mm/S230518h-initial.json",
            "gcn/avro/userguide/MS181101ab-ext-update.avro")
GBM_NOTICE = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"
EXT_FILES = (GBM_NOTICE, "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml",
             "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml")


def live_events(data: Path, n_gw: int, n_ext: int, rng: np.random.Generator) -> list:
    gws = [read_notice_file(data / f, roles=("observation", "test")) for f in GW_FILES]
    exts = [read_notice_file(data / f) for f in EXT_FILES]
    t0 = gws[0].trigger_time
    times = np.sort(rng.uniform(0, 30 * 86400, n_gw + n_ext))
    kinds = rng.permutation(np.r_[np.zeros(n_gw, bool), np.ones(n_ext, bool)])
    events = []
    for i, (t, is_ext) in enumerate(zip(times, kinds, strict=True)):
        base = exts[i % len(exts)] if is_ext else gws[i % len(gws)]
        moved = replace(base, event_id=f"{base.event_id}-{i}",
                        trigger_time=t0 + TimeDelta(t, format="sec"), role="observation")
        if is_ext:
            moved = replace(moved, ra=float(rng.uniform(0, 360)),
                            dec=float(np.degrees(np.arcsin(rng.uniform(-1, 1)))))
        events.append(moved)
    return events


def landing(data: Path, gw, repeat: int, dt_s: float):
    """The real GBM notice placed ``dt_s`` after ``gw`` near its most probable pixel."""
    loc = gw.localization
    ra, dec = (float(x[0]) for x in loc.sample(1, np.random.default_rng(repeat)))
    xml = place_voevent((data / GBM_NOTICE).read_bytes(),
                        gw.trigger_time + TimeDelta(dt_s, format="sec"), ra, dec, 60.0)
    event = parse_notice(xml, source=f"bench-{repeat}")
    return replace(event, event_id=f"{event.event_id}-landing-{repeat}")


@contextmanager
def timed(samples: list[tuple[float, float]]):
    """Append (wall-clock s, CPU s of this process) of the block to ``samples``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    samples.append((time.perf_counter() - wall, time.process_time() - cpu))


def ms(samples: list[tuple[float, float]]) -> str:
    """Median wall-clock and CPU time, ms (the CPU time is what the machine's load leaves
    untouched)."""
    wall = statistics.median(w for w, _ in samples)
    cpu = statistics.median(c for _, c in samples)
    return f"{1e3 * wall:.2f} ms (CPU {1e3 * cpu:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        print("../shared/data not found", file=sys.stderr)
        return 1
    rng = np.random.default_rng(7)
    n_gw = args.events // 10
    events = live_events(data, n_gw, args.events - n_gw, rng)
    config = Config.load()
    search = CoincidenceSearch(config)
    engine = Engine(config)
    engine.index.restore(events)  # the live set, without searching each pair on the way
    for e in events:
        search.observe(e)
        engine.matcher.upsert(e)
        engine.coincidences.observe(e)
    gws = [e for e in events if e.kind.value == "gw"]
    # Warm up numba kernels and caches of the live events' maps.
    warm = landing(data, gws[0], 999, 0.5)
    search.observe(warm)
    search.search(warm)
    search.forget(warm.event_id)

    t_search, t_none, t_map, t_raven, t_exact, t_combined, t_index, t_engine = (
        [] for _ in range(8))
    t_peer_overlap, t_peer_map, pairs = [], [], []
    try:
        from ligo.raven.search import skymap_overlap_integral

        from tests.helpers import gwcelery_module
        gwcelery = gwcelery_module("tasks.external_skymaps")
    except Exception as exc:  # noqa: BLE001 - peers are optional
        print(f"(peers not measured: {type(exc).__name__}: {exc})", file=sys.stderr)
        skymap_overlap_integral = gwcelery = None
    for r in range(args.repeats):
        gw = gws[(r * 7 + 3) % len(gws)]
        # no pair: a notice far from every GW time
        lonely = replace(landing(data, gw, r, 0.0), event_id=f"lonely-{r}",
                         trigger_time=gw.trigger_time - TimeDelta(40 * 86400, format="sec"))
        search.observe(lonely)
        with timed(t_none):
            none = search.search(lonely)
        search.forget(lonely.event_id)
        assert none == []
        ext = landing(data, gw, r, 1.74)
        search.observe(ext)
        with timed(t_search):
            (found,) = search.search(ext)
        pairs.append(found.record)
        # parts, on fresh maps
        with timed(t_map):
            sky = external_skymap(ext.ra, ext.dec, ext.error_radius, ext.containment,
                                  fermi_notice_type="FERMI_GBM_GROUND_POSITION")
        ext_map = raven.MocMap(sky.uniq, sky.density)
        gw_map = raven.MocMap(gw.localization.uniq, gw.localization.probdensity)
        with timed(t_raven):
            ours = raven.overlap_moc_moc(gw_map, ext_map)
        with timed(t_exact):
            raven.overlap_exact(gw_map, ext_map)
        # combined map built, then indexed by the engine
        with timed(t_combined):
            combined = search.combined(found)
        with timed(t_engine):  # all of it: index, search, combined map built and indexed
            engine.on_notice(ext)
        coinc = engine.index.get(found.record.coincidence_id)
        again = replace(coinc, localization=combined, revision=0,
                        notice_time=coinc.notice_time + TimeDelta(1, format="sec"))
        with timed(t_index):
            engine._apply_notice(again)
        search.forget(ext.event_id)
        if skymap_overlap_integral is not None:
            with timed(t_peer_overlap):
                theirs = skymap_overlap_integral(gw_map.density, sky.density, gw_map.uniq, sky.uniq)
            assert abs(ours / theirs - 1) < 1e-6, (ours, theirs)
            with timed(t_peer_map):
                gwcelery.create_external_skymap(ext.ra, ext.dec, ext.error_radius, "Fermi",
                                                "FERMI_GBM_GROUND_POSITION")
    print(f"{args.events} live events ({n_gw} GW), {args.repeats} repeats, median\n")
    print("| step | mmcross | peer |")
    print("| --- | --- | --- |")
    print(f"| search, no pair in window | {ms(t_none)} | |")
    print(f"| search, one pair (map + overlaps + FARs) | {ms(t_search)} | |")
    peer_map = ms(t_peer_map) if t_peer_map else "n/a"
    peer_overlap = ms(t_peer_overlap) if t_peer_overlap else "n/a"
    print(f"| - external GBM map (adaptive grid) | {ms(t_map)} | gwcelery {peer_map} |")
    print(f"| - RAVEN overlap (nearest centre) | {ms(t_raven)} | ligo-raven {peer_overlap} |")
    print(f"| - exact overlap | {ms(t_exact)} | |")
    print(f"| combined map built | {ms(t_combined)} | |")
    print(f"| combined map indexed (index, matcher, retro-match) | {ms(t_index)} | |")
    total = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(t_combined, t_index, strict=True)]
    print(f"| combined map built + indexed | {ms(total)} | |")
    print(f"| Engine.on_notice of the landing notice (all of it) | {ms(t_engine)} | |")
    print(f"\nspace-time FARs of the pairs (Hz): "
          f"{', '.join(f'{p.spacetime_far:.3g}' for p in pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

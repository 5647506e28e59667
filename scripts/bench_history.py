#!/usr/bin/env python
"""Benchmark: retro-matching a new LVK sky map against millions of remembered alerts.

The alert history (:class:`mmcross.model.history.AlertHistory`) holds ``--alerts`` alerts
uniform on the sky, spread over ``--days`` days ending ``--after`` days after the S230518h
trigger (by default all of them after it, inside the GW window: a map revision days after
the trigger), added in batches of ``--batch`` as a stream would add them. Then the
S230518h map arrives, and in the same run:

* **mmcross, search**: the map packed (its credible levels computed afresh: caches
  released before each repetition; ``pack_localization``) and its packed pixels searched in
  the sorted history (:func:`mmcross.matchers.history_match.pixel_hits`: ``searchsorted``
  per pixel and run, hits filtered by the GW time window): the rows of the alerts inside.
* **mmcross, scored**: what the engine does: ``Matcher.upsert`` packs the map (credible
  levels afresh), then ``Matcher.retro`` intersects its packed pixels with the sorted
  history (:func:`~mmcross.matchers.history_match.pixel_hits`) and reads each hit's score
  from its pixel (credible level, area, density, distance, p_chance), giving the columnar
  report batch (``MatchBatch``). Then the whole ``Engine.on_notice`` (index, store-less,
  the report batch to no sink) once.
* **peer**: ligo.skymap's crossmatch recipe over flat arrays of the same alerts
  (:func:`peer_recipe`: sort by density, cumulative probability, time window, ``ang2pix``
  at order 29 of the alerts in the window, ``searchsorted`` in the sorted pixel starts,
  credible-level cut).

Both must return the same alerts. Prints a Markdown table; times are medians of
``--repeat`` runs after one warm-up (numba compiled).

Usage: python scripts/bench_history.py [--alerts 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import healpy as hp  # noqa: E402

from mmcross.app.engine import Engine  # noqa: E402
from mmcross.listeners import read_notice_file  # noqa: E402
from mmcross.matchers import Matcher  # noqa: E402
from mmcross.matchers.history_match import pixel_hits  # noqa: E402
from mmcross.matchers.packed import pack_localization  # noqa: E402
from mmcross.model.alert import AlertBatch  # noqa: E402
from mmcross.model.config import Config, notice_options  # noqa: E402
from mmcross.model.history import AlertHistory  # noqa: E402

SHARED = Path(os.environ.get("MMCROSS_SHARED_DATA", REPO.parent / "shared" / "data"))
GW_NOTICE = "gcn/json/fink-mm/S230518h-initial.json"


def fill_history(n: int, t0: float, t1: float, batch: int, seed: int
                 ) -> tuple[AlertHistory, SimpleNamespace, float]:
    """A history of ``n`` alerts uniform on the sky and in [t0, t1] MJD TAI (time-ordered
    batches), the same alerts as flat arrays, and the seconds spent adding them."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    mjd = np.sort(rng.uniform(t0, t1, n))
    history = AlertHistory(horizon_days=t1 - t0 + 30.0, max_alerts=2 * n)
    spent = 0.0
    for first in range(0, n, batch):
        sl = slice(first, min(n, first + batch))
        ids = np.arange(sl.start, sl.stop, dtype=np.int64)
        part = AlertBatch(ids, (ids + 10**15).astype(str).astype(object), ra[sl], dec[sl],
                          mjd[sl], is_new=rng.random(len(ids)) < 0.3,
                          mag=rng.uniform(16.0, 24.5, len(ids)))
        t = time.perf_counter()
        history.add(part)
        spent += time.perf_counter() - t
    return history, SimpleNamespace(ra=ra, dec=dec, mjd_tai=mjd), spent


def peer_recipe(uniq: np.ndarray, probdensity: np.ndarray, alerts: SimpleNamespace,
                tmin: float, tmax: float, level: float) -> np.ndarray:
    """Rows of the alerts inside the ``level`` credible region and the window, as
    ligo.skymap's ``crossmatch`` finds them (``searched_prob`` of the alert's pixel; ties of
    equal density resolved to the end of their group, as mmcross does)."""
    order = np.floor(np.log2(uniq // 4) / 2).astype(np.int64)
    ipix = uniq - 4 * (np.int64(1) << (2 * order))
    shift = 2 * (29 - order)
    start, end = ipix << shift, (ipix + 1) << shift
    area = 4 * np.pi / (12 * (np.int64(1) << (2 * order)))
    i = np.argsort(-probdensity, kind="stable")
    cum = np.cumsum((probdensity * area)[i])
    dens = probdensity[i]
    last = np.r_[np.flatnonzero(dens[1:] != dens[:-1]), len(dens) - 1]
    tie_end = last[np.searchsorted(last, np.arange(len(dens)))]
    cl = np.empty(len(dens))
    cl[i] = np.minimum(cum[tie_end], 1.0)
    by_start = np.argsort(start)
    start, end, cl = start[by_start], end[by_start], cl[by_start]
    in_time = np.flatnonzero((alerts.mjd_tai >= tmin) & (alerts.mjd_tai <= tmax))
    pix = hp.ang2pix(2**29, alerts.ra[in_time], alerts.dec[in_time], nest=True, lonlat=True)
    j = np.searchsorted(start, pix, side="right") - 1
    hit = (j >= 0) & (pix < end[np.maximum(j, 0)]) & (cl[np.maximum(j, 0)] <= level)
    return in_time[hit]


def median_ms(fn, repeat: int):
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=10_000_000)
    parser.add_argument("--days", type=float, default=3.0, help="time span of the history")
    parser.add_argument("--after", type=float, default=3.0,
                        help="the history ends this many days after the trigger")
    parser.add_argument("--batch", type=int, default=100_000, help="alerts per add()")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    config = Config.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        event = read_notice_file(SHARED / GW_NOTICE, **notice_options(config))
    loc = event.localization
    window = config.time_window(event.kind)
    tmin, tmax = event.trigger_mjd_tai + window.before, event.trigger_mjd_tai + window.after
    level = config.credible_level
    t1 = event.trigger_mjd_tai + args.after
    history, flat, add_s = fill_history(args.alerts, t1 - args.days, t1, args.batch, args.seed)

    def ours():
        loc.release_caches()
        matcher = Matcher(config)
        matcher.upsert(event)
        return matcher.retro(history, event.event_id).alert_id

    def find_only():
        loc.release_caches()
        packed = pack_localization(loc, max_credible_level=level)
        return pixel_hits(history, packed.start, packed.log2_width, tmin, tmax)

    def peer():
        return peer_recipe(loc.uniq, loc.probdensity, flat, tmin, tmax, level)  # id == row

    ours_ms, ours_ids = median_ms(ours, args.repeat)
    find_ms, hits = median_ms(find_only, args.repeat)
    n_hits = sum(len(rows) for _, rows, _ in hits)
    peer_ms, peer_ids = median_ms(peer, max(1, args.repeat // 2))
    if sorted(ours_ids.tolist()) != sorted(peer_ids.tolist()):
        raise AssertionError(f"different alerts: mmcross {len(ours_ids)}, peer {len(peer_ids)}")

    engine = Engine(config)
    engine.history = history
    loc.release_caches()
    t = time.perf_counter()
    reports = engine.on_notice(event).reports
    engine_s = time.perf_counter() - t
    if sorted(m.alert_id for m in reports) != sorted(peer_ids.tolist()):
        raise AssertionError("Engine.on_notice found other alerts than the peer")

    n = args.alerts
    print(f"\n{n:,} remembered alerts uniform on the sky over {args.days:g} d (ending "
          f"{args.after:g} d after the trigger); S230518h initial map, {len(loc.uniq)} "
          f"NUNIQ pixels; {level:.0%} credible region, GW window [{window.before:g}, "
          f"{window.after:g}] d; medians of {args.repeat} runs after a warm-up\n")
    print("| | ms | alerts found |")
    print("|---|---:|---:|")
    print(f"| mmcross search: map packed + its pixels searched + time filter "
          f"| {find_ms:.1f} | {n_hits:,} |")
    print(f"| mmcross scored: map packed + pixels searched + scored into a report batch "
          f"| **{ours_ms:.1f}** | {len(ours_ids):,} |")
    print(f"| peer: ligo.skymap recipe (ang2pix + searchsorted) | {peer_ms:.1f} "
          f"| {len(peer_ids):,} |")
    print(f"| ratio peer / search, peer / scored | {peer_ms / find_ms:.0f}x, "
          f"**{peer_ms / ours_ms:.0f}x** | |")
    print(f"\n- whole `Engine.on_notice` (index, pack, search, a batch of {len(reports):,} "
          f"reports, no store): {engine_s * 1e3:.0f} ms")
    print(f"- history: {history.nbytes / n:.1f} bytes per alert in {len(history.runs)} sorted "
          f"runs; adding the {n:,} alerts in batches of {args.batch:,}: {add_s:.1f} s "
          f"({n / add_s:,.0f} alerts/s)")
    print(f"- target: < 50 ms for 10 M alerts; machine: nproc "
          f"{len(os.sched_getaffinity(0))}, Python {platform.python_version()}, numpy "
          f"{np.__version__}; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"\nReproduce: python scripts/bench_history.py --alerts {n} --repeat {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

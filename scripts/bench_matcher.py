#!/usr/bin/env python
"""Benchmark: one batch of optical alerts against 1, 100, 1000 live localizations.

Compares ``matchers.Matcher.match_arrays`` (warm, kernels compiled) with two numpy peers
written from ligo.skymap's ``postprocess/crossmatch.py`` recipe, in the same run, and checks
that all three give the same (alert, event) pairs and values:

* ``ligo loop``: per event and per batch, what ``crossmatch`` does: sort the pixels by
  descending density, cumulative sums of probability and area, ``ang2pix`` of the alerts,
  ``searchsorted`` of the alert pixels in the sorted pixel starts (order 29), then the
  credible-level cut and the time window. (Ties between equal densities are resolved to the
  end of their group, as :class:`mmcross.model.localization.Localization` does, so answers agree
  on rasterised circles; ligo itself orders ties by UNIQ.)
* ``ligo loop, cached``: the same loop with the per-event sort/cumsum done once beforehand
  and ``ang2pix`` once per batch: the strongest plain-numpy per-event loop.

Events are a mix: every 10th is an LVK map (the three real maps of ../shared/data, placed
by HEALPix face relabelling: the 4 exact 90-degree azimuthal rotations combined with random
permutations of the 12 base pixels and in-face bit flips; these keep a valid multi-order map
with the same pixels and probabilities), the rest GRB/neutrino circles from
``Localization.from_circle`` with radii 0.05-15 deg. Alerts are uniform on the sky, all within
the events' time windows. Prints a Markdown table.

Usage: python scripts/bench_matcher.py [--alerts 40000] [--events 1 100 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import healpy as hp
import numpy as np
from astropy.time import Time

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmcross.matchers import Matcher  # noqa: E402
from mmcross.model import shapes  # noqa: E402
from mmcross.model.alert import AlertBatch  # noqa: E402
from mmcross.model.config import Config  # noqa: E402
from mmcross.model.event import Event, EventKind  # noqa: E402
from mmcross.model.localization import Localization, uniq_to_order_ipix  # noqa: E402

SHARED = Path(os.environ.get("MMCROSS_SHARED_DATA", REPO.parent / "shared" / "data"))
GW_MAPS = ["skymaps/userguide/MS181101ab_bayestar.multiorder.fits",
           "skymaps/fink-mm/S230518h_initial.multiorder.fits",
           "skymaps/skyportal/GW190425_G330561_bayestar.fits.gz"]
ALERT_MJD = 60300.5
EVEN_BITS = 0x5555555555555555


# -- inputs ----------------------------------------------------------------------------------

def relabel(loc: Localization, rng: np.random.Generator) -> Localization:
    """The map with its base pixels permuted and in-face x/y bits swapped/flipped."""
    order, ipix = uniq_to_order_ipix(loc.uniq)
    if rng.random() < 0.5:  # exact sky rotation by k * 90 deg about the pole
        k = rng.integers(4)
        perm = np.array([(f // 4) * 4 + (f % 4 + k) % 4 for f in range(12)])
    else:
        perm = rng.permutation(12)
    nsub = np.int64(1) << (2 * order)
    face, sub = ipix // nsub, ipix % nsub
    mask_x = np.int64(EVEN_BITS) & (nsub - 1)
    if rng.random() < 0.5:
        sub = ((sub & mask_x) << 1) | ((sub >> 1) & mask_x)
    if rng.random() < 0.5:
        sub = sub ^ mask_x
    new = perm[face] * nsub + sub
    uniq = (np.int64(4) << (2 * order)) + new
    return Localization(uniq, loc.probdensity, loc.distmu, loc.distsigma, loc.distnorm,
                        meta=loc.meta)


def make_events(n: int, base: list[Localization], tolerance: float,
                rng: np.random.Generator) -> list[Event]:
    events = []
    for k in range(n):
        trigger = Time(ALERT_MJD - rng.uniform(0.0, 2.5), format="mjd", scale="tai").utc
        if k % 10 == 0:
            loc = base[(k // 10) % len(base)]
            loc = loc if k < 10 * len(base) else relabel(loc, rng)
            events.append(Event(f"gw:{k}", EventKind.GW, "LVK", trigger, loc, revision=1))
        else:
            u = rng.random()
            radius = 0.05 if u < 0.1 else rng.uniform(0.3, 2.0) if u < 0.4 else \
                rng.uniform(2.0, 15.0)
            ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loc = shapes.circle(ra, dec, radius, tolerance=tolerance)
            kind = EventKind.GRB if u >= 0.1 and u >= 0.4 else EventKind.NEUTRINO
            events.append(Event(f"c:{k}", kind, "circle", trigger, loc, revision=1))
    return events


def make_alerts(n: int, rng: np.random.Generator, fields: int = 0) -> AlertBatch:
    """n alerts uniform on the sky, or (``fields`` > 0) uniform in that many Rubin-like
    fields of 1.75 deg radius (9.6 deg^2) at random centres."""
    if fields:
        centre = rng.integers(fields, size=n)
        ra0 = rng.uniform(0, 360, fields)[centre]
        dec0 = np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, fields)))[centre]
        # uniform in a spherical cap around the pole, rotated to (ra0, dec0)
        r = np.radians(1.75)
        cos_t = 1 - rng.uniform(0, 1, n) * (1 - np.cos(r))
        sin_t = np.sqrt(1 - cos_t**2)
        phi = rng.uniform(0, 2 * np.pi, n)
        v = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])
        lat0, lon0 = np.radians(dec0), np.radians(ra0)
        # rotate pole -> (lon0, lat0): about y by (90 - lat0), then about z by lon0
        a = np.pi / 2 - lat0
        x = v[0] * np.cos(a) + v[2] * np.sin(a)
        z = -v[0] * np.sin(a) + v[2] * np.cos(a)
        y = v[1]
        x, y = x * np.cos(lon0) - y * np.sin(lon0), x * np.sin(lon0) + y * np.cos(lon0)
        ra = np.degrees(np.arctan2(y, x)) % 360.0
        dec = np.degrees(np.arcsin(np.clip(z, -1, 1)))
    else:
        ra = rng.uniform(0, 360, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return AlertBatch(np.arange(n), np.array([str(i) for i in range(n)], dtype=object), ra,
                      dec, ALERT_MJD + rng.uniform(0, 0.01, n))


# -- the ligo.skymap crossmatch recipe, per event ----------------------------------------------

def _greedy(uniq: np.ndarray, density: np.ndarray):
    """crossmatch's sort by descending density and cumulative prob/area (deg^2), with ties
    resolved to the end of their group. Returns per-pixel (start29, cl, area) by start."""
    sky = np.rec.fromarrays((uniq, density), names=("UNIQ", "PROBDENSITY"))
    sky = np.flipud(np.sort(sky, order="PROBDENSITY"))
    order, ipix = uniq_to_order_ipix(sky["UNIQ"])
    d_a = 4 * np.pi / (12 * 4.0**order)
    prob = np.cumsum(sky["PROBDENSITY"] * d_a)
    area = np.cumsum(d_a) * np.square(180 / np.pi)
    dens = sky["PROBDENSITY"]
    run_end = np.r_[np.flatnonzero(dens[1:] != dens[:-1]), len(dens) - 1]
    last = run_end[np.searchsorted(run_end, np.arange(len(dens)))]
    start = ipix << (2 * (29 - order))
    i = np.argsort(start)
    return start[i], ((ipix + 1) << (2 * (29 - order)))[i], prob[last][i], area[last][i]


def ligo_loop(events, windows, alerts, level, cached=None):
    """Per-event loop. Returns (alert, event, cl, area) arrays, sorted by (event, alert)."""
    out = []
    pix_once = None
    if cached is not None:
        pix_once = hp.ang2pix(2**29, alerts.ra, alerts.dec, nest=True, lonlat=True)
    for e, (event, (tmin, tmax)) in enumerate(zip(events, windows, strict=True)):
        in_time = np.flatnonzero((alerts.mjd_tai >= tmin) & (alerts.mjd_tai <= tmax))
        if cached is None:
            start, end, cl, area = _greedy(event.localization.uniq,
                                           event.localization.probdensity)
            pix = hp.ang2pix(2**29, alerts.ra[in_time], alerts.dec[in_time], nest=True,
                             lonlat=True)
        else:
            start, end, cl, area = cached[e]
            pix = pix_once[in_time]
        j = np.searchsorted(start, pix, side="right") - 1
        hit = (j >= 0) & (pix < end[np.maximum(j, 0)])
        hit &= cl[np.maximum(j, 0)] <= level
        a, j = in_time[hit], j[hit]
        out.append((a, np.full(len(a), e), cl[j], area[j]))
    cat = [np.concatenate(x) for x in zip(*out, strict=True)]
    return cat


# -- timing ------------------------------------------------------------------------------------

def best_ms(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), result


def check_same(ours, peer) -> None:
    key = np.lexsort((ours.alert_index, ours.event_index))
    a, e = ours.alert_index[key], ours.event_index[key]
    pa, pe, pcl, parea = peer
    pkey = np.lexsort((pa, pe))
    if not (np.array_equal(a, pa[pkey]) and np.array_equal(e, pe[pkey])):
        raise AssertionError(f"different matches: mmcross {len(a)}, peer {len(pa)}")
    np.testing.assert_allclose(ours.credible_level[key], pcl[pkey], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.searched_area[key], parea[pkey], rtol=1e-12)


def cold_start() -> tuple[float, float]:
    """Seconds for import + first match in a fresh process: empty numba cache, then warm."""
    code = textwrap.dedent("""
        import time
        t = time.perf_counter()
        import numpy as np
        from astropy.time import Time
        from mmcross.matchers import Matcher
        from mmcross.model.alert import AlertBatch
        from mmcross.model.config import Config
        from mmcross.model.event import Event, EventKind
        from mmcross.model.localization import Localization
        loc = shapes.circle(10.0, 10.0, 1.0, tolerance=0.05)
        m = Matcher(Config.load())
        m.set_events([Event("e", EventKind.GRB, "x", Time(60000.0, format="mjd"), loc)])
        m.match(AlertBatch(np.arange(1), np.array(["a"], dtype=object), np.array([10.0]),
                           np.array([10.0]), np.array([60000.5])))
        print(time.perf_counter() - t)
    """)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                     capture_output=True, text=True).stdout.split()[-1])
                for _ in range(2)]
    return runs[0], runs[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=40000)
    parser.add_argument("--events", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--circle-tolerance", type=float, default=0.03,
                        help="credible-level tolerance of rasterised circles (default 0.03)")
    parser.add_argument("--cell-order", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fields", type=int, default=0,
                        help="put the alerts in this many 9.6 deg^2 Rubin-like fields "
                             "(default 0: uniform on the sky)")
    parser.add_argument("--no-cold-start", action="store_true")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    config = Config.load()
    level = config.credible_level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = [Localization.from_fits(SHARED / p) for p in GW_MAPS]
    all_events = make_events(max(args.events), base, args.circle_tolerance, rng)
    alerts = make_alerts(args.alerts, rng, args.fields)
    layout = f"in {args.fields} fields of 9.6 deg2" if args.fields else "uniform on the sky"
    print(f"{args.alerts} alerts ({layout}), credible level {level}, "
          f"cell order {args.cell_order}, circles at tolerance {args.circle_tolerance}, "
          f"median of {args.repeat}\n")
    print("| events | GW maps | circles | packed pixels | packed MB | matches "
          "| mmcross ms | ligo loop ms | ratio | ligo loop cached ms | ratio "
          "| Match objects ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.events:
        events = all_events[:n]
        matcher = Matcher(config, cell_order=args.cell_order)
        t = time.perf_counter()
        matcher.set_events(events)
        matcher.match_arrays(alerts.take(np.arange(1)))  # build the packed sky
        build_s = time.perf_counter() - t
        ours_ms, ours = best_ms(lambda m=matcher: m.match_arrays(alerts), args.repeat)
        windows = []
        for ev in events:
            w = config.time_window(ev.kind)
            windows.append((ev.trigger_mjd_tai + w.before, ev.trigger_mjd_tai + w.after))
        peer_ms, peer = best_ms(lambda ev=events, w=windows: ligo_loop(ev, w, alerts, level),
                                max(1, min(args.repeat, 3)))
        check_same(ours, peer)
        cached = [_greedy(ev.localization.uniq, ev.localization.probdensity) for ev in events]
        cached_ms, peer2 = best_ms(
            lambda ev=events, w=windows, c=cached: ligo_loop(ev, w, alerts, level, c),
            args.repeat)
        check_same(ours, peer2)
        objects_ms, _ = best_ms(lambda m=matcher: m.match(alerts), 1)
        sky = matcher._ensure_sky()
        n_gw = sum(ev.kind == EventKind.GW for ev in events)
        print(f"| {n} | {n_gw} | {n - n_gw} | {sky.n_pixels} | {sky.nbytes / 1e6:.0f} "
              f"| {len(ours)} | {ours_ms:.2f} | {peer_ms:.1f} | {peer_ms / ours_ms:.0f}x "
              f"| {cached_ms:.1f} | {cached_ms / ours_ms:.0f}x | {objects_ms:.0f} |",
              flush=True)
        print(f"<!-- {n} events: packing + index build {build_s:.2f} s -->", flush=True)
    ang2pix_ms, _ = best_ms(
        lambda: hp.ang2pix(2**29, alerts.ra, alerts.dec, nest=True, lonlat=True), args.repeat)
    print(f"\nof which healpy ang2pix (order 29) of the {args.alerts} alerts: "
          f"{ang2pix_ms:.2f} ms (best of {args.repeat})")
    if not args.no_cold_start:
        cold, warm = cold_start()
        print(f"fresh process, import + first match: {cold:.2f} s with an empty numba cache, "
              f"{warm:.2f} s with the cache filled (cache=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

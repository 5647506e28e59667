#!/usr/bin/env python
"""Benchmark: one batch of optical alerts against 1, 100, 1000 live localizations.

Events: 5 % real LVK sky maps (MS181101ab, S230518h, GW190425 from ../shared/data, placed
at new sky positions by HEALPix face relabelling: exact 90-degree azimuthal rotations or
permutations of the 12 base pixels with in-face bit swaps/flips, which keep a valid
multi-order map with the same pixels and probabilities) and 95 % analytic regions at the
default accuracy (closed form): Fisher circles of radius 0.01-15 deg (log-uniform),
ellipses (semi-major 0.05-10 deg, axis ratio 0.2-1) and IceCube-style boxes (errors
0.2-5 deg). Alerts are uniform on the sky, all inside the events' time windows.

``mmcross``: ``Matcher.match`` warm (kernels compiled): the kernel and the columnar report
batch the engine hands to its sinks (``MatchBatch``: every report field, event fields and
alert times dictionary-encoded); ``Matcher.match_arrays`` (kernel and value arrays only)
is shown beside it. Times are CPU time of the process (``time.process_time``, one thread), since
the machine is shared. Peer, in the same run: ligo.skymap's ``crossmatch`` called per event
(``ligo.skymap.postprocess.crossmatch``, the 2-D columns), keeping the alerts with
``searched_prob`` <= the level inside the time window; the analytic regions are given to
it rasterised (``--peer-tolerance``, default 0.02: credible levels right to 0.02; finer
would not fit 950 maps in memory). Answers asserted equal: for the LVK maps exactly
(pairs, credible level and searched area to 1e-12); for the regions, the credible levels
to the peer's tolerance and the same pairs away from the boundary (|CL - level| > the
tolerance).

Also measured: time to index one event into a matcher holding the largest live set (a
circle, an LVK map), and, in a separate process holding only the matcher and its events,
the peak resident memory with the largest live set.

Usage: python scripts/bench_matcher.py [--alerts 40000] [--events 1 100 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
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


def make_events(n: int, base: list[Localization], peer_tolerance: float,
                rng: np.random.Generator) -> list[Event]:
    """``n`` events: every 20th an LVK map, the others analytic regions (module docstring);
    the regions rasterise (for the peer only) at ``peer_tolerance``."""
    events = []
    for k in range(n):
        trigger = Time(ALERT_MJD - rng.uniform(0.0, 2.5), format="mjd", scale="tai").utc
        if k % 20 == 0:
            loc = base[(k // 20) % len(base)]
            loc = loc if k < 20 * len(base) else relabel(loc, rng)
            events.append(Event(f"gw:{k}", EventKind.GW, "LVK", trigger, loc, revision=1))
            continue
        ra, dec = rng.uniform(0, 360), math.degrees(math.asin(rng.uniform(-1, 1)))
        kind = rng.random()
        if kind < 0.6:
            radius = math.exp(rng.uniform(math.log(0.01), math.log(15.0)))
            loc = shapes.circle(ra, dec, radius, tolerance=peer_tolerance)
            events.append(Event(f"grb:{k}", EventKind.GRB, "circle", trigger, loc,
                                revision=1))
        elif kind < 0.8:
            a = math.exp(rng.uniform(math.log(0.05), math.log(10.0)))
            loc = shapes.ellipse(ra, dec, a, a * rng.uniform(0.2, 1.0), rng.uniform(0, 180),
                                 0.9, tolerance=peer_tolerance)
            events.append(Event(f"x:{k}", EventKind.XRAY, "ellipse", trigger, loc,
                                revision=1))
        else:
            errs = rng.uniform(0.2, 5.0, 4)
            loc = shapes.box(ra, dec, *errs, 0.9, tolerance=peer_tolerance)
            events.append(Event(f"nu:{k}", EventKind.NEUTRINO, "IceCube", trigger, loc,
                                revision=1))
    return events


def make_alerts(n: int, rng: np.random.Generator) -> AlertBatch:
    """``n`` alerts uniform on the sky, within 0.01 day."""
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return AlertBatch(np.arange(n), np.array([str(i) for i in range(n)], dtype=object), ra,
                      dec, ALERT_MJD + rng.uniform(0, 0.01, n))


# -- the peer: ligo.skymap's crossmatch per event ----------------------------------------------

def ligo_loop(events, windows, alerts, level, cached=None):
    """ligo.skymap ``crossmatch`` per event on its multi-order pixels (analytic regions:
    their rasterisation). Returns (alert, event, credible level, searched area deg^2) arrays.
    ``cached``: the per-event ``(UNIQ, PROBDENSITY)`` tables, made beforehand."""
    from ligo.skymap.postprocess import crossmatch

    coords = SkyCoord(alerts.ra * u.deg, alerts.dec * u.deg)
    out = []
    for e, (event, (tmin, tmax)) in enumerate(zip(events, windows, strict=True)):
        in_time = (alerts.mjd_tai >= tmin) & (alerts.mjd_tai <= tmax)
        table = cached[e] if cached is not None else sky_table(event.localization)
        result = crossmatch(table, coords)
        prob = np.asarray(result.searched_prob)
        hit = np.flatnonzero(in_time & (prob <= level))
        out.append((hit, np.full(len(hit), e), prob[hit],
                    np.asarray(result.searched_area)[hit]))
    return [np.concatenate(x) for x in zip(*out, strict=True)]


def sky_table(loc: Localization) -> Table:
    """The ``UNIQ``/``PROBDENSITY`` table crossmatch reads (pixels of a region: its raster)."""
    pixels = loc.pixels() if loc.region is not None else loc
    return Table({"UNIQ": pixels.uniq, "PROBDENSITY": pixels.probdensity})


# -- timing ------------------------------------------------------------------------------------

def median_ms(fn, repeat: int) -> tuple[float, object]:
    """Median CPU time of this process (ms; the machine is shared, so wall time would count
    other people's work) of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t = time.process_time()
        result = fn()
        times.append((time.process_time() - t) * 1e3)
    return statistics.median(times), result


def check_same(ours, peer, events, level: float, tolerance: float) -> None:
    """Same answers: LVK maps exactly, regions to the peer's rasterisation tolerance."""
    position = {ev.event_id: k for k, ev in enumerate(events)}
    our_event = np.array([position[ours.event_ids[e]] for e in ours.event_index], np.int64)
    pa, pe, pcl, parea = peer
    ours_key = {(int(a), int(e)): k for k, (a, e) in enumerate(
        zip(ours.alert_index, our_event, strict=True))}
    peer_key = {(int(a), int(e)): k for k, (a, e) in enumerate(zip(pa, pe, strict=True))}
    analytic = np.array([ev.localization.region is not None for ev in events])
    for key in set(ours_key) ^ set(peer_key):
        cl = ours.credible_level[ours_key[key]] if key in ours_key else pcl[peer_key[key]]
        if not (analytic[key[1]] and abs(cl - level) <= tolerance):
            raise AssertionError(f"match {key} only in one of mmcross / ligo.skymap (CL {cl})")
    both = sorted(set(ours_key) & set(peer_key))
    ko = np.array([ours_key[k] for k in both], np.int64)
    kp = np.array([peer_key[k] for k in both], np.int64)
    ev = np.array([k[1] for k in both], np.int64)
    exact = ~analytic[ev]
    np.testing.assert_allclose(ours.credible_level[ko][exact], pcl[kp][exact], rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(ours.searched_area[ko][exact], parea[kp][exact], rtol=1e-12)
    np.testing.assert_allclose(ours.credible_level[ko][~exact], pcl[kp][~exact], rtol=0,
                               atol=tolerance)


def index_times(matcher: Matcher, events: list[Event], rng: np.random.Generator,
                repeat: int = 9) -> tuple[float, float, int]:
    """Median ms to upsert (then remove) one circle and one LVK map into ``matcher``, and the
    map's number of tiles."""
    gw = next(ev for ev in events if ev.localization.region is None)
    circles, maps = [], []
    for k in range(repeat):
        c = Event(f"new-circle:{k}", EventKind.GRB, "circle", gw.trigger_time,
                  shapes.circle(rng.uniform(0, 360), rng.uniform(-80, 80),
                                rng.uniform(0.01, 15.0)), revision=1)
        t = time.process_time()
        matcher.upsert(c)
        circles.append((time.process_time() - t) * 1e3)
        m = Event(f"new-map:{k}", EventKind.GW, "LVK", gw.trigger_time,
                  Localization(gw.localization.uniq, gw.localization.probdensity,
                               gw.localization.distmu, gw.localization.distsigma,
                               gw.localization.distnorm), revision=1)
        t = time.process_time()
        matcher.upsert(m)
        maps.append((time.process_time() - t) * 1e3)
        matcher.remove(c.event_id)
        matcher.remove(m.event_id)
    return statistics.median(circles), statistics.median(maps), gw.localization.n_pixels


def peak_memory(n: int, n_alerts: int, seed: int) -> float:
    """Peak resident MB of a fresh process holding a matcher with ``n`` live events and
    matching the batch (no peer, no rasterisation)."""
    out = subprocess.run([sys.executable, __file__, "--memory-only", str(n), "--alerts",
                          str(n_alerts), "--seed", str(seed)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def _memory_only(n: int, n_alerts: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = [Localization.from_fits(SHARED / p) for p in GW_MAPS]
    events = make_events(n, base, 0.02, rng)
    alerts = make_alerts(n_alerts, rng)
    matcher = Matcher(Config.load())
    matcher.set_events(events)
    for _ in range(5):
        matcher.match(alerts)
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork + exec
    status = Path("/proc/self/status").read_text().split("\n")
    if any(line.startswith("VmHWM:") for line in status):
        hwm = next(line for line in status if line.startswith("VmHWM:"))
        print(int(hwm.split()[1]) / 1024)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=40000)
    parser.add_argument("--events", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--peer-tolerance", type=float, default=0.02,
                        help="credible-level accuracy of the regions rasterised for the peer")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory-only", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_only:
        _memory_only(args.memory_only, args.alerts, args.seed)
        return 0

    rng = np.random.default_rng(args.seed)
    config = Config.load()
    level = config.credible_level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = [Localization.from_fits(SHARED / p) for p in GW_MAPS]
    all_events = make_events(max(args.events), base, args.peer_tolerance, rng)
    alerts = make_alerts(args.alerts, rng)
    print(f"{args.alerts} alerts uniform on the sky, credible level {level}, regions in "
          f"closed form (peer: rasterised to {args.peer_tolerance}), median of "
          f"{args.repeat}\n")
    print("| live events | LVK maps | analytic | packed pixels | index MB | matches "
          "| mmcross report batch ms | of which kernel + arrays ms "
          "| ligo.skymap crossmatch loop ms | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    matcher = None
    for n in args.events:
        events = all_events[:n]
        matcher = Matcher(config)
        matcher.set_events(events)
        matcher.match(alerts)  # compile / warm
        batch_ms, batch = median_ms(lambda m=matcher: m.match(alerts), args.repeat)
        ours_ms, ours = median_ms(lambda m=matcher: m.match_arrays(alerts), args.repeat)
        assert len(batch) == len(ours)
        windows = []
        for ev in events:
            w = config.time_window(ev.kind)
            windows.append((ev.trigger_mjd_tai + w.before, ev.trigger_mjd_tai + w.after))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tables = [sky_table(ev.localization) for ev in events]
        for ev in events:
            ev.localization.release_caches()  # the rasters live on in the peer's tables
        peer_ms, peer = median_ms(
            lambda ev=events, w=windows, t=tables: ligo_loop(ev, w, alerts, level, t), 1)
        del tables
        check_same(ours, peer, events, level, args.peer_tolerance)
        n_gw = sum(ev.localization.region is None for ev in events)
        print(f"| {n:,} | {n_gw} | {n - n_gw} | {matcher.sky.n_pixels:,} "
              f"| {matcher.sky.nbytes / 1e6:.1f} | {len(ours):,} | {batch_ms:.2f} "
              f"| {ours_ms:.2f} | {peer_ms:,.0f} | {peer_ms / batch_ms:,.0f}x |", flush=True)
    circle_ms, map_ms, tiles = index_times(matcher, all_events, rng)
    print(f"\nindexing one more event into the {max(args.events)}-event matcher (median of 9):"
          f" circle {circle_ms:.3f} ms, LVK map ({tiles:,} tiles) {map_ms:.1f} ms")
    mb = peak_memory(max(args.events), args.alerts, args.seed)
    print(f"peak resident memory, fresh process with {max(args.events)} live events matching "
          f"the batch: {mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

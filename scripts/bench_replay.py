#!/usr/bin/env python
"""Benchmark: ``mmcross replay`` as a whole process against the pipeline a user would write.

Both sides read the same Avro container file of simulated Rubin alerts (latest
lsst-alert-packet schema, ``--n-previous`` previous sources and three ``--cutout-bytes``
cutouts per packet, about 66 KB a packet by default; codec ``--codec``, written by fastavro)
and the same real notices, and must find the same (event, alert) match set:

* **mmcross**: ``mmcross replay --notices ... --alerts FILE.avro --out DIR`` as a subprocess;
  wall clock from spawn to exit (Python start, imports, numba cache load, notice parsing
  (circles stay in closed form), container walking and prefix decoding, matching, SQLite,
  JSON Lines and VOEvent report writes), and from spawn to the first match report written
  (``first match``). Its own in-process alerts/s is read from the summary line it prints.
* **peer**: this script with ``--peer`` as a subprocess: reads the same file with
  ``fastavro.reader`` (every record decoded fully with the embedded writer schema), and per
  batch of
  ``--chunk`` alerts runs, for each live event, the per-event recipe of ligo.skymap's
  ``crossmatch`` (``bench_matcher.ligo_loop``: sort by density, cumsum, ``ang2pix`` at order
  29, ``searchsorted``, credible-level cut, time window). The peer parses the same notices
  with mmcross's listeners and configuration (a user's pipeline has to build the sky maps
  too), so both sides pay the same for localizations.

Notices: S230518h (LVK initial notice with its multi-order map), two real GRB VOEvents of
2024-01-12 (Fermi GBM ground position, a 16.6 deg 90% Fisher circle once systematics are
added; Swift BAT, 0.05 deg), whose dates are moved back by :data:`DAY_SHIFT` days, and the
IceCube bronze neutrino of 2022-08-08, moved forward by :data:`NEUTRINO_DAY_SHIFT` days
(dates only, same time of day), so that all four events are live during the simulated night,
which starts at the GW trigger. Counterparts are injected inside each localization.

The alert file is generated once and cached in ``--workdir``. ``mmcross --help`` is timed
too (start-up). The main row uses the default
configuration; a variant row (``--variant-tolerance``, 0 to skip) runs both sides with a
looser ``localization.credible_level_tolerance``, which only changes the peer's rasterised
circles (mmcross matches circles in closed form).

Usage: python scripts/bench_replay.py [--n 40000] [--workdir /tmp/mmcross-bench-replay]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("MMCROSS_SHARED_DATA", REPO.parent / "shared" / "data"))
GW_NOTICE = "gcn/json/fink-mm/S230518h-initial.json"
GRB_NOTICES = ("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml",
               "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml")
#: Days the GRB notices are moved back: 2024-01-12 17:37 UTC -> 2023-05-18 17:37 UTC, 0.19 d
#: after the S230518h trigger (no leap second in between, so only dates change).
DAY_SHIFT = 239
NEUTRINO_NOTICE = "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml"
#: Days the neutrino notice is moved forward: 2022-08-08 08:00 UTC -> 2023-05-18 08:00 UTC,
#: 0.21 d before the S230518h trigger (its window, [-0.01, 14] d, covers the whole night).
NEUTRINO_DAY_SHIFT = 283
PEER_RATE_SPEC = 580.0  # alerts/s the issue quotes for the peer on these machines
VISIT_RATE_NEEDED = 40_000 / 60.0  # a 40k-alert visit within 60 s


# -- inputs ------------------------------------------------------------------------------------

def shift_voevent_dates(text: str, days: int) -> str:
    """A VOEvent with ``Who/Date``, every ``ISOTime`` and the ``*_TJD`` params moved by
    ``days`` whole days (times of day unchanged)."""
    from datetime import datetime, timedelta

    def iso(m: re.Match) -> str:
        stamp = m.group(2)
        day = datetime.strptime(stamp[:10], "%Y-%m-%d") + timedelta(days=days)
        return f"{m.group(1)}{day:%Y-%m-%d}{stamp[10:]}{m.group(3)}"

    text = re.sub(r"(<(?:ISOTime|Date)>\s*)(\d{4}-\d\d-\d\d[^<]*)(</)", iso, text)
    return re.sub(r'(<Param\s+name="\w*_TJD"\s+value=")(\d+)(")',
                  lambda m: f"{m.group(1)}{int(m.group(2)) + days}{m.group(3)}", text)


def prepare_notices(workdir: Path) -> list[Path]:
    """The GW notice (as is), the GRB and neutrino notices with shifted dates, in
    ``workdir``."""
    out = workdir / "notices"
    out.mkdir(parents=True, exist_ok=True)
    paths = [SHARED / GW_NOTICE]
    for rel, days in ((GRB_NOTICES[0], -DAY_SHIFT), (GRB_NOTICES[1], -DAY_SHIFT),
                      (NEUTRINO_NOTICE, NEUTRINO_DAY_SHIFT)):
        src = SHARED / rel
        dst = out / f"shifted-{src.name}"
        if src.exists():
            dst.write_text(shift_voevent_dates(src.read_text(), days))
        paths.append(dst)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"missing notice files: {missing} (set MMCROSS_SHARED_DATA)")
    return paths


def build_events(paths: list[Path], config) -> tuple[list, list[float]]:
    """Parse the notices as ``mmcross replay`` does; returns (events, seconds per notice)."""
    from mmcross.listeners import read_notice_file
    from mmcross.model.config import notice_options

    options = notice_options(config)
    events, seconds = [], []
    for p in paths:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            events.append(read_notice_file(p, **options))
        seconds.append(time.perf_counter() - t)
    return events, seconds


@dataclass
class Stream:
    path: Path
    n: int
    nbytes: int
    schema_id: int
    truth: Path


def generate(workdir: Path, events, args: argparse.Namespace) -> Stream:
    """The cached Avro container file of ``args.n`` background alerts plus injected
    counterparts (codec ``args.codec``)."""
    from mmcross.app.simulate import simulate_night
    from mmcross.brokers.rubin_schemas import latest_schema_id

    schema_id = latest_schema_id()
    key = (f"n{args.n}-s{args.seed}-inj{args.inject}-v{args.alerts_per_visit}"
           f"-p{args.n_previous}-c{args.cutout_bytes}-schema{schema_id}")
    path = workdir / f"alerts-{key}-{args.codec}.avro"
    truth = workdir / f"truth-{key}.npz"
    if not (path.exists() and truth.exists()):
        gw = events[0]
        start = gw.trigger_mjd_tai - 0.005
        inject = [(e.localization, args.inject, max(start, e.trigger_mjd_tai),
                   max(start, e.trigger_mjd_tai) + 0.2) for e in events]
        night = simulate_night(args.n, start_mjd_tai=start, duration_days=0.4,
                               rng=np.random.default_rng(args.seed), inject=inject,
                               alerts_per_visit=args.alerts_per_visit,
                               n_previous=args.n_previous, cutout_bytes=args.cutout_bytes)
        t = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        night.write_container(tmp, codec=args.codec)
        tmp.rename(path)
        np.savez(truth, alert_id=night.alert_id, ra=night.ra, dec=night.dec,
                 mjd_tai=night.mjd_tai,
                 injected=np.concatenate(night.injected) if night.injected else [])
        print(f"<!-- generated {len(night)} packets in {time.perf_counter() - t:.0f} s: "
              f"{path} -->", flush=True)
    n = len(np.load(truth)["alert_id"])
    return Stream(path, n, path.stat().st_size, schema_id, truth)


# -- the peer: what a user would write ---------------------------------------------------------

def peer(stream: Path, notices: list[Path], config_path: Path | None, chunk: int,
         out: Path) -> None:
    """Full fastavro decode of every record + the ligo.skymap per-event recipe per batch.

    The notices are parsed into sky maps with mmcross's own listeners and configuration, so
    both sides pay the same for building localizations and the comparison is about what
    differs: alert decoding and matching. Writes ``out`` (JSON): the (event id, alert id)
    pairs and in-process timings (s).
    """
    t_start = time.perf_counter()
    import fastavro

    from mmcross.model.config import Config

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_matcher import ligo_loop

    config = Config.load(config_path)
    parsed, _ = build_events(notices, config)
    ids = np.array([e.event_id for e in parsed])
    windows = [config.time_window(e.kind) for e in parsed]
    tmin = np.array([e.trigger_mjd_tai + w.before for e, w in zip(parsed, windows, strict=True)])
    tmax = np.array([e.trigger_mjd_tai + w.after for e, w in zip(parsed, windows, strict=True)])
    level = config.credible_level
    events = [SimpleNamespace(localization=e.localization) for e in parsed]
    pairs: list[tuple[str, int, float]] = []
    rows: list[tuple[int, float, float, float]] = []
    t_ready = time.perf_counter()
    t_match = 0.0

    def flush() -> None:
        nonlocal t_match
        t = time.perf_counter()
        alert_id = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        cols = np.array([r[1:] for r in rows], np.float64)
        alerts = SimpleNamespace(ra=cols[:, 0], dec=cols[:, 1], mjd_tai=cols[:, 2])
        live = np.flatnonzero((tmin <= cols[:, 2].max()) & (tmax >= cols[:, 2].min()))
        if len(live):
            a, e, cl, _ = ligo_loop([events[k] for k in live],
                                    [(tmin[k], tmax[k]) for k in live], alerts, level)
            pairs.extend(zip(ids[live[e]].tolist(), alert_id[a].tolist(), cl.tolist(),
                             strict=True))
        rows.clear()
        t_match += time.perf_counter() - t

    n = 0
    with open(stream, "rb") as f:
        for record in fastavro.reader(f):
            ds = record["diaSource"]
            rows.append((ds["diaSourceId"], ds["ra"], ds["dec"], ds["midpointMjdTai"]))
            n += 1
            if len(rows) >= chunk:
                flush()
    if rows:
        flush()
    t_end = time.perf_counter()
    out.write_text(json.dumps({"pairs": pairs, "alerts": n, "startup": t_ready - t_start,
                               "loop": t_end - t_ready, "match": t_match}))


# -- runs --------------------------------------------------------------------------------------

SUMMARY_RE = re.compile(r"alerts: (\d+) \((\d+) unreadable\), ([\d,.]+) alerts/s over "
                        r"([\d.]+) s")


def mmcross_command(notices: list[Path], stream: Path, out: Path, chunk: int,
                    config: Path | None) -> list[str]:
    exe = shutil.which("mmcross")
    cmd = [exe] if exe else [sys.executable, "-m", "mmcross"]
    cmd += ["replay", "--notices", *map(str, notices), "--alerts", str(stream),
            "--out", str(out), "--chunk", str(chunk)]
    return cmd + (["--config", str(config)] if config else [])


def run_mmcross(cmd: list[str], out: Path) -> dict:
    """One timed replay in a fresh output folder; its summary, live match set, and the time
    from spawn to the first match report in ``matches.jsonl`` (polled every 2 ms)."""
    shutil.rmtree(out, ignore_errors=True)
    reports = out / "matches.jsonl"
    first = float("nan")
    logs = out.with_name(out.name + ".stdout"), out.with_name(out.name + ".stderr")
    with open(logs[0], "w") as so, open(logs[1], "w") as se:  # files: a full pipe would block
        t = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=REPO)
        while child.poll() is None:
            with contextlib.suppress(OSError):
                if first != first and reports.stat().st_size > 0:  # still NaN: not seen yet
                    first = time.perf_counter() - t
            time.sleep(0.002)
        wall = time.perf_counter() - t
    proc = SimpleNamespace(returncode=child.returncode, stdout=logs[0].read_text(),
                           stderr=logs[1].read_text())
    if proc.returncode:
        raise SystemExit(f"mmcross replay failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = SUMMARY_RE.search(proc.stdout)
    if m is None:
        raise SystemExit(f"no summary line in mmcross output:\n{proc.stdout}")
    stamps = {}
    for key, pattern in (("restored", r"INFO mmcross\.app\.engine: restored "),
                         ("parsed", r"INFO mmcross\.app\.replay: replay: \d+ notices parsed")):
        found = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) " + pattern,
                          proc.stderr, re.M)
        if found:
            stamps[key] = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
    notices_s = ((stamps["parsed"] - stamps["restored"]).total_seconds()
                 if len(stamps) == 2 else float("nan"))
    live: dict[tuple[str, int], float] = {}
    for line in (out / "matches.jsonl").read_text().splitlines():
        rec = json.loads(line)
        key = (rec["event_id"], int(rec["alert_id"]))
        if rec["retracted"]:
            live.pop(key, None)
        else:
            live[key] = rec["credible_level"]
    return {"wall": wall, "alerts": int(m.group(1)), "unreadable": int(m.group(2)),
            "rate": float(m.group(3).replace(",", "")), "seconds": float(m.group(4)),
            "notices_s": notices_s, "matches": live, "first_match": first}


def peer_command(stream: Path, notices: list[Path], config: Path | None, chunk: int,
                 out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--peer", "--stream", str(stream),
            "--peer-notices", *map(str, notices), "--chunk", str(chunk), "--peer-out", str(out),
            *(["--peer-config", str(config)] if config else [])]


def run_peer(cmd: list[str], out: Path) -> dict:
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"peer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["wall"] = wall
    res["matches"] = {(e, int(a)): cl for e, a, cl in res.pop("pairs")}
    return res


def check_truth(stream: Stream, events, config, matches: set) -> tuple[int, int]:
    """(injected counterparts inside the credible region and time window, of which found)."""
    truth = np.load(stream.truth)
    inj = np.isin(truth["alert_id"], truth["injected"])
    expected = set()
    for e in events:
        w = config.time_window(e.kind)
        t = truth["mjd_tai"][inj]
        cl = e.localization.credible_level_at(truth["ra"][inj], truth["dec"][inj])
        ok = (cl <= config.credible_level) & (t >= e.trigger_mjd_tai + w.before) & (
            t <= e.trigger_mjd_tai + w.after)
        expected |= {(e.event_id, int(a)) for a in truth["alert_id"][inj][ok]}
    return len(expected), len(expected & matches)


def bench_row(label: str, config_path: Path | None, notices: list[Path], stream: Stream,
              args: argparse.Namespace, workdir: Path) -> dict:
    from mmcross.model.config import Config

    config = Config.load(config_path)
    events, build = build_events(notices, config)  # warm-up (numba) ...
    events, build = build_events(notices, config)  # ... then timed
    slug = re.sub(r"[^\w.]+", "-", label)
    mm_cmd = mmcross_command(notices, stream.path, workdir / f"out-{slug}", args.chunk,
                             config_path)
    peer_out = workdir / f"peer-{slug}.json"
    p_cmd = peer_command(stream.path, notices, config_path, args.chunk, peer_out)
    runs = [run_mmcross(mm_cmd, workdir / f"out-{slug}") for _ in range(args.repeat + 1)]
    print(f"<!-- {label}: mmcross wall s per run (first = warm-up, not counted): "
          + ", ".join(f"{r['wall']:.2f}" for r in runs) + " -->", flush=True)
    peer_res = run_peer(p_cmd, peer_out)
    ours = runs[1:] if len(runs) > 1 else runs
    analytic = {e.event_id for e in events if e.localization.region is not None}
    tolerance = config.get("localization.credible_level_tolerance")
    boundary = 0
    for r in ours:
        # analytic regions are matched in closed form by mmcross and on their raster by the
        # peer: they may disagree only within the raster's credible-level tolerance
        for key in set(r["matches"]) ^ set(peer_res["matches"]):
            cl = r["matches"].get(key, peer_res["matches"].get(key))
            if key[0] not in analytic or abs(cl - config.credible_level) > tolerance:
                raise AssertionError(f"{label}: match {key} (CL {cl}) found by only one of "
                                     f"mmcross ({len(r['matches'])}) and the peer "
                                     f"({len(peer_res['matches'])})")
            boundary += 1
        if r["alerts"] != stream.n or r["unreadable"]:
            raise AssertionError(f"{label}: mmcross read {r['alerts']} alerts "
                                 f"({r['unreadable']} unreadable) of {stream.n}")
    if peer_res["alerts"] != stream.n:
        raise AssertionError(f"{label}: peer read {peer_res['alerts']} of {stream.n}")
    expected, found = check_truth(stream, events, config, set(peer_res["matches"]))
    if found != expected:
        raise AssertionError(f"{label}: {found} of {expected} injected counterparts found")
    wall = statistics.median(r["wall"] for r in ours)
    return {
        "label": label, "level": config.credible_level,
        "tolerance": config.get("localization.credible_level_tolerance"),
        "pixels": [len(e.localization.uniq) for e in events], "build": build,
        "matches": len(peer_res["matches"]), "injected": (expected, found),
        "boundary": boundary // len(ours),
        "mm_wall": wall, "mm_rate_inproc": statistics.median(r["rate"] for r in ours),
        "mm_seconds": statistics.median(r["seconds"] for r in ours),
        "mm_notices": statistics.median(r["notices_s"] for r in ours),
        "mm_first": statistics.median(r["first_match"] for r in ours),
        "peer": peer_res, "mm_cmd": mm_cmd, "peer_cmd": p_cmd,
    }


# -- report ------------------------------------------------------------------------------------

def machine_facts() -> str:
    cpu = "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    import fastavro
    import healpy
    import numba

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (f"nproc {usable} ({os.cpu_count()} CPUs, {cpu}), Python {platform.python_version()}, "
            f"numpy {np.__version__}, fastavro {fastavro.__version__}, healpy "
            f"{healpy.__version__}, numba {numba.__version__}; load average "
            + " ".join(f"{x:.2f}" for x in os.getloadavg()))


def help_seconds(repeat: int = 5) -> float:
    """Median wall time of ``mmcross --help`` in a fresh process (s)."""
    exe = shutil.which("mmcross")
    cmd = [exe] if exe else [sys.executable, "-m", "mmcross"]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([*cmd, "--help"], capture_output=True, check=True, cwd=REPO)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def report(rows: list[dict], stream: Stream, args: argparse.Namespace, notices: list[Path],
           gen_cmd: str) -> None:
    from mmcross.brokers.rubin_schemas import get_schema

    n = stream.n
    kb = stream.nbytes / n / 1e3
    print(f"\n{n} alerts ({args.n} background + {n - args.n} injected), Rubin schema "
          f"v{get_schema(stream.schema_id).version}, {kb:.1f} KB a packet ({args.n_previous} "
          f"previous sources, 3 cutouts of {args.cutout_bytes / 1e3:.0f} KB), "
          f"{stream.nbytes / 1e9:.2f} GB Avro container file ({args.codec} codec); "
          f"batches of {args.chunk}; "
          f"median of {max(1, args.repeat)} mmcross runs, 1 peer run\n")
    print("| config | circle tolerance | pixels (GW, GBM, BAT, IceCube) | matches "
          "| mmcross wall s | mmcross first match s | mmcross alerts/s (wall) "
          "| mmcross alerts/s (in-process) | peer wall s | peer alerts/s (wall) "
          "| peer alerts/s (in-process loop) | ratio (wall) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p = r["peer"]
        mm, pr = n / r["mm_wall"], n / p["wall"]
        print(f"| {r['label']} | {r['tolerance']:g} | {', '.join(map(str, r['pixels']))} "
              f"| {r['matches']} | {r['mm_wall']:.1f} | {r['mm_first']:.1f} | {mm:,.0f} "
              f"| {r['mm_rate_inproc']:,.0f} | {p['wall']:.1f} | {pr:,.0f} "
              f"| {n / p['loop']:,.0f} | **{mm / pr:.1f}x** |")
    print()
    for r in rows:
        p = r["peer"]
        alerts_s = r["mm_seconds"] - r["mm_notices"]
        print(f"- {r['label']}: mmcross replay in-process {r['mm_seconds']:.1f} s of "
              f"{r['mm_wall']:.1f} s wall, of which notice parsing {r['mm_notices']:.1f} s "
              f"(from its log), so {alerts_s:.1f} s for the alerts ({n / alerts_s:,.0f} "
              "alerts/s); the notices parsed in this process: "
              + ", ".join(f"{s:.2f} s" for s in r["build"])
              + " (GW, Fermi GBM circle, Swift BAT circle, IceCube circle). "
              f"Peer: start-up {p['startup']:.1f} s, decode+match loop {p['loop']:.1f} s of "
              f"which the ligo recipe {p['match']:.1f} s. Injected counterparts inside the "
              f"{r['level']:.0%} regions and windows: {r['injected'][0]}, found by both: "
              f"{r['injected'][1]}. Matches found by one side only (analytic circles, "
              f"within the raster tolerance of the 90 % edge): {r['boundary']}.")
    print(f"- spec: peer ~{PEER_RATE_SPEC:.0f} alerts/s; a 40k-alert visit in 60 s needs "
          f"{VISIT_RATE_NEEDED:.0f}/s; target >= 20x the peer.")
    print(f"- start-up: `mmcross --help` {help_seconds():.2f} s wall (median of 5)")
    print(f"- machine: {machine_facts()}")
    print("\nReproduce:\n")
    print(f"    {gen_cmd}")
    for r in rows:
        print(f"    {shlex.join(r['mm_cmd'])}")
        print(f"    {shlex.join(r['peer_cmd'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40_000, help="background alerts")
    parser.add_argument("--inject", type=int, default=20, help="counterparts per notice")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alerts-per-visit", type=int, default=2_000)
    parser.add_argument("--n-previous", type=int, default=30)
    parser.add_argument("--cutout-bytes", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=20_000, help="alerts per batch (both)")
    parser.add_argument("--codec", default="null", choices=("null", "deflate", "snappy"),
                        help="codec of the Avro container file")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed mmcross runs after one warm-up run (0: the warm-up only)")
    parser.add_argument("--variant-tolerance", type=float, default=0.03,
                        help="credible_level_tolerance of the variant row (0: no variant)")
    parser.add_argument("--workdir", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "mmcross-bench-replay"))
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--peer-notices", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--peer-config", help=argparse.SUPPRESS)
    parser.add_argument("--peer-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        peer(Path(args.stream), [Path(p) for p in args.peer_notices],
             Path(args.peer_config) if args.peer_config else None, args.chunk,
             Path(args.peer_out))
        return 0

    from mmcross.model.config import Config

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    notices = prepare_notices(workdir)
    events, _ = build_events(notices, Config.load())
    stream = generate(workdir, events, args)
    rows = [bench_row("default", None, notices, stream, args, workdir)]
    if args.variant_tolerance > 0:
        toml = workdir / f"tolerance-{args.variant_tolerance:g}.toml"
        toml.write_text(f"[localization]\ncredible_level_tolerance = "
                        f"{args.variant_tolerance!r}\n")
        rows.append(bench_row(f"tolerance {args.variant_tolerance:g}", toml, notices, stream,
                              args, workdir))
    gen_cmd = shlex.join([sys.executable, "scripts/bench_replay.py", *(
        argv if argv is not None else sys.argv[1:])])
    report(rows, stream, args, notices, gen_cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())

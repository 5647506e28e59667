#!/usr/bin/env python
"""Benchmark: ``mmcross listen`` on a real Kafka broker against a bare confluent-kafka consumer.

* **Throughput.** One topic (``--partitions``) is filled with ``--n`` realistic simulated Rubin
  packets (latest lsst-alert-packet schema, ``--n-previous`` previous sources, three
  ``--cutout-bytes`` cutouts: about 70 KB each), ~1% of them counterparts injected in the
  localization of a real GW notice (S230518h, live in the service). Then, in the same run:
  a bare ``confluent_kafka.Consumer`` reads the whole topic (``consume`` in batches, nothing
  decoded), before and after ``mmcross listen`` (a subprocess: decode, match, store the alert
  history, send reports and commit them with the offsets in one Kafka transaction per batch)
  reads it with a fresh group. The service's rate
  is measured on its metrics endpoint from its first alert to its last (start-up excluded).
* **Latency.** A listener already caught up on an empty topic gets a burst of ``--burst``
  packets produced as fast as the producer goes, ``--burst-inject`` of them counterparts. For
  each counterpart: time from the ``produce()`` call of its alert to the arrival of its match
  report at a ``read_committed`` consumer of the report topic, i.e. once its transaction
  committed (p50, p99, max).
* **Latency with notices landing mid-burst** (on by default; ``--no-notices-mid-burst`` skips
  it). A fresh listener, with no live event and notice topics of its own, gets a burst of
  ``--burst`` packets, counterparts injected in the localizations of eleven events:
  ``--burst-inject`` in S230518h's, ``--notice-inject`` in each of the ten others'. Once half of
  the burst has been produced, the driver publishes eleven real notices (zstd-compressed, as
  GCN does) onto the listener's per-run GCN topics: S230518h (LVK initial notice with its
  multi-order sky map) and the ten GRB/neutrino VOEvents of :data:`MID_BURST_NOTICES` (four
  Fermi GBM, two Swift BAT, one INTEGRAL, three IceCube: ten distinct real triggers). Those
  ten are real files, but from 2018-2024, so their dates (``Who/Date``, every ``ISOTime``,
  ``*_TJD``) are moved by whole days in a copy held in memory, each to the latest date at
  least :data:`NOTICE_LEAD_DAYS` before the GW trigger (outside every GW coincidence window,
  inside its own time window for the whole burst); the output names the shift of each. The
  listener parses the map, retro-matches the alerts of the first half already in its history
  and matches the second half on arrival. For each committed report (``read_committed``
  reader): time from the later of the ``produce()`` of its alert and of its event's notice to
  its arrival (p50, p99, max), overall and split into alerts produced after the notices
  (matched on arrival) and before them (retro-matched); with counts of reports, of
  counterparts reported (against those injected inside each 90% region), of notices applied
  and of dead letters. The GBM circles are large (860-4,950 deg2 at 90%), so whole visits of
  background alerts fall in them: most reports of this row are theirs.

The broker is ``--bootstrap`` or one started here with ``scripts/kafka_local.py`` (stopped at
the end). Prints Markdown tables.

Usage: python scripts/bench_listen.py [--n 10000] [--burst 40000] [--bootstrap HOST:PORT]
                                     [--notice-inject 10] [--no-notices-mid-burst]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmcross.app.metrics import scrape  # noqa: E402
from mmcross.app.simulate import simulate_night  # noqa: E402
from mmcross.brokers.alert_decoding import decode_wire_row  # noqa: E402
from mmcross.brokers.reports import match_from_avro  # noqa: E402
from mmcross.listeners import parse_notice, read_notice_file  # noqa: E402
from mmcross.model.config import Config, notice_options  # noqa: E402
from mmcross.model.event import Event  # noqa: E402

SHARED = Path(os.environ.get("MMCROSS_SHARED_DATA", REPO.parent / "shared" / "data"))
GW_NOTICE = SHARED / "gcn/json/fink-mm/S230518h-initial.json"
#: Days of simulated alert times in a night, from the GW trigger on.
NIGHT_DAYS = 0.3
#: The GRB and neutrino notices published mid-burst with S230518h: ten real VOEvents of ten
#: distinct triggers, each with the GCN Classic topic it comes on (a per-run suffix is added).
MID_BURST_NOTICES = (
    ("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml",
     "gcn.classic.voevent.FERMI_GBM_GND_POS"),
    ("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_727009399-724.xml",
     "gcn.classic.voevent.FERMI_GBM_GND_POS"),
    ("gcn/voevent/fink-mm/Fermi_GBM_Gnd_Pos_681547990.xml",
     "gcn.classic.voevent.FERMI_GBM_GND_POS"),
    ("gcn/voevent/fink-mm/Fermi_GBM_Fin_Pos_683571622.xml",
     "gcn.classic.voevent.FERMI_GBM_FIN_POS"),
    ("gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml",
     "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"),
    ("gcn/voevent/skyportal/SWIFT_BAT_GRB_Pos_1125809-092.xml",
     "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"),
    ("gcn/voevent/fink-mm-kafka-2024-01/INTEGRAL_Wakeup_Pos_010472-924.xml",
     "gcn.classic.voevent.INTEGRAL_WAKEUP"),
    ("gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml",
     "gcn.classic.voevent.ICECUBE_ASTROTRACK_BRONZE"),
    ("gcn/voevent/skyportal/AMON_ICECUBE_BRONZE_136973_28816141.xml",
     "gcn.classic.voevent.ICECUBE_ASTROTRACK_BRONZE"),
    ("gcn/voevent/fink-mm/IceCube_Cascade_136889_25590129.xml",
     "gcn.classic.voevent.ICECUBE_CASCADE"),
)
#: Each GRB/neutrino trigger is moved to the latest date at least this many days (1 h) before
#: the GW trigger: 1 to 25 h before it, outside every ``[coincidence.windows]`` window (at most
#: 600 s) and, with the night's NIGHT_DAYS, inside the 3-day GRB and 14-day neutrino windows.
NOTICE_LEAD_DAYS = 1.0 / 24.0


def _script(name: str):
    """Another script of ``scripts/`` as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _kafka_local():
    return _script("kafka_local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                   for n in names])
    for f in futures.values():
        f.result(timeout=30)


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                     "enable.idempotence": True, "queue.buffering.max.kbytes": 1 << 20,
                     "message.max.bytes": 16 << 20})


def produce_all(p: Producer, topic: str, messages, on_send=None) -> int:
    """Produce every message; raises if the broker refused any."""
    failed: list = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failed.append(err)

    n = 0
    for i, value in enumerate(messages):
        while True:
            try:
                if on_send is not None:
                    on_send(value)
                p.produce(topic, value=value, key=str(i).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        n += 1
    if p.flush(120) != 0 or failed:
        raise RuntimeError(f"{topic}: {len(failed)} messages refused ({failed[:1]}) or left "
                           "unacknowledged")
    return n


def night(n: int, event, inject: int, args: argparse.Namespace, first_id: int, seed: int):
    t0 = event.trigger_mjd_tai
    return simulate_night(n, start_mjd_tai=t0, duration_days=NIGHT_DAYS,
                          rng=np.random.default_rng(seed),
                          inject=[(event.localization, inject, t0, t0 + NIGHT_DAYS)],
                          first_id=first_id, n_previous=args.n_previous,
                          cutout_bytes=args.cutout_bytes, alerts_per_visit=2_000)


def bare_consume(bootstrap: str, topic: str, n: int) -> tuple[float, int]:
    """Seconds from the first message to the n-th, and bytes read."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    c.subscribe([topic])
    got, size, t_first, t_end = 0, 0, None, None
    deadline = time.monotonic() + 600
    try:
        while got < n and time.monotonic() < deadline:
            for msg in c.consume(5000, 1.0):
                if msg.error() is not None:
                    continue
                if t_first is None:
                    t_first = time.perf_counter()
                got += 1
                size += len(msg.value())
            t_end = time.perf_counter()
    finally:
        c.close()
    if got < n:
        raise RuntimeError(f"bare consumer read {got} of {n}")
    return t_end - t_first, size


def write_config(path: Path, bootstrap: str, names: dict, args: argparse.Namespace,
                 notice_topics: list[str] | None = None) -> Path:
    """The listen config; notice topics ``[names['gw']]`` unless given (then the coincidence
    topic is ``names['coincidences']`` too, instead of the default shared name)."""
    topics = ", ".join(f'"{t}"' for t in (notice_topics or [names["gw"]]))
    coincidences = (f'coincidence_topic = "{names["coincidences"]}"\n' if notice_topics
                    else "")
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
alert_topics = ["{names['alerts']}"]
group_id = "{names['group']}"
report_topic = "{names['reports']}"
voevent_topic = "{names['voevents']}"
dead_letter_topic = "{names['dead']}"
{coincidences}[kafka.gcn]
topics = [{topics}]
[service]
batch_size = {args.batch_size}
poll_timeout = {args.poll_timeout}
log_every = 10.0
""")
    return path


def start_listener(cfg: Path, db: str, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    return subprocess.Popen([sys.executable, "-m", "mmcross", "listen", "--config",
                             str(cfg), "--db", db, "--metrics-port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))  # noqa: SIM115


def metric(url: str, name: str) -> float | None:
    try:
        values = scrape(url, timeout=2.0).get(name)
    except Exception:  # noqa: BLE001 - not up yet
        return None
    return None if values is None else sum(values.values())


def wait_for(cond, what: str, timeout: float = 600.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def read_committed_reports(bootstrap: str, topic: str, group: str, done: threading.Event,
                           seen) -> None:
    """Read ``topic`` (read_committed) until ``done``; ``seen(match, unix time)`` per report
    as it arrives."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                  "isolation.level": "read_committed"})
    c.subscribe([topic])
    while not done.is_set():
        for msg in c.consume(500, 0.05):
            if msg.error() is None:
                seen(match_from_avro(msg.value()), time.time())
    c.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def names_for(tag: str, gw_topic: str) -> dict:
    return {"alerts": f"bench-alerts-{tag}", "reports": f"bench-reports-{tag}",
            "voevents": f"bench-voevents-{tag}", "dead": f"bench-dead-{tag}",
            "group": f"bench-{tag}", "gw": gw_topic}


# -- notices landing mid-burst ---------------------------------------------------------------

@dataclass
class MidBurstNotice:
    """One notice published mid-burst: its per-run topic, bytes and the event they parse to."""

    topic: str
    name: str
    payload: bytes
    event: Event
    days: int  # whole days its dates were moved (0: published as archived)


def mid_burst_notices(gw: Event, config: Config, tag: str) -> list[MidBurstNotice]:
    """S230518h as archived, then the GRB/neutrino notices of :data:`MID_BURST_NOTICES`
    with their dates moved to 1-25 h before the GW trigger; checks that every event stays
    inside its time window for the whole night and that the eleven event ids differ."""
    options = notice_options(config)
    t0 = float(gw.trigger_time.utc.mjd)
    out = [MidBurstNotice(f"igwn.gwalert.bench-{tag}", GW_NOTICE.name, GW_NOTICE.read_bytes(),
                          gw, 0)]
    for rel, base in MID_BURST_NOTICES:
        path = SHARED / rel
        text = path.read_bytes().decode("utf-8")
        topic = f"{base}.bench-{tag}"
        trigger = float(parse_notice(text.encode(), topic=topic, **options).trigger_time.utc.mjd)
        days = math.floor(t0 - NOTICE_LEAD_DAYS - trigger)
        payload = _script("bench_replay").shift_voevent_dates(text, days).encode()
        event = parse_notice(payload, topic=topic, source=f"{path} (dates {days:+d} d)",
                             **options)
        lead = t0 - float(event.trigger_time.utc.mjd)
        after = float(config.get(f"match.time_window.{event.kind}")[1])
        if not NOTICE_LEAD_DAYS - 1e-6 <= lead < NOTICE_LEAD_DAYS + 1 or \
                lead + NIGHT_DAYS > after:
            raise RuntimeError(f"{path.name}: trigger moved to {lead:.3f} d before the GW "
                               f"trigger, not live for the night (window {after} d)")
        out.append(MidBurstNotice(topic, path.name, payload, event, days))
    ids = [n.event.event_id for n in out]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"mid-burst notices of the same event: {ids}")
    return out


def notice_consumer_assigned(bootstrap: str, group_prefix: str, topic: str) -> bool:
    """Whether the listener's notice consumer (group ``<group_id>.<instance>.notices``) has
    been assigned ``topic``; False while the broker cannot say."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        groups = admin.list_consumer_groups(request_timeout=5).result()
        ids = [g.group_id for g in groups.valid
               if g.group_id.startswith(group_prefix) and g.group_id.endswith(".notices")]
        if not ids:
            return False
        for future in admin.describe_consumer_groups(ids, request_timeout=5).values():
            for member in future.result().members:
                if member.assignment is not None and any(
                        tp.topic == topic for tp in member.assignment.topic_partitions):
                    return True
    except Exception:  # noqa: BLE001 - coordinator loading, group not there yet
        return False
    return False


def stats_ms(values) -> str:
    """``| n | p50 | p99 | max |`` cells of latencies in seconds."""
    lat = np.asarray(values, float)
    if not len(lat):
        return "| 0 | - | - | - |"
    p50, p99 = np.percentile(lat, [50, 99])
    return (f"| {len(lat):,} | {p50 * 1000:,.0f} ms | {p99 * 1000:,.0f} ms | "
            f"{lat.max() * 1000:,.0f} ms |")


def burst_with_notices(args: argparse.Namespace, bootstrap: str, work: Path, gw: Event,
                       config: Config) -> dict:
    """The burst with the LVK map and the ten GRB/neutrino notices published at its middle
    (see the module docstring); returns what the report prints."""
    tag = uuid.uuid4().hex[:8]
    notices = mid_burst_notices(gw, config, tag)
    notice_topics = list(dict.fromkeys(n.topic for n in notices))
    names = names_for(tag, notices[0].topic)
    names["coincidences"] = f"bench-coincidences-{tag}"
    create_topics(bootstrap, [names["alerts"]], args.partitions)
    create_topics(bootstrap, [names["reports"], names["voevents"], names["dead"],
                              names["coincidences"], *notice_topics], 1)
    t0 = gw.trigger_mjd_tai
    inject = [(gw.localization, args.burst_inject, t0, t0 + NIGHT_DAYS)] + [
        (n.event.localization, args.notice_inject, t0, t0 + NIGHT_DAYS) for n in notices[1:]]
    burst = simulate_night(args.burst, start_mjd_tai=t0, duration_days=NIGHT_DAYS,
                           rng=np.random.default_rng(3), inject=inject, first_id=3 * 10**9,
                           n_previous=args.n_previous, cutout_bytes=args.cutout_bytes,
                           alerts_per_visit=2_000)
    injected, inside = {}, {}  # event id -> counterparts injected / inside its 90% region
    for n, ids in zip(notices, burst.injected, strict=True):
        rows = np.flatnonzero(np.isin(burst.alert_id, ids))
        level = n.event.localization.credible_level_at(burst.ra[rows], burst.dec[rows])
        injected[n.event.event_id] = set(ids.tolist())
        inside[n.event.event_id] = set(burst.alert_id[rows[level <= config.credible_level]]
                                       .tolist())
    middle = int(burst.alert_id[len(burst) // 2])
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_listener(write_config(work / f"{tag}.toml", bootstrap, names, args,
                                       notice_topics),
                          f"sqlite:///{work / f'{tag}.sqlite'}", port, work / "listen.log")
    sent: dict[int, float] = {}
    published: dict[str, float] = {}
    arrived: dict[tuple[str, int], float] = {}
    refused: list = []
    done = threading.Event()
    notice_producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                "acks": "all", "compression.type": "zstd",
                                "message.max.bytes": 16 << 20})

    def read_reports() -> None:
        def seen(m, now: float) -> None:
            arrived.setdefault((m.event_id, m.alert_id), now)

        read_committed_reports(bootstrap, names["reports"], f"lat-{tag}", done, seen)

    def on_delivery(err, _msg) -> None:
        if err is not None:
            refused.append(err)

    def on_send(value: bytes) -> None:
        a = decode_wire_row(value, keep_packet=False).alert_id
        if a == middle and not published:
            for n in notices:
                published[n.event.event_id] = time.time()
                notice_producer.produce(n.topic, value=n.payload, on_delivery=on_delivery)
            notice_producer.poll(0)
        sent[a] = time.time()

    reader = threading.Thread(target=read_reports, daemon=True)
    try:
        wait_for(lambda: metric(url, "mmcross_live_events") == 0, "listener ready")
        wait_for(lambda: metric(url, "mmcross_consumer_lag") == 0, "partitions assigned")
        wait_for(lambda: notice_consumer_assigned(bootstrap, f"{names['group']}.",
                                                  notices[0].topic),
                 "notice partitions assigned", timeout=120, every=0.5)
        reader.start()
        time.sleep(1.0)
        t = time.perf_counter()
        produce_all(producer(bootstrap), names["alerts"], burst.messages(), on_send)
        burst_s = time.perf_counter() - t
        if notice_producer.flush(60) != 0 or refused:
            raise RuntimeError(f"notices refused ({refused[:1]}) or left unacknowledged")
        wait_for(lambda: (metric(url, "mmcross_notices_total") or 0) >= len(notices)
                 and metric(url, "mmcross_alerts_total") == len(burst)
                 and len(arrived) >= (metric(url, "mmcross_matches_total") or 0),
                 "burst reports", timeout=600)
        scraped = scrape(url, timeout=5.0)
    finally:
        done.set()
        stop(proc)
        reader.join(10)
    after, before, other = [], [], 0
    for (event_id, a), when in list(arrived.items()):
        if event_id not in published or a not in sent:
            other += 1  # e.g. a coincidence's combined map (none expected)
            continue
        start = max(sent[a], published[event_id])
        (after if sent[a] >= published[event_id] else before).append(when - start)
    lvk = notices[0].event.event_id
    reports = {e: sum(1 for (ev, _a) in arrived if ev == e) for e in published}
    found = {e: sum(1 for a in ids if (e, a) in arrived) for e, ids in injected.items()}
    expected = {e: len(ids) for e, ids in inside.items()}
    return {
        "n": len(burst), "burst_s": burst_s, "notices": notices, "other": other,
        "all": after + before, "after": after, "before": before,
        "reports_lvk": reports[lvk], "reports_ext": sum(reports.values()) - reports[lvk],
        "found_lvk": found[lvk], "inj_lvk": len(injected[lvk]), "in_lvk": expected[lvk],
        "found_ext": sum(found.values()) - found[lvk],
        "inj_ext": sum(map(len, injected.values())) - len(injected[lvk]),
        "in_ext": sum(expected.values()) - expected[lvk],
        "outcomes": {dict(labels).get("outcome", "?"): v for labels, v in
                     scraped.get("mmcross_notices_total", {}).items()},
        "dead": sum(scraped.get("mmcross_dead_letters_total", {}).values()),
        "matches": sum(scraped.get("mmcross_matches_total", {}).values()),
    }


def print_notices_row(r: dict) -> None:
    ext = r["notices"][1:]
    print()
    print(f"Latency with notices mid-burst: a burst of {r['n']} packets produced in "
          f"{r['burst_s']:.1f} s ({r['n'] / r['burst_s']:,.0f}/s); after half of it, "
          f"{len(r['notices'])} notices published: {r['notices'][0].event.event_id} (LVK, "
          f"multi-order sky map) and {len(ext)} GRB/neutrino notices, {len(ext)} distinct real "
          "files, none reused, dates moved by whole days in memory: "
          + ", ".join(f"{n.event.event_id} ({n.days:+d} d)" for n in ext))
    print()
    print(f"Committed reports: {r['reports_lvk'] + r['reports_ext']:,} "
          f"({r['reports_lvk']:,} of the LVK event, {r['reports_ext']:,} of the GRB/neutrino "
          f"ones; service counted {r['matches']:,.0f} matches); counterparts reported: "
          f"{r['found_lvk']} of {r['inj_lvk']} injected in the LVK map ({r['in_lvk']} inside "
          f"its 90% region), {r['found_ext']} of {r['inj_ext']} injected in the GRB/neutrino "
          f"localizations ({r['in_ext']} inside); notices: "
          + ", ".join(f"{v:.0f} {k}" for k, v in sorted(r["outcomes"].items()))
          + f"; dead letters: {r['dead']:.0f}"
          + (f"; {r['other']} reports of other events" if r["other"] else ""))
    print()
    print("| committed reports, from the later produce() of alert and notice | n | p50 | p99 "
          "| max |")
    print("|---|---:|---:|---:|---:|")
    print("| all " + stats_ms(r["all"]))
    print("| alert produced after the notices (matched on arrival) " + stats_ms(r["after"]))
    print("| alert produced before the notices (retro-matched; from the notice) "
          + stats_ms(r["before"]))


def run(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    config = Config.load(None)
    gw = read_notice_file(GW_NOTICE, **notice_options(config))
    gw_topic = f"igwn.gwalert.bench-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [gw_topic], 1)
    produce_all(producer(bootstrap), gw_topic, [GW_NOTICE.read_bytes()])

    # -- throughput -------------------------------------------------------------------------
    tag = uuid.uuid4().hex[:8]
    names = names_for(tag, gw_topic)
    create_topics(bootstrap, [names["alerts"]], args.partitions)
    create_topics(bootstrap, [names["reports"], names["voevents"], names["dead"]], 1)
    sim = night(args.n, gw, max(1, args.n // 100), args, 10**9, 1)
    n_total = len(sim)
    t = time.perf_counter()
    size = 0

    def count(value: bytes) -> None:
        nonlocal size
        size += len(value)

    produce_all(producer(bootstrap), names["alerts"], sim.messages(), count)
    print(f"produced {n_total} packets ({size / n_total / 1024:.1f} KiB each) in "
          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    bare1, _ = bare_consume(bootstrap, names["alerts"], n_total)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_listener(write_config(work / f"{tag}.toml", bootstrap, names, args),
                          f"sqlite:///{work / f'{tag}.sqlite'}", port, work / "listen.log")
    try:
        wait_for(lambda: (metric(url, "mmcross_alerts_total") or 0) > 0, "first alerts",
                 every=0.02)
        t_first = time.perf_counter()
        first = metric(url, "mmcross_alerts_total") or 0
        wait_for(lambda: metric(url, "mmcross_alerts_total") == n_total, "all alerts",
                 every=0.05)
        t_end = time.perf_counter()
        with_notice = time.monotonic() + 15  # the notice may come after the alerts
        while not metric(url, "mmcross_matches_total") and time.monotonic() < with_notice:
            time.sleep(0.2)
        matches = metric(url, "mmcross_matches_total")
    finally:
        stop(proc)
    listen_s = (t_end - t_first) * n_total / max(1, n_total - first)
    bare2, _ = bare_consume(bootstrap, names["alerts"], n_total)
    bare_s = min(bare1, bare2)

    # -- latency during a burst -------------------------------------------------------------
    tag = uuid.uuid4().hex[:8]
    names = names_for(tag, gw_topic)
    create_topics(bootstrap, [names["alerts"]], args.partitions)
    create_topics(bootstrap, [names["reports"], names["voevents"], names["dead"]], 1)
    burst = night(args.burst, gw, args.burst_inject, args, 2 * 10**9, 2)
    injected = set(np.concatenate(burst.injected).tolist())
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_listener(write_config(work / f"{tag}.toml", bootstrap, names, args),
                          f"sqlite:///{work / f'{tag}.sqlite'}", port, work / "listen.log")
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    done = threading.Event()

    def read_reports() -> None:
        def seen(m, now: float) -> None:
            arrived.setdefault(m.alert_id, now)

        read_committed_reports(bootstrap, names["reports"], f"lat-{tag}", done, seen)

    reader = threading.Thread(target=read_reports, daemon=True)
    try:
        wait_for(lambda: metric(url, "mmcross_live_events") == 1, "listener ready")
        wait_for(lambda: metric(url, "mmcross_consumer_lag") == 0, "partitions assigned")
        reader.start()
        time.sleep(1.0)

        def on_send(value: bytes) -> None:
            a = decode_wire_row(value, keep_packet=False).alert_id
            if a in injected:
                sent[a] = time.time()

        t = time.perf_counter()
        produce_all(producer(bootstrap), names["alerts"], burst.messages(), on_send)
        burst_s = time.perf_counter() - t
        wait_for(lambda: len(arrived) >= len(injected) or (
            metric(url, "mmcross_alerts_total") == len(burst) and len(arrived) >= (
                metric(url, "mmcross_matches_total") or 0)), "burst reports", timeout=600)
    finally:
        done.set()
        stop(proc)
    lat = np.array([arrived[a] - sent[a] for a in arrived if a in sent])

    # -- latency during a burst with notices landing mid-burst ------------------------------
    mid = burst_with_notices(args, bootstrap, work, gw, config) if args.notices_mid_burst \
        else None

    rows = [
        ("bare confluent-kafka consumer", f"{n_total / bare_s:,.0f}",
         f"{size / bare_s / 2**20:,.0f}", "", ""),
        ("`mmcross listen`", f"{n_total / listen_s:,.0f}", f"{size / listen_s / 2**20:,.0f}",
         f"{bare_s / listen_s:.0%}", f"{int(matches or 0)} matches"),
    ]
    print()
    print(f"Throughput: {n_total} Rubin packets of {size / n_total / 1024:.0f} KiB on "
          f"{args.partitions} partitions (machine: {os.cpu_count()} cores, shared)")
    print()
    print("| reader | alerts/s | MiB/s | vs bare | |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(f"Latency, produce() to match report at a consumer, during a burst of {len(burst)} "
          f"packets produced in {burst_s:.1f} s ({len(burst) / burst_s:,.0f}/s); "
          f"{len(lat)} of {len(injected)} counterparts reported")
    print()
    print("| p50 | p99 | max |")
    print("|---:|---:|---:|")
    if len(lat):
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"| {p50 * 1000:,.0f} ms | {p99 * 1000:,.0f} ms | {lat.max() * 1000:,.0f} ms |")
    else:
        print("| - | - | - |")
    if mid is not None:
        print_notices_row(mid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="alerts in the throughput topic")
    parser.add_argument("--burst", type=int, default=40_000, help="alerts in the burst")
    parser.add_argument("--burst-inject", type=int, default=400,
                        help="counterparts in the burst (latency samples)")
    parser.add_argument("--notices-mid-burst", action=argparse.BooleanOptionalAction,
                        default=True, help="also measure a burst during which an LVK map and "
                        "ten GRB/neutrino notices are published (default: on)")
    parser.add_argument("--notice-inject", type=int, default=10,
                        help="counterparts per GRB/neutrino event in that burst")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--n-previous", type=int, default=30)
    parser.add_argument("--cutout-bytes", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--poll-timeout", type=float, default=0.1)
    parser.add_argument("--bootstrap", default=os.environ.get("MMCROSS_KAFKA_BOOTSTRAP"),
                        help="broker to use (default: start one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mmcross-bench-listen-") as tmp:
        work = Path(tmp)
        if args.bootstrap:
            run(args, args.bootstrap, work)
            return 0
        kafka_local = _kafka_local()
        broker = kafka_local.LocalKafka(work / "kafka")
        broker.start()
        try:
            run(args, broker.bootstrap, work)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

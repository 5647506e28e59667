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

The broker is ``--bootstrap`` or one started here with ``scripts/kafka_local.py`` (stopped at
the end). Prints a Markdown table.

Usage: python scripts/bench_listen.py [--n 10000] [--burst 40000] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
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
from mmcross.listeners import read_notice_file  # noqa: E402
from mmcross.model.config import Config, notice_options  # noqa: E402

GW_NOTICE = Path("/work/shared/data/gcn/json/fink-mm/S230518h-initial.json")


def _kafka_local():
    spec = importlib.util.spec_from_file_location("kafka_local", REPO / "scripts" /
                                                  "kafka_local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_local"] = module
    spec.loader.exec_module(module)
    return module


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
    return simulate_night(n, start_mjd_tai=t0, duration_days=0.3,
                          rng=np.random.default_rng(seed),
                          inject=[(event.localization, inject, t0, t0 + 0.3)],
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


def write_config(path: Path, bootstrap: str, names: dict, args: argparse.Namespace) -> Path:
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
alert_topics = ["{names['alerts']}"]
group_id = "{names['group']}"
report_topic = "{names['reports']}"
voevent_topic = "{names['voevents']}"
dead_letter_topic = "{names['dead']}"
[kafka.gcn]
topics = ["{names['gw']}"]
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
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{tag}",
                      "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                      "isolation.level": "read_committed"})
        c.subscribe([names["reports"]])
        while not done.is_set():
            for msg in c.consume(500, 0.05):
                if msg.error() is None:
                    now = time.time()
                    arrived.setdefault(match_from_avro(msg.value()).alert_id, now)
        c.close()

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="alerts in the throughput topic")
    parser.add_argument("--burst", type=int, default=40_000, help="alerts in the burst")
    parser.add_argument("--burst-inject", type=int, default=400,
                        help="counterparts in the burst (latency samples)")
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

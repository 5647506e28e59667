#!/usr/bin/env python
"""Benchmark: the CPU cost of the eleven notices that land mid-burst in ``bench_listen.py``.

``bench_listen.py`` measures that row end to end (broker, transactions, a reader, all sharing
two cores); this script isolates what the service's loop thread does with the notices. An
engine remembers the first half of the same simulated 40,000-alert burst (same seed, 300-byte
cutouts), then the same eleven real notices (S230518h with its sky map, ten GRB/neutrino
VOEvents with their dates moved, :func:`bench_listen.mid_burst_notices`) are parsed from their
bytes and applied one by one, the engine's sink being the service's Kafka report sink on a
producer with no broker: every Avro report and counterpart VOEvent is built and queued in
librdkafka, none is sent. Prints the median wall time of ``--repeat`` fresh engines and the
number of reports.

Usage: python scripts/bench_notice_step.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from mmcross.app.engine import Engine
from mmcross.app.simulate import simulate_night
from mmcross.brokers.kafka_reports import KafkaReportSink, TransactionalOutput
from mmcross.listeners import parse_notice
from mmcross.model.config import Config, notice_options


def _bench_listen():
    path = Path(__file__).resolve().with_name("bench_listen.py")
    spec = importlib.util.spec_from_file_location("bench_listen", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_listen"] = module
    spec.loader.exec_module(module)
    return module


class QueuedOnly(TransactionalOutput):
    """The service's transactional output without a broker: records are queued only."""

    def __init__(self) -> None:
        self.producer = Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0,
                                  "queue.buffering.max.messages": 2_000_000,
                                  "queue.buffering.max.kbytes": 4_000_000})
        self.txn = "bench"
        self.produced = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--burst", type=int, default=40_000)
    args = parser.parse_args(argv)
    bl = _bench_listen()
    config = Config.load(None)
    options = notice_options(config)
    gw = parse_notice(bl.GW_NOTICE.read_bytes(), topic="igwn.gwalert", **options)
    notices = bl.mid_burst_notices(gw, config, "bench")
    t0 = gw.trigger_mjd_tai
    inject = [(gw.localization, 100, t0, t0 + bl.NIGHT_DAYS)] + [
        (n.event.localization, 10, t0, t0 + bl.NIGHT_DAYS) for n in notices[1:]]
    burst = simulate_night(args.burst, start_mjd_tai=t0, duration_days=bl.NIGHT_DAYS,
                           rng=np.random.default_rng(3), inject=inject, first_id=3 * 10**9,
                           n_previous=30, cutout_bytes=300, alerts_per_visit=2_000)
    alerts = burst.truth()
    first_half = alerts.take(np.arange(len(alerts) // 2))
    seconds, reports = [], set()
    for _ in range(args.repeat + 1):  # the first run loads numba's caches: not counted
        engine = Engine(config, sinks=[KafkaReportSink(QueuedOnly(), "reports", "voevents")])
        engine.on_alerts(first_half)
        start = time.perf_counter()
        n = sum(len(engine.on_notice(parse_notice(x.payload, topic=x.topic, **options)).reports)
                for x in notices)
        seconds.append(time.perf_counter() - start)
        reports.add(n)
    print(f"{len(first_half)} alerts remembered, {len(notices)} notices applied: "
          f"{len(reports) == 1 and reports.pop()} reports (Avro + VOEvent each), "
          f"median {statistics.median(seconds[1:]):.2f} s of {args.repeat} "
          f"(runs: {', '.join(f'{s:.2f}' for s in seconds[1:])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

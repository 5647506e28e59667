"""Soak of ``mmcross listen`` exactly once: kill -9, broker restarts and a rebalance.

A stream of real GCN notices from ``../shared/data`` -- the LVK mock superevent MS181101ab
(preliminary, initial and update notices, then its retraction), the IceCube BRONZE neutrino
136918_45252263, Fermi GBM 726773850 and Swift BAT 1208389 -- and simulated Rubin alerts
(:func:`mmcross.app.simulate.simulate_night`, counterparts injected inside each localization,
some alerts before their notice, a few garbage messages) is published to a local broker of its
own (``scripts/kafka_local.py``), in time order, while a driver

* SIGKILLs the listener ``a`` ``--kills`` times at random moments (a random 0.5-8 s after it
  is up) and restarts it at once;
* restarts the broker ``--broker-restarts`` times, the last one with SIGKILL;
* runs a second listener ``b`` in the same consumer group for the middle third of the stream
  (partitions rebalance when it joins and leaves; each listener has its own store).

The stream waits for every alert published so far to be committed, and for every running
listener to hold a notice, before publishing what comes after a notice (and before each new
event's alerts), so that the expected outputs are those of the offline engine over the same
sequence. At the end a ``read_committed``
reader counts every record of the report, VOEvent and dead-letter topics, by (key, revision,
match or revocation): each expected record must be there once, nothing else.

Usage::

    python scripts/soak.py                              # 200,000 alerts, 20 kills, 2 restarts
    python scripts/soak.py --alerts 20000 --kills 3 --broker-restarts 1 --no-second-listener

Prints a table per topic (expected, delivered, lost, duplicated, unexpected) and writes it to
``--out`` as JSON; exit status 0 when nothing is lost, duplicated or unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from mmcross.app.engine import Engine
from mmcross.app.simulate import simulate_night
from mmcross.brokers.alert_decoding import decode_wire_many
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from mmcross.model.index import Change

log = logging.getLogger("soak")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WAIT = 600.0  # s, bound of every wait of the driver

GW = [("gcn/json/userguide/MS181101ab-preliminary.json", "igwn.gwalert"),
      ("gcn/json/userguide/MS181101ab-initial.json", "igwn.gwalert"),
      ("gcn/json/userguide/MS181101ab-update.json", "igwn.gwalert"),
      ("gcn/json/userguide/MS181101ab-retraction.json", "igwn.gwalert")]
NEUTRINO = ("gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml",
            "gcn.classic.voevent.ICECUBE_ASTROTRACK_BRONZE")
GRBS = [("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml",
         "gcn.classic.voevent.FERMI_GBM_GND_POS"),
        ("gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml",
         "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK")]
GARBAGE = [b"not an alert", struct.pack(">bI", 0, 4242) + b"\x02\x04"]

CONFIG = """
[localization]
credible_level_tolerance = 1e-2
[listeners]
roles = ["observation", "test"]
[kafka]
bootstrap_servers = "{bootstrap}"
alert_topics = ["{alerts}"]
group_id = "{group}"
report_topic = "{reports}"
voevent_topic = "{voevents}"
dead_letter_topic = "{dead}"
transaction_marker_topic = "{markers}"
[kafka.alert_properties]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000
[kafka.gcn]
topics = [{notice_topics}]
[service]
batch_size = {batch_size}
poll_timeout = 0.2
log_every = 5.0
backoff_max = 2.0
commit_timeout = 60.0
"""


# -- the stream ----------------------------------------------------------------------------

@dataclass
class Step:
    """One publication: a notice (topic, bytes, parsed event) or a chunk of alert messages;
    or a barrier (wait until every alert published so far is committed)."""

    kind: str
    topic: str = ""
    value: bytes = b""
    event: Any = None
    alerts: list[bytes] = field(default_factory=list)


def build_stream(config: Config, tag: str, n_alerts: int, rng: np.random.Generator,
                 chunk: int) -> list[Step]:
    """The time-ordered stream: per event, alerts before its notice, the notice, alerts
    after it (updates and the retraction of the GW in between); ``n_alerts`` in all.

    A barrier before each new event's alerts: the engine expires an event when a batch's
    oldest alert is past its window, and partitions are read at different paces, so without
    it a batch of the next event's (years later) alerts could expire the previous event
    before the last of its own alerts were read -- not what the offline reference, which
    reads the chunks in order, does."""
    opts = notice_options(config)

    def notice(path: str, topic: str) -> Step:
        value = (DATA / path).read_bytes()
        return Step("notice", f"{topic}.{tag}", value, read_notice_file(DATA / path, **opts))

    def alerts(event, n: int, start: float, days: float, first_id: int) -> list[Step]:
        night = simulate_night(n, start_mjd_tai=start, duration_days=days, rng=rng,
                               inject=[(event.localization, max(4, n // 2000), start,
                                        start + days)],
                               first_id=first_id, alerts_per_visit=100, cutout_bytes=200,
                               n_previous=2)
        msgs = list(night.messages())
        if first_id % 3 == 0:
            msgs[len(msgs) // 2:len(msgs) // 2] = GARBAGE
        return [Step("alerts", alerts=msgs[i:i + chunk]) for i in range(0, len(msgs), chunk)]

    gw = [notice(*g) for g in GW]
    nu = notice(*NEUTRINO)
    grbs = [notice(*g) for g in GRBS]
    share = n_alerts // 10
    t_gw, t_nu, t_grb = (gw[0].event.trigger_mjd_tai, nu.event.trigger_mjd_tai,
                         grbs[0].event.trigger_mjd_tai)
    steps: list[Step] = []
    steps += alerts(gw[0].event, share, t_gw - 0.005, 0.05, 0)  # before the notice
    for i, n in enumerate(gw[:3]):
        steps.append(n)
        steps += alerts(n.event, share + share // 3, t_gw + 0.05 + 0.1 * i, 0.1,
                        (i + 1) * 10**7)
    steps.append(gw[3])
    steps += alerts(gw[0].event, share // 2, t_gw + 0.4, 0.1, 4 * 10**7)  # after retraction
    steps.append(Step("barrier"))
    steps += alerts(nu.event, share // 2, t_nu - 0.005, 0.05, 5 * 10**7)
    steps.append(nu)
    steps += alerts(nu.event, share + share // 2, t_nu + 0.05, 0.2, 6 * 10**7)
    steps.append(Step("barrier"))
    steps += alerts(grbs[0].event, share // 2, t_grb - 0.005, 0.05, 7 * 10**7)
    steps += grbs
    rest = n_alerts - sum(len(s.alerts) for s in steps if s.kind == "alerts")
    steps += alerts(grbs[0].event, max(rest, 100), t_grb + 0.05, 0.2, 9 * 10**7)
    return steps


def expected_records(config: Config, steps: list[Step]) -> tuple[Counter, list[bytes]]:
    """The offline engine over the stream: Counter of (key, revision, revoked) records, and
    the garbage messages (dead letters)."""
    engine = Engine(config)
    records: Counter = Counter()
    dead: list[bytes] = []
    for step in steps:
        if step.kind == "barrier":
            continue
        if step.kind == "notice":
            found = engine.on_notice(step.event).reports
        else:
            batch, errors = decode_wire_many(step.alerts)
            dead += [m for m in step.alerts if m in GARBAGE]
            assert len(errors) == sum(m in GARBAGE for m in step.alerts)
            found = engine.on_alerts(batch)
        records.update((m.key, int(m.event_revision), bool(m.retracted)) for m in found)
    return records, dead


def notice_outcomes(config: Config, steps: list[Step]) -> list[tuple[str, int, bool]]:
    """(event id, revision, retracted) each notice leaves in a store, in stream order."""
    engine = Engine(config)
    out = []
    for step in steps:
        if step.kind == "notice":
            o = engine.on_notice(step.event)
            out.append((o.event.event_id, o.event.revision, o.change is Change.RETRACTED))
    return out


# -- Kafka helpers -------------------------------------------------------------------------

def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
    for future in admin.create_topics(new).values():
        future.result(timeout=60)


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "compression.type": "zstd",
                         "message.max.bytes": 16 << 20, "message.timeout.ms": 600_000})
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(WAIT) != 0:
        raise RuntimeError(f"could not publish to {topic}")


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Offsets committed by ``group`` on ``topic`` (-1 while unknown)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        got = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(tp.offset for tp in got if tp.offset > 0)
    except KafkaException:
        return -1
    finally:
        c.close()


def read_committed(bootstrap: str, topic: str) -> list:
    """Every committed record of ``topic`` (read_committed, to the end offsets)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    out = []
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in parts}
        ends = {p: e for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + WAIT
        while ends and time.monotonic() < deadline:
            for msg in c.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(msg)
                elif msg.error().code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(msg.error())
            for tp in c.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:
                    ends.pop(tp.partition)
        if ends:
            raise RuntimeError(f"could not read {topic} to its end")
    finally:
        c.close()
    return out


def wait_for(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- listeners and the driver --------------------------------------------------------------

class Listener:
    """One ``mmcross listen`` child process named ``name``, restartable, with its store."""

    def __init__(self, name: str, config_path: Path, workdir: Path) -> None:
        self.name = name
        self.config_path = config_path
        self.db = f"sqlite:///{workdir / f'{name}.sqlite'}"
        self.log_path = workdir / f"listen-{name}.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self._log_from = 0

    def start(self) -> None:
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KAFKA_") and k != "MMCROSS_CRASH_AT"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmcross", "listen", "--config", str(self.config_path),
             "--db", self.db, "--instance", self.name], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"))  # noqa: SIM115
        self.started = time.monotonic()

    def ready(self) -> bool:
        """Whether the process started last has joined its groups ("listening:" logged)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_from)
            return b"INFO mmcross.app.service: listening:" in f.read()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"listener {self.name} exited by itself with "
                               f"{self.proc.returncode}; see {self.log_path}")

    def holds(self, event_id: str, revision: int, retracted: bool) -> bool:
        """Whether this listener's store has ``event_id`` at ``revision`` (or retracted)."""
        try:
            with contextlib.closing(Store(self.db)) as store:
                rows = {e["event_id"]: e for e in store.events()}
        except Exception:  # noqa: BLE001 - the store is being created by the listener
            return False
        row = rows.get(event_id)
        if row is None:
            return False
        return bool(row["retracted"]) if retracted else row["revision"] >= revision


class Killer(threading.Thread):
    """SIGKILLs listener ``a`` at random moments (a random 0.5-8 s after it is ready) and
    restarts it, ``target`` times."""

    def __init__(self, listener: Listener, target: int, rng: random.Random,
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.listener, self.target, self.rng, self.lock = listener, target, rng, lock
        self.kills = 0
        self.done = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        while self.kills < self.target and not self.halt.is_set():
            while not self.listener.ready():
                if self.halt.wait(0.2):
                    return
            if self.halt.wait(self.rng.uniform(0.5, 8.0)):
                break
            with self.lock:
                self.listener.kill()
                self.kills += 1
                log.info("kill -9 #%d of listener a", self.kills)
                self.listener.start()
        self.done.set()


def run_soak(broker, *, n_alerts: int = 200_000, kills: int = 20, broker_restarts: int = 2,
             second_listener: bool = True, seed: int = 1, workdir: Path | None = None,
             partitions: int = 4, chunk: int = 5000, batch_size: int = 2000) -> dict:
    """Run the soak against ``broker`` (a ``kafka_local.LocalKafka``, restartable); returns
    the result table (per topic: expected, delivered, lost, duplicated, unexpected)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="mmcross-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    names = {"alerts": f"soak-alerts-{tag}", "reports": f"soak-reports-{tag}",
             "voevents": f"soak-voevents-{tag}", "dead": f"soak-dead-{tag}",
             "group": f"soak-{tag}", "markers": f"soak-markers-{tag}"}
    base = Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2},
                                  "listeners": {"roles": ["observation", "test"]}})
    started = time.monotonic()
    steps = build_stream(base, tag, n_alerts, np.random.default_rng(seed), chunk)
    expected, expected_dead = expected_records(base, steps)
    outcomes = iter(notice_outcomes(base, steps))
    n_published_alerts = sum(len(s.alerts) for s in steps)
    log.info("stream: %d alert messages, %d notices; %d expected records (%d revocations); "
             "built in %.0f s", n_published_alerts, sum(s.kind == "notice" for s in steps),
             sum(expected.values()), sum(n for k, n in expected.items() if k[2]),
             time.monotonic() - started)
    bootstrap = broker.bootstrap
    notice_topics = sorted({s.topic for s in steps if s.kind == "notice"})
    create_topics(bootstrap, [names["alerts"]], partitions)
    create_topics(bootstrap, [names["reports"], names["voevents"], names["dead"]], 2)
    create_topics(bootstrap, notice_topics, 1)
    config_path = workdir / "listen.toml"
    config_path.write_text(CONFIG.format(
        bootstrap=bootstrap, batch_size=batch_size,
        notice_topics=", ".join(f'"{t}"' for t in notice_topics), **names))

    a, b = Listener("a", config_path, workdir), Listener("b", config_path, workdir)
    lock = threading.Lock()
    killer = Killer(a, kills, rng, lock)
    n_alert_steps = sum(s.kind == "alerts" for s in steps)
    restart_at = {int(n_alert_steps * (i + 1) / (broker_restarts + 1)): i == broker_restarts - 1
                  for i in range(broker_restarts)}
    b_window = (n_alert_steps // 3, 2 * n_alert_steps // 3) if second_listener else (-1, -1)
    published = 0
    alert_step = 0
    running = [a]
    a.start()
    killer.start()
    try:
        for step in steps:
            for listener in running:
                if listener is not a:
                    listener.check_alive()
            if step.kind == "barrier":
                wait_for(lambda n=published: committed(bootstrap, names["group"],
                                                       names["alerts"]) == n,
                         "alerts committed before the next event's alerts")
                continue
            if step.kind == "notice":
                wait_for(lambda n=published: committed(bootstrap, names["group"],
                                                       names["alerts"]) == n,
                         "alerts committed before a notice")
                produce(bootstrap, step.topic, [step.value])
                event_id, revision, retracted = next(outcomes)
                wait_for(lambda e=event_id, r=revision, x=retracted: all(
                    li.holds(e, r, x) for li in running),
                         f"{event_id} revision {revision} held by every listener")
                log.info("notice %s: %s revision %d%s held", Path(step.topic).name,
                         event_id, revision, " (retracted)" if retracted else "")
                continue
            if alert_step == b_window[0]:
                wait_for(lambda n=published: committed(bootstrap, names["group"],
                                                       names["alerts"]) == n,
                         "alerts committed before listener b joins")
                b.start()
                running.append(b)
                for event_id, revision, retracted in _held_so_far(base, steps, step):
                    wait_for(lambda e=event_id, r=revision, x=retracted: b.holds(e, r, x),
                             f"listener b holding {event_id}")
                log.info("listener b joined the group")
            if alert_step == b_window[1]:
                code = b.stop()
                running.remove(b)
                log.info("listener b left the group (exit %d)", code)
            if alert_step in restart_at:
                hard = restart_at[alert_step]
                log.info("restarting the broker%s", " with SIGKILL" if hard else "")
                broker.restart(hard=hard)
            produce(bootstrap, names["alerts"], step.alerts)
            published += len(step.alerts)
            alert_step += 1
        killer.done.wait(WAIT)
        with lock:
            wait_for(lambda: committed(bootstrap, names["group"], names["alerts"]) == published,
                     "every alert committed")
            code = a.stop()
        log.info("listener a stopped (exit %d) after %d kills", code, killer.kills)
    finally:
        killer.halt.set()
        for listener in (a, b):
            if listener.proc is not None and listener.proc.poll() is None:
                listener.proc.kill()
    elapsed = time.monotonic() - started

    table = {}
    for topic_name in ("reports", "voevents"):
        got = Counter()
        for m in read_committed(bootstrap, names[topic_name]):
            headers = dict(m.headers() or [])
            got[(m.key().decode(), int(headers["mmcross.revision"]),
                 headers["mmcross.retracted"] == b"true")] += 1
        table[topic_name] = _compare(expected, got)
        table[topic_name + " (revocations)"] = _compare(
            Counter({k: n for k, n in expected.items() if k[2]}),
            Counter({k: n for k, n in got.items() if k[2]}))
    dead_got = Counter(m.value() for m in read_committed(bootstrap, names["dead"]))
    table["dead letters"] = _compare(Counter(expected_dead), dead_got)
    return {"alerts": n_published_alerts, "kills": killer.kills,
            "broker_restarts": broker_restarts, "second_listener": second_listener,
            "elapsed_s": round(elapsed, 1), "topics": table, "workdir": str(workdir)}


def _held_so_far(config: Config, steps: list[Step], upto: Step) -> list[tuple[str, int, bool]]:
    """(event, revision, retracted) of the notices published before ``upto``."""
    n = 0
    for step in steps:
        if step is upto:
            break
        n += step.kind == "notice"
    return notice_outcomes(config, steps)[:n]


def _compare(expected: Counter, got: Counter) -> dict[str, int]:
    return {"expected": sum(expected.values()),
            "delivered": sum(got.values()),
            "lost": sum(max(0, n - got[k]) for k, n in expected.items()),
            "duplicated": sum(max(0, n - expected[k]) for k, n in got.items() if k in expected),
            "unexpected": sum(n for k, n in got.items() if k not in expected)}


def clean(result: dict) -> bool:
    """True when no topic lost, duplicated or added a record."""
    return all(r["lost"] == 0 and r["duplicated"] == 0 and r["unexpected"] == 0
               for r in result["topics"].values())


def _load_kafka_local():
    path = REPO / "scripts" / "kafka_local.py"
    spec = importlib.util.spec_from_file_location("kafka_local", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_local"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--broker-restarts", type=int, default=2)
    parser.add_argument("--no-second-listener", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("soak-result.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    kafka_local = _load_kafka_local()
    workdir = Path(tempfile.mkdtemp(prefix="mmcross-soak-"))
    with kafka_local.LocalKafka(workdir / "kafka", die_with_parent=True) as broker:
        result = run_soak(broker, n_alerts=args.alerts, kills=args.kills,
                          broker_restarts=args.broker_restarts,
                          second_listener=not args.no_second_listener, seed=args.seed,
                          workdir=workdir)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{result['alerts']:,} alert messages, {result['kills']} kill -9, "
          f"{result['broker_restarts']} broker restarts, second listener: "
          f"{result['second_listener']}, {result['elapsed_s']} s")
    print("| topic | expected | delivered | lost | duplicated | unexpected |")
    print("| --- | --- | --- | --- | --- | --- |")
    for topic, r in result["topics"].items():
        print(f"| {topic} | {r['expected']:,} | {r['delivered']:,} | {r['lost']} | "
              f"{r['duplicated']} | {r['unexpected']} |")
    return 0 if clean(result) else 1


if __name__ == "__main__":
    sys.exit(main())

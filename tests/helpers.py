"""Helpers shared by the test modules (one module, as Comet's ``testutils``).

* Kafka: topics, producing, reading a topic to its end, committed offsets, a listen config,
  running a service in a thread, and the offline engine's expected matches;
* real notices used by several modules and simulated nights around them;
* VTP and partner submissions: framing, hostile XML, a pygcn subscriber script;
* a :class:`~mmcross.model.match.Match` factory.

Every wait is bounded by :data:`DEADLINE` and is never an assertion on speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from lxml import etree

from mmcross.app.engine import Engine
from mmcross.app.simulate import simulate_night
from mmcross.brokers.alert_decoding import decode_wire_many
from mmcross.model.config import Config
from mmcross.model.match import Match
from mmcross.vtp.base import LENGTH, frame

GW_NOTICE = "gcn/json/fink-mm/S230518h-initial.json"

GBM_NOTICE = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"

GW_TOPIC = "igwn.gwalert"

GBM_TOPIC = "gcn.classic.voevent.FERMI_GBM_GND_POS"

# s, bound of every wait: a guard against a hang, never a measure. Generous because the
# machine has 2 cores shared by Kafka, PostgreSQL and the service under test: a wait for a
# condition ends as soon as the condition holds, so only a broken run waits this long.
DEADLINE = 300.0

REPO = Path(__file__).resolve().parents[1]

def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    new = [NewTopic(n, num_partitions=partitions, replication_factor=1)
           for n in names if n not in existing]
    for future in (admin.create_topics(new).values() if new else ()):
        future.result(timeout=30)

def produce_values(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0

def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
    finally:
        c.close()

def topic_size(bootstrap: str, topic: str) -> int:
    return sum(end_offsets(bootstrap, topic).values())

def read_topic(bootstrap: str, topic: str) -> list:
    """Every committed message of ``topic`` (``read_committed``: records of aborted or open
    transactions are never returned), all partitions, from the start to the end offsets.

    Transaction markers take offsets but are not delivered, so the end of a partition is
    reached when the consumer's position (not the last message) reaches the end offset.
    """
    ends = {p: o for p, o in end_offsets(bootstrap, topic).items() if o > 0}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    out = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + DEADLINE
        while ends and time.monotonic() < deadline:
            for msg in c.consume(500, 0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
            for tp in c.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:
                    ends.pop(tp.partition)
    finally:
        c.close()
    assert not ends, f"could not read {topic} to its end"
    return out

def group_offset(bootstrap: str, group: str, topic: str) -> int:
    """Offsets committed by ``group`` on ``topic``, summed over partitions.

    Read with a consumer of that group that does not join it (``committed``); the
    AdminClient's list_consumer_group_offsets crashes librdkafka 2.16 (null consumer-group
    handle in rd_kafka_handle_OffsetFetch) while the group coordinator is loading.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        got = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    except KafkaException as exc:  # e.g. NOT_COORDINATOR while the coordinator moves/loads,
        # or a time-out while an open transaction holds offsets of the group (KIP-447)
        if not exc.args[0].retriable() and exc.args[0].code() not in (
                KafkaError.NOT_COORDINATOR, KafkaError._TIMED_OUT):
            raise
        return -1
    finally:
        c.close()
    return sum(tp.offset for tp in got if tp.offset > 0)

@contextlib.contextmanager
def running(service):
    """Run a service's loop in a thread for the ``with`` block; it must stop cleanly after."""
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive(), "the service did not stop within 30 s"

def wait_for(condition, what: str, proc=None) -> None:
    """Poll ``condition`` until it holds; fail at once if ``proc`` (a Popen) exited, or
    after :data:`DEADLINE` s (a hang)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert proc is None or proc.poll() is None, \
            f"the process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)

def produce_notices(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Publish notices compressed, as GCN does (a 1 MB sky map fits the broker's limit)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "compression.type": "zstd", "message.max.bytes": 16 << 20})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0

def service_config(path: Path, bootstrap: str, names: dict[str, str], *,
                   notice_topics: list[str], batch_size: int = 200, extra: str = "") -> Path:
    """A listen config for the tests: loose circle tolerance, test-role notices accepted."""
    topics = ", ".join(f'"{t}"' for t in notice_topics)
    path.write_text(f"""
[localization]
credible_level_tolerance = 1e-2
[listeners]
roles = ["observation", "test"]
[kafka]
bootstrap_servers = "{bootstrap}"
alert_topics = ["{names['alerts']}"]
group_id = "{names['group']}"
report_topic = "{names['reports']}"
voevent_topic = "{names['voevents']}"
dead_letter_topic = "{names['dead']}"
[kafka.properties]
"security.protocol" = "PLAINTEXT"
[kafka.alert_properties]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000
[kafka.gcn]
topics = [{topics}]
[service]
batch_size = {batch_size}
poll_timeout = 0.2
log_every = 2.0
backoff_max = 2.0
{extra}
""")
    return path

def unique_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"alerts": f"alerts-{tag}", "reports": f"reports-{tag}",
            "voevents": f"voevents-{tag}", "dead": f"dead-{tag}", "group": f"mmcross-{tag}",
            "gw": f"igwn.gwalert.test-{tag}",
            "gbm": f"gcn.classic.voevent.FERMI_GBM_GND_POS.test-{tag}"}

def sim_night(n: int, start: float, days: float, loc, n_inject: int, t0: float, t1: float,
           first_id: int, seed: int):
    return simulate_night(n, start_mjd_tai=start, duration_days=days,
                          rng=np.random.default_rng(seed), inject=[(loc, n_inject, t0, t1)],
                          first_id=first_id, alerts_per_visit=100, cutout_bytes=300,
                          n_previous=2)

def offline_matches(config: Config, steps: list) -> dict[str, object]:
    """The offline engine (no Kafka, no store) over ``steps``: events or wire-message lists."""
    engine = Engine(config)
    out = {}
    for step in steps:
        if isinstance(step, list):
            batch, errors = decode_wire_many(step)
            assert errors == []
            found = engine.on_alerts(batch)
        else:
            found = engine.on_notice(step).reports
        out.update({m.key: m for m in found if not m.retracted})
    return out

def injected_in(night, event, level: float) -> set[str]:
    """Keys of the injected alerts inside ``event``'s credible region of ``level``."""
    ids = np.concatenate(night.injected)
    rows = np.isin(night.alert_id, ids)
    cl = event.localization.credible_level_at(night.ra[rows], night.dec[rows])
    return {f"{event.event_id}|{a}" for a, c in zip(night.alert_id[rows], cl, strict=True)
            if c <= level}

def start_listener(config_path: Path, db: str, log_path: Path, *, instance: str = "a",
                   crash_at: str | None = None) -> subprocess.Popen:
    """``mmcross listen`` in a child process named ``instance`` in its group; ``crash_at``
    arms a named crash point (``MMCROSS_CRASH_AT``, :mod:`mmcross.model.crashpoints`)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAFKA_") and k != "MMCROSS_CRASH_AT"}
    if crash_at:
        env["MMCROSS_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "mmcross", "listen", "--config", str(config_path),
         "--db", db, "--instance", instance], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=open(log_path, "ab"))  # noqa: SIM115 (the child keeps it)

def make_match(i: int = 0, **kw) -> Match:
    values = dict(event_id="lvk:S230518h", event_revision=2, event_kind="gw", instrument="LVK",
                  event_time="2023-05-18T12:59:08.167Z", alert_id=7912941781254298 + i,
                  object_id=str(7912941781254298 + i), ra=55.75212760972686,
                  dec=-32.26847858422095, alert_time="2023-05-19T05:35:39.168Z",
                  time_offset=0.6914, credible_level=0.52, searched_area=123.4,
                  prob_density=2.5e-3, distance_mean=240.5, distance_std=61.0, p_chance=0.013)
    values.update(kw)
    return Match(**values)

GCN = "gcn/voevent/fink-mm-kafka-2024-01"
WAIT = 30.0  # s, bound of socket waits (never asserted on)
BAT = f"{GCN}/Swift_BAT_GRB_Pos_1208389-262.xml"  # RA 270.6441 Dec 24.4866, r 0.05 deg

INTEGRAL = f"{GCN}/INTEGRAL_Wakeup_Pos_010472-924.xml"

GOOD_TOKEN = "correct horse battery staple"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE voe:VOEvent [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
]>
<voe:VOEvent xmlns:voe="http://www.ivoa.net/xml/VOEvent/v2.0" ivorn="ivo://nasa.gsfc.gcn/x#1"
 role="observation" version="2.0"><What><Param name="mmcross_token" value="%s"/>
<Param name="Packet_Type" value="&c;"/></What></voe:VOEvent>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE voe:VOEvent [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<voe:VOEvent xmlns:voe="http://www.ivoa.net/xml/VOEvent/v2.0" ivorn="ivo://nasa.gsfc.gcn/x#2"
 role="observation" version="2.0"><What><Param name="mmcross_token" value="%s"/>
<Param name="Packet_Type" value="&xxe;"/></What></voe:VOEvent>"""

def with_token(payload: bytes, token: str | None) -> bytes:
    """The VOEvent with ``<Param name="mmcross_token">`` added to its ``What``."""
    if token is None:
        return payload
    root = etree.fromstring(payload)
    what = root.find("What")
    etree.SubElement(what, "Param", name="mmcross_token", value=token)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf

def read_packet(sock: socket.socket) -> etree._Element:
    (n,) = LENGTH.unpack(recv_exact(sock, 4))
    return etree.fromstring(recv_exact(sock, n))

def submit(port: int, payload: bytes) -> etree._Element:
    """Send one frame on a new connection; the Transport answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(frame(payload))
        return read_packet(s)

def result(reply: etree._Element) -> str:
    return reply.findtext("Meta/Result") or ""

# pygcn's client in its own process: each VOEvent saved as NNNNN.xml, INFO log on stderr
# (it says "connected to HOST:PORT" once subscribed).
PYGCN_SUBSCRIBER = """
import itertools, logging, os, sys
import gcn
out = sys.argv[1]
seq = itertools.count()
def handler(payload, root):
    path = os.path.join(out, "%05d.xml" % next(seq))
    with open(path + ".tmp", "wb") as f:
        f.write(payload)
    os.replace(path + ".tmp", path)
logging.basicConfig(level=logging.INFO)
gcn.listen(host="127.0.0.1", port=int(sys.argv[2]), handler=handler,
           ivorn="ivo://mmcross-test/pygcn", iamalive_timeout=60, max_reconnect_timeout=1)
"""

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- gwcelery 3.0 as a reference (tests of the RAVEN coincidences) ---------------------------
# gwcelery is not installed (heavy dependencies): its wheel is downloaded once into
# ~/.cache/mmcross and the few modules the tests compare with are loaded from it, with celery,
# GraceDB and the igwn-alert client replaced by inert stand-ins.

GWCELERY_VERSION = "3.0.0"


def _gwcelery_root() -> Path:
    import zipfile

    cache = Path.home() / ".cache" / "mmcross" / f"gwcelery-{GWCELERY_VERSION}"
    if not (cache / "gwcelery" / "tasks" / "raven.py").exists():
        wheel_dir = cache.with_name(cache.name + "-wheel")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        f"gwcelery=={GWCELERY_VERSION}", "-d", str(wheel_dir)], check=True)
        wheel = next(wheel_dir.glob("gwcelery-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(cache)
    return cache


def gwcelery_module(name: str):
    """gwcelery 3.0's module ``gwcelery.<name>`` (``conf``, ``tasks.raven``,
    ``tasks.external_skymaps``) loaded from its wheel with celery and GraceDB stubbed;
    ``gwcelery.app.conf`` is gwcelery's own configuration."""
    import importlib.util
    import types

    root = _gwcelery_root() / "gwcelery"

    def task(*_a, **_k):
        return lambda f: f

    def module(mod_name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(mod_name)
        m.__dict__.update(attrs)
        return m

    stubs = {
        "celery": module("celery", group=lambda *a, **k: None),
        "celery.utils": module("celery.utils"),
        "celery.utils.log": module("celery.utils.log",
                                   get_task_logger=lambda n: __import__("logging").getLogger(n)),
        "igwn_alert": module("igwn_alert"),
        "igwn_alert.client": module("igwn_alert.client", DEFAULT_SERVER="kafka://localhost/"),
        "gwcelery.tasks.gracedb": module("gwcelery.tasks.gracedb", task=task, client=None,
                                         RetryableHTTPError=Exception),
        "gwcelery.tasks.core": module("gwcelery.tasks.core", identity=None),
        "gwcelery.tasks.skymaps": module("gwcelery.tasks.skymaps"),
        "gwcelery.util": module("gwcelery.util", closing_figures=lambda *a, **k: (lambda f: f)),
        "gwcelery.util.cmdline": module("gwcelery.util.cmdline", handling_system_exit=None),
        "gwcelery.util.tempfile": module("gwcelery.util.tempfile", NamedTemporaryFile=None),
    }
    saved = {k: sys.modules.get(k) for k in [*stubs, "gwcelery", "gwcelery.tasks",
                                             "gwcelery.conf", f"gwcelery.{name}"]}
    try:
        sys.modules.update(stubs)

        def load(mod_name: str, path: Path) -> types.ModuleType:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = mod
            spec.loader.exec_module(mod)
            return mod

        conf = load("gwcelery.conf", root / "conf" / "__init__.py")
        app = module("gwcelery.app", task=task,
                     conf={k: v for k, v in vars(conf).items() if not k.startswith("_")})
        pkg = module("gwcelery", __path__=[str(root)], app=app, __version__=GWCELERY_VERSION)
        sys.modules["gwcelery"] = pkg
        tasks = module("gwcelery.tasks", __path__=[str(root / "tasks")])
        sys.modules["gwcelery.tasks"] = tasks
        for sub in ("gracedb", "core", "skymaps"):
            setattr(tasks, sub, stubs[f"gwcelery.tasks.{sub}"])
        if name == "conf":
            return conf
        if name == "tasks.raven":
            tasks.external_skymaps = module("gwcelery.tasks.external_skymaps")
            sys.modules["gwcelery.tasks.external_skymaps"] = tasks.external_skymaps
        return load(f"gwcelery.{name}", root / (name.replace(".", "/") + ".py"))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

# -- the web tests' store ------------------------------------------------------------------

WEB_NOTICES = (  # (notice, what happens to its event in the store)
    ("gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml", "expired"),
    ("gcn/json/fink-mm/S230518h-initial.json", "expired"),
    ("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml", "live"),
    ("gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml", "retracted"),
    ("gcn/json/fink-mm-kafka-2024-01/S240115k-preliminary-a.json", None),
    ("gcn/json/fink-mm-kafka-2024-01/S240115k-preliminary-b.json", "updated"),
)


def build_web_store(url: str, shared_file, *, n_background: int = 150,
                    n_inject: int = 4) -> dict[str, list[int]]:
    """Fill the store at ``url`` through the engine from the real notices of
    :data:`WEB_NOTICES`, in trigger order, each followed by a night of simulated alerts
    (``n_background`` uniform on the sky, ``n_inject`` counterparts drawn from its sky map
    at credible levels below 0.8, 0.01-0.2 d after the trigger); then the Swift event is
    retracted. Returns the injected alert ids per event id (revoked ones included)."""
    from dataclasses import replace

    from astropy import units as u

    from mmcross.catalogs import Store
    from mmcross.listeners import read_notice_file
    from mmcross.model.alert import AlertBatch
    from mmcross.model.config import notice_options
    from mmcross.model.event import NoticeAction

    config = Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2}})
    engine = Engine(config, store=Store(url))
    rng = np.random.default_rng(11)
    injected: dict[str, list[int]] = {}
    try:
        for i, (path, _fate) in enumerate(WEB_NOTICES):
            event = read_notice_file(shared_file(path), **notice_options(config))
            engine.on_notice(event)
            loc, t0 = event.localization, event.trigger_mjd_tai
            ra, dec = loc.sample(50 * n_inject, rng)
            keep = np.flatnonzero(loc.credible_level_at(ra, dec) < 0.8)[:n_inject]
            ra = np.concatenate([ra[keep], rng.uniform(0, 360, n_background)])
            dec = np.concatenate([dec[keep], np.degrees(np.arcsin(rng.uniform(-1, 1,
                                                                            n_background)))])
            ids = np.arange(len(ra), dtype=np.int64) + (i + 1) * 10_000_000
            mjd = t0 + rng.uniform(0.01, 0.2, len(ra))
            order = np.argsort(mjd)
            engine.on_alerts(AlertBatch(ids[order], (ids[order] + 9_000_000_000).astype(str),
                                        ra[order], dec[order], mjd[order]))
            injected.setdefault(event.event_id, []).extend(int(a) for a in ids[:len(keep)])
            if _fate == "retracted":
                engine.on_notice(replace(
                    event, action=NoticeAction.RETRACT, localization=None, revision=0,
                    notice_type="RETRACTION", notice_time=event.notice_time + 1 * u.h,
                    raw=b"retraction of " + event.raw[:40]))
    finally:
        engine.close()
    return injected


class JSONServer:
    """A local HTTP server (127.0.0.1, any free port) answering every GET and POST with
    ``answer(method, path, headers, body) -> (status, JSON value)``; a context manager whose
    :attr:`url` is ``http://127.0.0.1:PORT``."""

    def __init__(self, answer) -> None:
        def respond(handler: BaseHTTPRequestHandler, method: str) -> None:
            body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
            status, value = answer(method, handler.path, handler.headers, body)
            data = json.dumps(value).encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                respond(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                respond(self, "POST")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JSONServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

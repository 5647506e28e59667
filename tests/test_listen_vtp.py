"""``mmcross listen`` with its VOEvent transport wired in, against real peers on 127.0.0.1.

The service runs as a subprocess in embedded mode (SQLite + file spool, no Kafka):

* ``--vtp-port``: pygcn's own client (``gcn.listen``, in its own process) subscribes and
  receives a counterpart VOEvent for every match of a (mock) LVK notice with simulated Rubin
  alerts dropped into the spool, then a retraction VOEvent citing each one when the
  retraction notice follows; all validate as VOEvent 2.0;
* ``--gcn-vtp``: pygcn's test server (``pygcn-serve``) sends a real GCN VOEvent, which ends up
  as a stored event (``mmcross events --db``);
* ``--submit-port``: a registered partner pushing a real VOEvent with its token gets an ack,
  one with a wrong token a nak (and nothing is stored), and the partner's VTP subscription
  receives the counterparts of its own event and none of the GCN event's.

Waits are bounded and generous; nothing asserts on durations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import voeventparse as vp
from confluent_kafka import Producer
from lxml import etree

from mmcross.app.simulate import simulate_night
from mmcross.brokers.voevent_out import counterpart_ivorn
from mmcross.listeners import read_notice_file
from mmcross.listeners.partners import hash_token
from mmcross.model.config import Config, notice_options
from mmcross.model.match import Match
from mmcross.vtp.base import frame, transport_message
from tests.helpers import (
    BAT,
    GBM_NOTICE,
    GOOD_TOKEN,
    INTEGRAL,
    PYGCN_SUBSCRIBER,
    free_port,
    read_packet,
    result,
    submit,
    with_token,
)

GBM = GBM_NOTICE
PRELIMINARY = "gcn/json/userguide/MS181101ab-preliminary.json"
RETRACTION = "gcn/json/userguide/MS181101ab-retraction.json"
WAIT = 300.0  # seconds: bound of every wait (a hang guard), never a measure of speed

BASE_CONFIG = """
[localization]
credible_level_tolerance = 1e-2
[listeners]
roles = ["observation", "test"]
[kafka]
bootstrap_servers = ""
[spool]
settle = 0.2
poll_interval = 0.2
[vtp.broadcast]
iamalive_interval = 0.5
"""

PARTNER_CONFIG = f"""
[vtp.listen]
backoff_min = 0.1
backoff_max = 0.5
[partners.goto]
token_sha256 = "{hash_token(GOOD_TOKEN)}"
authorities = ["nasa.gsfc.gcn"]
formats = ["voevent"]
rate = 0.0
burst = 50
hosts = ["127.0.0.1"]
"""


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def drop(inbox: Path, name: str, data: bytes, mtime: float) -> None:
    """Write a file beside the inbox, then rename it in (as an operator should)."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, inbox / name)


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mmcross", "-q", *args],
                          capture_output=True, text=True, timeout=WAIT, check=True)
    return done.stdout


def stored_events(db: str) -> set[str]:
    return {e["event_id"] for e in json.loads(cli("events", "--db", db, "--json"))}


class Listen:
    """``mmcross listen`` in embedded mode in a subprocess; stopped with SIGTERM."""

    def __init__(self, tmp_path: Path, config_text: str, *flags: str) -> None:
        self.spool = tmp_path / "spool"
        self.db = f"sqlite:///{tmp_path / 'listen.sqlite'}"
        self.log = tmp_path / "listen.log"
        cfg = tmp_path / "listen.toml"
        cfg.write_text(config_text)
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mmcross", "listen", "--config", str(cfg),
                 "--spool", str(self.spool), "--db", self.db, *flags],
                stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: "embedded mode" in self.text() or self.proc.poll() is not None,
                   "mmcross listen to start")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def done(self) -> set[str]:
        return {p.name for p in (self.spool / "done").rglob("*") if p.is_file()}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode


class Subscriber:
    """A VTP subscriber in a thread: answers iamalives, acks and keeps each VOEvent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.voevents: list[bytes] = []
        self.iamalives = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                packet = read_packet(self.sock)
                if etree.QName(packet).localname == "Transport":
                    self.iamalives += 1
                    reply = transport_message("iamalive", packet.findtext("Origin") or "",
                                              "ivo://partner/subscriber")
                else:
                    self.voevents.append(etree.tostring(packet, xml_declaration=True,
                                                        encoding="UTF-8"))
                    reply = transport_message("ack", packet.get("ivorn"),
                                              "ivo://partner/subscriber")
                self.sock.sendall(frame(reply))
        except (OSError, ConnectionError) as exc:
            self.error = exc

    def stop(self) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def processes():
    started: list = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, Listen | Subscriber):
            proc.stop()
        else:
            proc.kill()
            proc.wait(10)


def jsonl_matches(path: Path) -> list[Match]:
    return [Match(**json.loads(line)) for line in path.read_text().splitlines()]


# -- pygcn subscribes to a running `mmcross listen` ----------------------------------------


def test_pygcn_gets_counterpart_and_retraction_voevents_from_mmcross_listen(
        shared_file, processes, tmp_path):
    prelim, retraction = shared_file(PRELIMINARY), shared_file(RETRACTION)
    config = Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2},
                                    "listeners": {"roles": ["observation", "test"]}})
    event = read_notice_file(prelim, **notice_options(config))
    t0 = event.trigger_mjd_tai
    night = simulate_night(300, start_mjd_tai=t0 + 0.01, duration_days=0.1,
                           rng=np.random.default_rng(7), n_previous=1, cutout_bytes=100,
                           inject=[(event.localization, 6, t0 + 0.02, t0 + 0.08)])
    container = tmp_path / "night.avro"
    night.write_container(container)

    port = free_port()
    listen = Listen(tmp_path, BASE_CONFIG, "--vtp-port", str(port))
    processes.append(listen)
    assert f"VTP broadcaster: counterpart VOEvents on 127.0.0.1:{port}" in listen.text()
    out, pygcn_log = tmp_path / "pygcn", tmp_path / "pygcn.log"
    out.mkdir()
    with open(pygcn_log, "wb") as err:
        processes.append(subprocess.Popen(
            [sys.executable, "-c", PYGCN_SUBSCRIBER, str(out), str(port)],
            stdout=subprocess.DEVNULL, stderr=err))
    wait_until(lambda: f"connected to 127.0.0.1:{port}" in pygcn_log.read_text(),
               "pygcn to subscribe")

    now = time.time()
    inbox = listen.spool / "in"
    drop(inbox, "MS181101ab-preliminary.json", prelim.read_bytes(), now - 20)
    drop(inbox, "night.avro", container.read_bytes(), now - 10)
    wait_until(lambda: listen.done() >= {"MS181101ab-preliminary.json", "night.avro"},
               "the notice and the alerts to be handled")
    reports = listen.spool / "out" / "matches.jsonl"
    matches = jsonl_matches(reports)
    assert matches and not any(m.retracted for m in matches)
    assert {m.event_id for m in matches} == {"lvk:MS181101ab"}
    injected = set(night.injected[0].tolist())
    assert {m.alert_id for m in matches} & injected  # the injected counterparts are found
    wait_until(lambda: len(list(out.glob("*.xml"))) >= len(matches),
               f"{len(matches)} counterpart VOEvents at pygcn")

    drop(inbox, "MS181101ab-retraction.json", retraction.read_bytes(), time.time() - 5)
    wait_until(lambda: "MS181101ab-retraction.json" in listen.done(), "the retraction")
    wait_until(lambda: len(list(out.glob("*.xml"))) >= 2 * len(matches),
               "the retraction VOEvents at pygcn")
    time.sleep(0.5)  # would let a wrongly duplicated packet arrive
    assert listen.stop() == 0
    packets = [vp.loads(p.read_bytes()) for p in sorted(out.glob("*.xml"))]
    assert len(packets) == 2 * len(matches)
    assert all(vp.valid_as_v2_0(p) for p in packets)
    counterparts = packets[:len(matches)]
    retractions = packets[len(matches):]
    assert ({int(vp.get_toplevel_params(p)["alert_id"]["value"]) for p in counterparts}
            == {m.alert_id for m in matches})
    assert {p.attrib["ivorn"] for p in counterparts} == {counterpart_ivorn(m) for m in matches}
    for p in counterparts:
        assert vp.get_toplevel_params(p)["event_id"]["value"] == "lvk:MS181101ab"
    assert all(r.Citations.EventIVORN.attrib["cite"] == "retraction" for r in retractions)
    assert ({r.Citations.EventIVORN.text for r in retractions}
            == {counterpart_ivorn(m) for m in matches})
    revoked = [m for m in jsonl_matches(reports) if m.retracted]
    assert {m.alert_id for m in revoked} == {m.alert_id for m in matches}


# -- GCN Classic over VTP in, partners pushing over VTP ------------------------------------


def test_gcn_vtp_source_and_partner_submissions_through_mmcross_listen(
        shared_file, processes, tmp_path):
    bat, gbm, integral = shared_file(BAT), shared_file(GBM), shared_file(INTEGRAL)
    gcn_port, vtp_port, submit_port = free_port(), free_port(), free_port()
    processes.append(subprocess.Popen(
        [sys.executable, "-c", "from gcn.cmdline import serve_main; serve_main()",
         "--host", f"127.0.0.1:{gcn_port}", "-t", "1", str(gbm)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    listen = Listen(tmp_path, BASE_CONFIG + PARTNER_CONFIG, "--gcn-vtp", f"127.0.0.1:{gcn_port}",
                    "--vtp-port", str(vtp_port), "--submit-port", str(submit_port))
    processes.append(listen)

    # GCN Classic over VTP: the GBM notice served by pygcn reaches the engine and the store.
    wait_until(lambda: "fermi-gbm:726773850" in stored_events(listen.db),
               "the GCN VOEvent from pygcn-serve in the store")

    # The partner's subscription (its host is 127.0.0.1), subscribed once an iamalive came.
    sub = Subscriber(vtp_port)
    processes.append(sub)
    wait_until(lambda: sub.iamalives, "the first iamalive at the partner's subscriber")

    # Right credential: ack (sent once the service applied the event); wrong one: nak.
    reply = submit(submit_port, with_token(bat.read_bytes(), GOOD_TOKEN))
    assert reply.get("role") == "ack", result(reply)
    assert reply.findtext("Origin").startswith("ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos")
    reply = submit(submit_port, with_token(integral.read_bytes(), "not the token"))
    assert reply.get("role") == "nak" and "authentication failed" in result(reply)
    events = stored_events(listen.db)
    assert "swift:1208389" in events and "integral:10472" not in events

    # Rubin alerts with counterparts of both the partner's event and the GCN one.
    config = Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2}})
    opts = notice_options(config)
    bat_event, gbm_event = read_notice_file(bat, **opts), read_notice_file(gbm, **opts)
    t0 = bat_event.trigger_mjd_tai
    night = simulate_night(300, start_mjd_tai=t0 + 0.01, duration_days=0.1,
                           rng=np.random.default_rng(11), n_previous=1, cutout_bytes=100,
                           inject=[(bat_event.localization, 3, t0 + 0.02, t0 + 0.08),
                                   (gbm_event.localization, 4, t0 + 0.02, t0 + 0.08)])
    container = tmp_path / "night.avro"
    night.write_container(container)
    drop(listen.spool / "in", "night.avro", container.read_bytes(), time.time() - 5)
    wait_until(lambda: "night.avro" in listen.done(), "the alerts to be handled")
    stored = [Match(**r) for r in map(json.loads, cli(
        "matches", "--db", listen.db, "--json").splitlines())]
    own = {m.alert_id for m in stored if m.event_id == "swift:1208389"}
    others = {m.alert_id for m in stored if m.event_id != "swift:1208389"}
    assert own & set(night.injected[0].tolist())
    assert others  # the GCN event has counterparts too, which the partner must not get

    wait_until(lambda: len(sub.voevents) >= len(own), "the partner's counterparts")
    time.sleep(1.0)  # would let a wrongly forwarded counterpart of the GCN event arrive
    got = [vp.get_toplevel_params(vp.loads(p)) for p in sub.voevents]
    assert sorted(int(p["alert_id"]["value"]) for p in got) == sorted(own)
    assert {p["event_id"]["value"] for p in got} == {"swift:1208389"}
    assert sub.error is None and sub.iamalives >= 1
    assert listen.stop() == 0
    log = listen.text()
    assert "refused submission ivo://nasa.gsfc.gcn/INTEGRAL" in log
    assert "missing or wrong mmcross_token" in log
    assert "accepted swift:1208389" in log


# -- Kafka mode: the same pieces next to the Kafka loop ------------------------------------


@pytest.mark.kafka
def test_kafka_mode_partner_topic_and_vtp_submissions_reach_the_partner_subscription(
        kafka_broker, shared_file, tmp_path):
    from mmcross.app.service import ListenService
    from mmcross.catalogs import Store
    from mmcross.listeners.partners import SIGNATURE_HEADER, sign_submission
    from tests.helpers import (
        create_topics,
        group_offset,
        offline_matches,
        produce_values,
        unique_names,
    )

    names = unique_names()
    submissions = f"submissions-{names['group']}"
    create_topics(kafka_broker, [names["alerts"], names["reports"], names["voevents"],
                                  names["dead"], submissions], 1)
    config = Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2},
        "kafka": {"bootstrap_servers": kafka_broker, "alert_topics": [names["alerts"]],
                  "group_id": names["group"], "report_topic": names["reports"],
                  "voevent_topic": names["voevents"], "dead_letter_topic": names["dead"],
                  "gcn": {"topics": []}},
        "service": {"poll_timeout": 0.2},
        "vtp": {"broadcast": {"enabled": True, "port": 0, "iamalive_interval": 0.5}},
        "submit": {"vtp": {"enabled": True, "port": 0},
                   "kafka": {"enabled": True, "topic": submissions,
                             "group_id": f"sub-{names['group']}"}},
        "partners": {"goto": {"token_sha256": hash_token(GOOD_TOKEN),
                              "authorities": ["nasa.gsfc.gcn"], "rate": 0.0, "burst": 50,
                              "hosts": ["127.0.0.1"]}}})
    bat, gbm, integral = shared_file(BAT), shared_file(GBM), shared_file(INTEGRAL)
    db = f"sqlite:///{tmp_path / 'live.sqlite'}"
    service = ListenService(config, Store(db), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    sub = None
    try:
        wait_until(lambda: service.transports.partner_kafka is not None,
                   "the service to start")  # the last piece started
        t = service.transports
        sub = Subscriber(t.broadcaster.address[1])
        wait_until(lambda: sub.iamalives, "the first iamalive at the partner's subscriber")
        # The partner's GBM event over the Kafka topic (signed), a forged one refused;
        # its BAT event over VTP.
        producer = Producer({"bootstrap.servers": kafka_broker})
        producer.produce(submissions, key=b"goto", value=gbm.read_bytes(), headers=[
            (SIGNATURE_HEADER, sign_submission(GOOD_TOKEN, "goto", gbm.read_bytes()))])
        producer.produce(submissions, key=b"goto", value=integral.read_bytes(), headers=[
            (SIGNATURE_HEADER, sign_submission("forged", "goto", integral.read_bytes()))])
        assert producer.flush(30) == 0
        reply = submit(t.receiver.port, with_token(bat.read_bytes(), GOOD_TOKEN))
        assert reply.get("role") == "ack", result(reply)
        wait_until(lambda: t.partner_kafka.stats["messages"] >= 2, "both topic submissions")
        assert t.partner_kafka.stats["accepted"] == 1
        assert t.partner_kafka.stats["bad_credential"] == 1
        wait_until(lambda: "fermi-gbm:726773850" in service.engine.index,
                   "the partner's topic event in the index")
        assert "swift:1208389" in service.engine.index  # applied before the ack
        assert "integral:10472" not in service.engine.index

        opts = notice_options(config)
        bat_event, gbm_event = read_notice_file(bat, **opts), read_notice_file(gbm, **opts)
        t0 = bat_event.trigger_mjd_tai
        night = simulate_night(300, start_mjd_tai=t0 + 0.01, duration_days=0.1,
                               rng=np.random.default_rng(13), n_previous=1, cutout_bytes=100,
                               inject=[(bat_event.localization, 3, t0 + 0.02, t0 + 0.08),
                                       (gbm_event.localization, 3, t0 + 0.02, t0 + 0.08)])
        messages = list(night.messages())
        produce_values(kafka_broker, names["alerts"], messages)
        wait_until(lambda: group_offset(kafka_broker, names["group"], names["alerts"])
                   == len(messages), "the alerts to be committed")
        own = {(m.event_id, m.alert_id)
               for m in offline_matches(config, [gbm_event, bat_event, messages]).values()}
        assert {e for e, _ in own} == {"swift:1208389", "fermi-gbm:726773850"}

        def stored() -> set[tuple[str, int]]:
            reader = Store(db)  # the matches the running service stored
            try:
                return {(m.event_id, m.alert_id) for e in ("swift:1208389", "fermi-gbm:726773850")
                        for m in reader.matches(e)}
            finally:
                reader.close()

        # the store is written after each transaction commits (offsets included), so it may
        # lag the committed offsets by a moment
        wait_until(lambda: stored() == own, "the committed matches in the store", timeout=300)
        wait_until(lambda: len(sub.voevents) >= len(own), "the partner's counterparts")
        time.sleep(0.5)  # would let a wrongly duplicated packet arrive
    finally:
        service.stop()
        thread.join(30)
        if sub is not None:
            sub.stop()
    assert not thread.is_alive()
    got = [vp.get_toplevel_params(vp.loads(v)) for v in sub.voevents]
    assert len(got) == len(own)
    assert {(p["event_id"]["value"], int(p["alert_id"]["value"])) for p in got} == own


def test_listen_flags_turn_the_transport_pieces_on_and_config_leaves_them_off():
    from mmcross.app.cli import _listen_overrides, build_parser
    from mmcross.app.transports import TransportSettings

    def settings(*argv: str) -> tuple[TransportSettings, Config]:
        args = build_parser().parse_args(["listen", *argv])
        config = Config.load(overrides=_listen_overrides(args))
        return TransportSettings.from_config(config), config

    off, config = settings()
    assert off == TransportSettings()  # nothing runs unless asked
    assert not (off.broadcast or off.gcn_vtp or off.submit_vtp or off.submit_kafka)
    on, config = settings("--vtp-port", "9001", "--submit-port", "9002",
                          "--gcn-vtp", "a.example:8099", "--gcn-vtp", "b.example")
    assert on.broadcast and on.submit_vtp and on.gcn_vtp == ("a.example:8099", "b.example")
    assert config.get("vtp.broadcast.port") == 9001
    assert config.get("vtp.broadcast.host") == "127.0.0.1"  # loopback unless --vtp-host
    assert config.get("submit.vtp.port") == 9002
    host_only, config = settings("--vtp-host", "0.0.0.0")
    assert host_only.broadcast and not host_only.submit_vtp
    assert (config.get("vtp.broadcast.host"), config.get("vtp.broadcast.port")) == (
        "0.0.0.0", 8099)

"""VOEvent Transport Protocol both ways, against real peers on 127.0.0.1.

* pygcn's own test server (``pygcn-serve``) sends real GCN VOEvents to our listener;
* pygcn's client (``gcn.listen``) subscribes to our broadcaster and receives counterpart and
  retraction VOEvents, which must validate as VOEvent 2.0;
* a stalled raw-socket subscriber must not hold back a healthy pygcn one and is dropped;
* hostile frames (1 GB length prefix, truncated frame, entity expansion) are refused and
  counted, and the listener carries on;
* the protocol base on its own: frames cut at every byte, a 4 GB prefix refused before any
  payload is read or allocated, closed/silent/stopped connections, iamalive answered;
* Comet, the reference implementation (its own venv, ``scripts/comet_env.sh``):
  ``comet-sendvo`` submits to our receiver, ``twistd comet`` subscribes to our broadcaster,
  and our GCN listener subscribes to a Comet broker that relays a ``comet-sendvo`` submission.

Waits are bounded and generous; nothing asserts on durations.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import voeventparse as vp
from lxml import etree

from mmcross.brokers.voevent_out import counterpart_ivorn
from mmcross.brokers.vtp import BroadcasterSettings, SubscriptionFilter, VTPBroadcaster
from mmcross.listeners import parse_notice
from mmcross.listeners.partners import PartnerRegistry, hash_token
from mmcross.listeners.vtp import VTPListener, VTPListenerSettings, parse_host_port
from mmcross.listeners.vtp_receiver import ReceiverSettings, VTPReceiver
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import BadNoticeError, ConfigError
from mmcross.vtp.base import (
    BadPacketError,
    ConnectionClosedError,
    FrameDecoder,
    FramedSocket,
    FrameTooLargeError,
    nak,
    read_packet,
    transport_message,
)
from mmcross.vtp.receiver import Receiver, Submission, SubmissionRefusedError
from mmcross.vtp.subscriber import Subscriber
from tests.helpers import (
    GOOD_TOKEN,
    PYGCN_SUBSCRIBER,
    REPO,
    free_port,
    make_match,
    with_token,
)

GCN = "gcn/voevent/fink-mm-kafka-2024-01"
GBM = f"{GCN}/Fermi_GBM_Gnd_Pos_726773850-268.xml"
BAT = f"{GCN}/Swift_BAT_GRB_Pos_1208389-262.xml"
GBM_VOE = "gcn/voevent/fink-mm/Fermi_GBM_Gnd_Pos_681547990.xml"  # in the voe: namespace
WAIT = 30.0  # seconds: upper bound of every wait, never an assertion on speed

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE voe:VOEvent [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
]>
<voe:VOEvent xmlns:voe="http://www.ivoa.net/xml/VOEvent/v2.0" ivorn="ivo://evil/x#1"
 role="observation" version="2.0"><What><Param name="Packet_Type" value="&d;"/></What>
</voe:VOEvent>"""





def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    return exactly(struct.unpack("!I", exactly(4))[0])


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def config() -> Config:
    return Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2}})


def start_pygcn_subscriber(processes, port: int, out: Path) -> None:
    out.mkdir()
    processes.append(subprocess.Popen([sys.executable, "-c", PYGCN_SUBSCRIBER, str(out),
                                       str(port)], stdout=subprocess.DEVNULL))


def received(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.glob("*.xml"))]


# -- small pieces --------------------------------------------------------------------------


def test_host_port_parsing_and_settings_from_config(config):
    assert parse_host_port("45.58.43.186:8099") == ("45.58.43.186", 8099)
    assert parse_host_port("gcn.example") == ("gcn.example", 8099)
    assert parse_host_port("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ConfigError):
        parse_host_port("host:notaport")
    cfg = Config.load(overrides={"vtp": {"listen": {"servers": ["a:1", "b"],
                                                    "iamalive_timeout": 5}}})
    s = VTPListenerSettings.from_config(cfg)
    assert s.servers == (("a", 1), ("b", 8099)) and s.iamalive_timeout == 5.0
    assert VTPListenerSettings.from_config(cfg, ["c:2"]).servers == (("c", 2),)
    with pytest.raises(ConfigError):
        VTPListener(VTPListenerSettings(servers=()), print)


def test_subscription_filter_keeps_central_unlikely_chance_matches():
    f = SubscriptionFilter.from_mapping({"kinds": ["GW"], "instruments": ["lvk"],
                                         "max_credible_level": 0.5, "max_p_chance": 0.05})
    assert f.accepts(make_match(credible_level=0.2, p_chance=0.01))
    assert f.accepts(make_match(credible_level=0.5, p_chance=0.05))  # limits inclusive
    assert not f.accepts(make_match(credible_level=0.6))  # outside the 50% region
    assert not f.accepts(make_match(credible_level=0.2, p_chance=0.2))
    assert not f.accepts(make_match(credible_level=0.2, event_kind="grb"))
    assert not f.accepts(make_match(credible_level=0.2, instrument="Fermi-GBM"))
    assert SubscriptionFilter().accepts(make_match(credible_level=1.0, p_chance=1.0))
    for bad in ({"max_p_chance": 0}, {"kinds": ["gravity"]}, {"min_credible_level": 0.1}):
        with pytest.raises(ConfigError):
            SubscriptionFilter.from_mapping(bad)
    cfg = Config.load(overrides={"vtp": {"broadcast": {
        "port": 0, "filters": {"10.0.0.7": {"max_p_chance": 0.01}}}}})
    s = BroadcasterSettings.from_config(cfg)
    assert s.port == 0 and s.host == "127.0.0.1"
    assert s.filters["10.0.0.7"].max_p_chance == 0.01
    assert s.default_filter == SubscriptionFilter()


def test_entity_expansion_is_refused_by_parse_notice():
    with pytest.raises(BadNoticeError):
        parse_notice(BILLION_LAUGHS, source="test")


# -- the protocol base (mmcross.vtp.base) ---------------------------------------------------


class ScriptedSocket:
    """A stand-in for a connected socket whose ``recv`` returns scripted chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.recv_calls = 0

    def settimeout(self, _timeout: float) -> None:
        pass

    def recv(self, _n: int) -> bytes:
        self.recv_calls += 1
        return self.chunks.pop(0) if self.chunks else b""


def test_frame_decoder_gives_exact_frames_at_every_split():
    first, second = b"<Transport role='iamalive'/>", b"x" * 300
    stream = struct.pack("!I", len(first)) + first + struct.pack("!I", len(second)) + second
    for i in range(len(stream) + 1):
        for j in (i, (i + len(stream)) // 2, len(stream)):
            decoder = FrameDecoder(max_bytes=1024)
            got = [*decoder.feed(stream[:i]), *decoder.feed(stream[i:j]),
                   *decoder.feed(stream[j:])]
            assert got == [first, second], (i, j)
            assert not decoder.partial
    decoder = FrameDecoder(max_bytes=1024)
    assert decoder.feed(stream[:3]) == [] and decoder.partial  # inside the length prefix


def test_framed_socket_reads_a_frame_split_into_single_bytes_then_sees_the_close():
    payload = b"<VOEvent ivorn='ivo://x/y#1'/>"
    sock = ScriptedSocket([bytes([b]) for b in frame(payload) + frame(b"")])
    conn = FramedSocket(sock, "peer:1", max_frame_bytes=1024, idle_timeout=WAIT)
    assert conn.read_frame() == payload
    assert conn.read_frame() == b""  # an empty frame is a frame
    with pytest.raises(ConnectionClosedError) as info:
        conn.read_frame()
    assert (info.value.reason, info.value.partial, info.value.peer) == ("closed", False,
                                                                        "peer:1")


def test_oversize_length_prefix_is_refused_before_reading_or_allocating_the_payload():
    endless = ScriptedSocket([struct.pack("!I", 0xFFFFFFFF)] + [b"a" * 65536] * 100)
    conn = FramedSocket(endless, "peer:2", max_frame_bytes=1 << 20, idle_timeout=WAIT)
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLargeError) as info:
            conn.read_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.value.length, info.value.limit) == (0xFFFFFFFF, 1 << 20)
    assert endless.recv_calls == 1  # refused on the prefix: nothing of the 4 GB was read
    assert peak < 1 << 20  # and nothing near it allocated


def test_closed_connection_inside_a_frame_is_partial_and_silence_or_stop_end_reads():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(struct.pack("!I", 100) + b"only ten b")
        b.close()
        conn = FramedSocket(a, "peer:3", max_frame_bytes=1024, idle_timeout=WAIT)
        with pytest.raises(ConnectionClosedError) as info:
            conn.read_frame()
        assert (info.value.reason, info.value.partial) == ("closed", True)
    a, b = socket.socketpair()
    with a, b:  # the peer says nothing: silent after the idle timeout
        conn = FramedSocket(a, "peer:4", max_frame_bytes=1024, idle_timeout=0.05)
        with pytest.raises(ConnectionClosedError) as info:
            conn.read_frame()
        assert (info.value.reason, info.value.partial) == ("silent", False)
        stop = threading.Event()
        stop.set()
        conn = FramedSocket(a, "peer:4", max_frame_bytes=1024, idle_timeout=WAIT, stop=stop)
        with pytest.raises(ConnectionClosedError) as info:
            conn.read_frame()
        assert info.value.reason == "stopped"


def test_read_packet_classifies_and_refuses_with_a_reason():
    alive = read_packet(transport_message("iamalive", "ivo://broker"))
    assert (alive.kind, alive.role, alive.origin, alive.ivorn) == (
        "Transport", "iamalive", "ivo://broker", "")
    refusal = read_packet(nak("ivo://a/b#1", "ivo://me", "bad_notice: no position"))
    assert refusal.role == "nak" and refusal.result == "bad_notice: no position"
    assert etree.fromstring(refusal.payload).findtext("Meta/Result") == "bad_notice: no position"
    event = read_packet(b"<VOEvent ivorn='ivo://a/b#2' role='test'/>")
    assert (event.kind, event.role, event.ivorn) == ("VOEvent", "test", "ivo://a/b#2")
    for payload, reason in [(BILLION_LAUGHS, "refused_doctype"), (b"<not-xml", "unparsable"),
                            (b"<VOEvent role='test'/>", "not_voevent"),
                            (b"<html/>", "not_voevent")]:
        with pytest.raises(BadPacketError) as info:
            read_packet(payload, "peer:5")
        assert info.value.reason == reason and info.value.peer == "peer:5"


def test_subscriber_role_answers_iamalive_split_across_tcp_segments_and_acks_voevents():
    """A raw TCP broker sends an iamalive one byte per segment, then a VOEvent."""
    voevent = b"<VOEvent ivorn='ivo://broker.test/x#1' role='observation'/>"
    replies: list[bytes] = []
    seen: list[tuple[bytes, str]] = []
    done = threading.Event()

    def broker(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in frame(transport_message("iamalive", "ivo://broker.test")):
            conn.sendall(bytes([byte]))
        replies.append(read_frame(conn))
        conn.sendall(frame(voevent))
        replies.append(read_frame(conn))
        done.wait(WAIT)

    server = ScriptedServer([broker])
    role = Subscriber([("127.0.0.1", server.port)],
                      lambda packet, peer: seen.append((packet.payload, peer)),
                      ivorn="ivo://mmcross-test/role", backoff_min=0.05, backoff_max=0.1)
    role.start()
    try:
        wait_until(lambda: seen, "the VOEvent at the handler")
    finally:
        done.set()
        role.stop()
        server.close()
    assert not server.errors
    alive, acked = (etree.fromstring(r) for r in replies)
    assert alive.get("role") == "iamalive"
    assert alive.findtext("Origin") == "ivo://broker.test"
    assert alive.findtext("Response") == "ivo://mmcross-test/role"
    assert acked.get("role") == "ack" and acked.findtext("Origin") == "ivo://broker.test/x#1"
    assert seen == [(voevent, f"127.0.0.1:{server.port}")]
    assert role.stats["iamalive"] == 1 and role.stats["voevents"] == 1


def test_receiver_role_acks_naks_with_the_handlers_reason_and_survives_a_failing_handler():
    def handler(submission: Submission) -> str:
        assert submission.packet is not None and submission.host == "127.0.0.1"
        if submission.packet.ivorn.endswith("#refuse"):
            raise SubmissionRefusedError("bad_notice", "details for the log", reply="no")
        if submission.packet.ivorn.endswith("#crash"):
            raise RuntimeError("handler bug")
        return submission.packet.ivorn

    role = Receiver(handler, port=0, ivorn="ivo://mmcross-test/receiver").start()
    answers = []
    try:
        with socket.create_connection(("127.0.0.1", role.port), WAIT) as s:
            s.settimeout(WAIT)
            for suffix in ("ok", "refuse", "crash", "ok2"):
                s.sendall(frame(f"<VOEvent ivorn='ivo://a/b#{suffix}' role='test'/>".encode()))
                answers.append(etree.fromstring(read_frame(s)))
            s.sendall(frame(transport_message("iamalive", "ivo://author")))
            answers.append(etree.fromstring(read_frame(s)))
    finally:
        role.stop()
    roles = [(a.get("role"), a.findtext("Origin"), a.findtext("Meta/Result")) for a in answers]
    assert roles == [("ack", "ivo://a/b#ok", None),
                     ("nak", "ivo://a/b#refuse", "bad_notice: no"),
                     ("nak", "ivo://a/b#crash", "internal error: not accepted, retry later"),
                     ("ack", "ivo://a/b#ok2", None),
                     ("iamalive", "ivo://author", None)]
    assert answers[-1].findtext("Response") == "ivo://mmcross-test/receiver"
    assert (role.stats["accepted"], role.stats["bad_notice"], role.stats["refused"],
            role.stats["handler_errors"]) == (2, 1, 1, 1)


# -- GCN Classic over VTP in ---------------------------------------------------------------


def test_listener_gets_real_gcn_voevents_from_pygcn_serve(shared_file, processes, config):
    files = [shared_file(GBM), shared_file(BAT)]
    port = free_port()
    processes.append(subprocess.Popen(
        [sys.executable, "-c", "from gcn.cmdline import serve_main; serve_main()",
         "--host", f"127.0.0.1:{port}", "-t", "1", *map(str, files)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    events, lock = [], threading.Lock()
    listener = VTPListener.from_config(config, events.append, servers=[f"127.0.0.1:{port}"],
                                       lock=lock, backoff_min=0.1, backoff_max=0.5)
    listener.start()
    try:
        wait_until(lambda: {e.event_id for e in events} >= {"fermi-gbm:726773850",
                                                            "swift:1208389"},
                   "both real GCN notices over VTP")
    finally:
        listener.stop()
    by_id = {e.event_id: e for e in events}
    for path, event_id in zip(files, ["fermi-gbm:726773850", "swift:1208389"], strict=True):
        event = by_id[event_id]
        assert event.raw == path.read_bytes()  # the payload exactly as served
        assert event.source.startswith(f"vtp://127.0.0.1:{port} ivo://nasa.gsfc.gcn/")
        ra = float(vp.get_event_position(vp.loads(path.read_bytes())).ra)
        assert abs(event.ra - ra) < 1e-6
    assert events[0].event_id == "fermi-gbm:726773850"  # served in order
    assert listener.stats["bad_notices"] == 0 and listener.stats["events"] >= 2


class ScriptedServer:
    """A hostile VTP 'server': connection i runs scripts[i](conn), then is closed."""

    def __init__(self, scripts: list[Callable[[socket.socket], None]]) -> None:
        self.scripts = scripts
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for script in self.scripts:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(WAIT)
                try:
                    script(conn)
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)

    def close(self) -> None:
        self.sock.close()


def test_listener_refuses_hostile_frames_and_carries_on(shared_file, config):
    good = shared_file(BAT).read_bytes()
    replies: dict[str, bytes] = {}
    done = threading.Event()

    def huge_prefix(conn):
        conn.sendall(struct.pack("!I", 1 << 30) + b"<voe:VOEvent")
        with contextlib.suppress(ConnectionResetError):  # reset: rest of frame unread
            assert conn.recv(1) == b""  # the listener hangs up without replying

    def truncated(conn):
        conn.sendall(struct.pack("!I", 1000) + good[:10])

    def hostile_then_good(conn):
        conn.sendall(frame(BILLION_LAUGHS))
        conn.sendall(frame(b"<not-xml"))
        conn.sendall(frame(transport_message("iamalive", "ivo://test-broker")))
        replies["iamalive"] = read_frame(conn)
        conn.sendall(frame(good))
        replies["ack"] = read_frame(conn)
        done.wait(WAIT)

    server = ScriptedServer([huge_prefix, truncated, hostile_then_good])
    events: list = []
    listener = VTPListener(VTPListenerSettings(servers=(("127.0.0.1", server.port),),
                                               ivorn="ivo://mmcross-test/listener",
                                               backoff_min=0.05, backoff_max=0.1,
                                               max_packet_bytes=1 << 20),
                           events.append, options=notice_options(config))
    listener.start()
    try:
        wait_until(lambda: events, "the good notice after the hostile ones")
    finally:
        done.set()
        listener.stop()
        server.close()
    assert not server.errors
    assert [e.event_id for e in events] == ["swift:1208389"]
    s = listener.stats
    assert (s["oversized_frames"], s["truncated_frames"], s["refused_doctype"],
            s["unparsable"]) == (1, 1, 1, 1)
    assert s["connections"] == 3
    alive = etree.fromstring(replies["iamalive"])
    assert alive.get("role") == "iamalive"
    assert alive.findtext("Origin") == "ivo://test-broker"
    assert alive.findtext("Response") == "ivo://mmcross-test/listener"
    ack = etree.fromstring(replies["ack"])
    assert ack.get("role") == "ack"
    assert ack.findtext("Origin") == etree.fromstring(good).get("ivorn")


# -- counterpart VOEvents out --------------------------------------------------------------


def test_pygcn_receives_valid_counterpart_and_retraction(tmp_path, processes):
    broadcaster = VTPBroadcaster(BroadcasterSettings(
        port=0, iamalive_interval=0.3, default_filter=SubscriptionFilter(max_p_chance=0.05)))
    _, port = broadcaster.start()
    try:
        out = tmp_path / "pygcn"
        start_pygcn_subscriber(processes, port, out)
        wait_until(lambda: broadcaster.subscribers(), "pygcn to subscribe")
        good, unlikely = make_match(0, p_chance=0.01), make_match(1, p_chance=0.5)
        broadcaster.write([good, unlikely])
        broadcaster.write([make_match(0, p_chance=0.01, retracted=True)])
        wait_until(lambda: len(received(out)) >= 2, "two VOEvents at pygcn")
        wait_until(lambda: broadcaster.stats["acks"] >= 2, "pygcn's acks")
        wait_until(lambda: broadcaster.stats["iamalive_replies"] >= 2,
                   "pygcn's iamalive replies")
        time.sleep(0.5)  # would let a wrongly forwarded third packet arrive
        packets = received(out)
        subs = broadcaster.subscribers()
    finally:
        broadcaster.close()
    assert len(packets) == 2  # the p_chance = 0.5 match was filtered out
    counterpart, retraction = (vp.loads(p) for p in packets)
    assert vp.valid_as_v2_0(counterpart) and vp.valid_as_v2_0(retraction)
    assert counterpart.attrib["ivorn"] == counterpart_ivorn(good)
    assert vp.get_toplevel_params(counterpart)["alert_id"]["value"] == str(good.alert_id)
    assert retraction.Citations.EventIVORN.attrib["cite"] == "retraction"
    assert retraction.Citations.EventIVORN.text == counterpart_ivorn(good)
    assert broadcaster.stats["filtered_out"] == 1 and broadcaster.stats["naks"] == 0
    assert len(subs) == 1 and broadcaster.stats["dropped_subscribers"] == 0


def test_stalled_subscriber_does_not_hold_back_a_healthy_one(tmp_path, processes):
    # small socket buffers: the stalled subscriber's sender blocks after a few packets
    broadcaster = VTPBroadcaster(BroadcasterSettings(port=0, iamalive_interval=0.5,
                                                     send_buffer_bytes=8192))
    _, port = broadcaster.start()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
    try:
        stalled.connect(("127.0.0.1", port))  # and never reads nor answers
        out = tmp_path / "pygcn"
        start_pygcn_subscriber(processes, port, out)
        wait_until(lambda: len(broadcaster.subscribers()) == 2, "both subscribers")
        n = 300
        for start in range(0, n, 50):
            broadcaster.write([make_match(i) for i in range(start, start + 50)])
        wait_until(lambda: len(received(out)) >= n, f"{n} VOEvents at the healthy subscriber")
        wait_until(lambda: broadcaster.stats["dropped_subscribers"] >= 1,
                   "the stalled subscriber to be dropped")
        wait_until(lambda: broadcaster.stats["acks"] >= n, "the healthy subscriber's acks")
        packets = received(out)
        remaining = broadcaster.subscribers()
    finally:
        broadcaster.close()
        stalled.close()
    ids = [int(vp.get_toplevel_params(vp.loads(p))["alert_id"]["value"]) for p in packets]
    assert ids == [make_match(i).alert_id for i in range(n)]  # all, in order, once
    assert broadcaster.stats["dropped_no_iamalive"] + broadcaster.stats["dropped_no_acks"] == 1
    assert broadcaster.stats["sent"] < 2 * n  # the stalled one really was stuck
    assert len(remaining) == 1 and remaining[0].stats["acks"] >= n
    assert remaining[0].stats.get("queue_overflow", 0) == 0


def test_full_queue_drops_the_oldest_packets_and_keeps_the_newest():
    queue_size, n = 10, 200
    broadcaster = VTPBroadcaster(BroadcasterSettings(
        port=0, iamalive_interval=30, queue_size=queue_size, send_buffer_bytes=8192,
        max_outstanding_acks=10 * n))
    _, port = broadcaster.start()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.connect(("127.0.0.1", port))
        wait_until(lambda: broadcaster.subscribers(), "the subscriber")
        broadcaster.write([make_match(i) for i in range(n)])
        wait_until(lambda: broadcaster.stats["matches"] == n, "the dispatch of every match")
        overflow = broadcaster.stats["queue_overflow"]
        assert overflow > 0 and broadcaster.subscribers()[0].queued == queue_size
        slow.settimeout(WAIT)  # now catch up: in-flight packets, then the newest ones
        ids = [int(vp.get_toplevel_params(vp.loads(read_frame(slow)))["alert_id"]["value"])
               for _ in range(n - overflow)]
    finally:
        broadcaster.close()
        slow.close()
    expected = [make_match(i).alert_id for i in range(n)]
    assert ids == expected[:n - overflow - queue_size] + expected[-queue_size:]


def test_subscriber_sending_nak_or_oversized_reply_is_dropped():
    broadcaster = VTPBroadcaster(BroadcasterSettings(port=0, iamalive_interval=30,
                                                     max_reply_bytes=4096))
    _, port = broadcaster.start()
    try:
        with socket.create_connection(("127.0.0.1", port), WAIT) as naker:
            wait_until(lambda: broadcaster.subscribers(), "the subscriber")
            broadcaster.write([make_match()])
            origin = etree.fromstring(read_frame(naker)).get("ivorn")
            naker.sendall(frame(transport_message("nak", origin, "ivo://naker")))
            wait_until(lambda: broadcaster.stats["dropped_nak"] == 1, "drop after nak")
        with socket.create_connection(("127.0.0.1", port), WAIT) as big:
            wait_until(lambda: broadcaster.subscribers(), "the second subscriber")
            big.sendall(struct.pack("!I", 1 << 30))
            wait_until(lambda: broadcaster.stats["dropped_oversized_reply"] == 1,
                       "drop after a 1 GB reply prefix")
            assert big.recv(1) == b""  # the broadcaster hung up
    finally:
        broadcaster.close()
    assert broadcaster.stats["naks"] == 1 and not broadcaster.subscribers()


# -- both ways through the engine ----------------------------------------------------------


def test_gcn_notice_over_vtp_to_counterpart_at_a_pygcn_subscriber(shared_file, processes,
                                                                    config, tmp_path):
    """pygcn-serve -> VTPListener -> Engine -> VTPBroadcaster (as a sink) -> gcn.listen."""
    from mmcross.app.engine import Engine
    from mmcross.model.alert import AlertBatch

    bat = shared_file(BAT)
    notice = vp.loads(bat.read_bytes())
    pos = vp.get_event_position(notice)
    broadcaster = VTPBroadcaster(BroadcasterSettings(port=0, iamalive_interval=0.5))
    _, out_port = broadcaster.start()
    engine = Engine(config, sinks=[broadcaster])
    lock = threading.Lock()
    in_port = free_port()
    processes.append(subprocess.Popen(
        [sys.executable, "-c", "from gcn.cmdline import serve_main; serve_main()",
         "--host", f"127.0.0.1:{in_port}", "-t", "1", str(bat)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    listener = VTPListener.from_config(config, engine.on_notice, servers=[f"127.0.0.1:{in_port}"],
                                       lock=lock, backoff_min=0.1, backoff_max=0.5)
    out = tmp_path / "pygcn"
    listener.start()
    try:
        start_pygcn_subscriber(processes, out_port, out)
        wait_until(lambda: "swift:1208389" in engine.index and broadcaster.subscribers(),
                   "the notice in the index and a subscriber")
        with lock:
            t0 = engine.index.get("swift:1208389").trigger_mjd_tai
        batch = AlertBatch(alert_id=np.array([101, 102], dtype=np.int64),
                           object_id=np.array(["101", "102"], dtype=object),
                           ra=np.array([float(pos.ra), (float(pos.ra) + 90.0) % 360.0]),
                           dec=np.array([float(pos.dec), 0.0]),
                           mjd_tai=np.array([t0 + 0.1, t0 + 0.1]))
        with lock:
            found = engine.on_alerts(batch)
        assert [m.alert_id for m in found] == [101]
        wait_until(lambda: received(out), "the counterpart VOEvent at pygcn")
    finally:
        listener.stop()
        broadcaster.close()
    counterpart = vp.loads(received(out)[0])
    assert vp.valid_as_v2_0(counterpart)
    params = vp.get_toplevel_params(counterpart)
    assert params["event_id"]["value"] == "swift:1208389"
    assert params["alert_id"]["value"] == "101"


def test_broadcaster_on_a_busy_port_fails_to_start_and_drops_writes():
    first = VTPBroadcaster(BroadcasterSettings(port=0))
    _, port = first.start()
    try:
        second = VTPBroadcaster(BroadcasterSettings(port=port))
        with pytest.raises(OSError):
            second.start()
        second.write([make_match()])  # never blocks, never raises
        assert second.stats["not_running"] == 1
    finally:
        first.close()


# -- Comet, the reference VTP implementation, on the other side ----------------------------


@pytest.fixture(scope="module")
def comet_bin() -> Path:
    """The bin folder of Comet's venv (``scripts/comet_env.sh`` builds it once)."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "comet_env.sh")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"scripts/comet_env.sh failed: {done.stderr[-2000:]}"
    return Path(done.stdout.strip())


def test_comet_sendvo_gets_an_ack_from_our_receiver_and_a_nak_for_a_wrong_token(
        shared_file, comet_bin, tmp_path):
    config = Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2},
        "partners": {"goto": {"token_sha256": hash_token(GOOD_TOKEN),
                              "authorities": ["nasa.gsfc.gcn"], "rate": 0.0, "burst": 10}}})
    events: list = []
    receiver = VTPReceiver(ReceiverSettings(port=0), PartnerRegistry.from_config(config),
                           events.append, options=notice_options(config)).start()
    bat = shared_file(BAT).read_bytes()
    codes = []
    try:
        for name, token in (("good", GOOD_TOKEN), ("forged", "not the token")):
            path = tmp_path / f"{name}.xml"
            path.write_bytes(with_token(bat, token))
            codes.append(subprocess.run(
                [str(comet_bin / "comet-sendvo"), "-h", "127.0.0.1", "-p", str(receiver.port),
                 "-f", str(path)], capture_output=True, timeout=WAIT).returncode)
    finally:
        receiver.stop()
    assert codes[0] == 0  # comet-sendvo exits 0 on an ack ...
    assert codes[1] != 0  # ... and fails on a nak ("Remote refused event.")
    assert [e.event_id for e in events] == ["swift:1208389"]
    assert receiver.stats["accepted"] == 1 and receiver.stats["bad_credential"] == 1


def test_comet_broker_subscribes_to_our_broadcaster_and_saves_valid_voevents(
        comet_bin, tmp_path, processes):
    broadcaster = VTPBroadcaster(BroadcasterSettings(port=0, iamalive_interval=0.5))
    _, port = broadcaster.start()
    saved, eventdb = tmp_path / "saved", tmp_path / "eventdb"
    saved.mkdir()
    eventdb.mkdir()
    with open(tmp_path / "comet.log", "wb") as log_file:
        processes.append(subprocess.Popen(
            [str(comet_bin / "twistd"), "-n", "--pidfile=", "--logfile=-", "comet",
             f"--remote=127.0.0.1:{port}", "--local-ivo=ivo://mmcross-test/comet",
             "--save-event", f"--save-event-directory={saved}", f"--eventdb={eventdb}"],
            cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT))
    matches = [make_match(0), make_match(1), make_match(0, retracted=True)]
    try:
        wait_until(lambda: broadcaster.subscribers(), "Comet to subscribe")
        # One VOEvent first: Comet's duplicate check opens its dbm from two threads at once
        # when two events arrive together, which fails on a Python without _gdbm.
        broadcaster.write(matches[:1])
        wait_until(lambda: list(saved.iterdir()), "Comet to save the first VOEvent")
        broadcaster.write(matches[1:])
        wait_until(lambda: len(list(saved.iterdir())) == 3, "Comet to save all three")
        wait_until(lambda: broadcaster.stats["acks"] == 3, "Comet's acks")
        wait_until(lambda: broadcaster.stats["iamalive_replies"] >= 2, "Comet's iamalives")
    finally:
        broadcaster.close()
    packets = [vp.loads(p.read_bytes()) for p in saved.iterdir()]
    assert all(vp.valid_as_v2_0(v) for v in packets)
    retractions = [v for v in packets if v.find("Citations") is not None]
    assert [v.Citations.EventIVORN.attrib["cite"] for v in retractions] == ["retraction"]
    assert retractions[0].Citations.EventIVORN.text == counterpart_ivorn(matches[0])
    assert {v.attrib["ivorn"] for v in packets if v.find("Citations") is None} == {
        counterpart_ivorn(matches[0]), counterpart_ivorn(matches[1])}
    assert broadcaster.stats["naks"] == 0 and broadcaster.stats["dropped_subscribers"] == 0


def test_our_gcn_listener_subscribes_to_a_comet_broker_fed_by_comet_sendvo(
        shared_file, comet_bin, tmp_path, processes, config):
    """comet-sendvo -> Comet (receive + broadcast) -> VTPListener: the real notice arrives.

    Comet validates submissions against the VOEvent 2.0 schema, so the notice is one in the
    ``voe:`` namespace (the GCN Kafka copies above have none and are refused by Comet).
    """
    gbm = shared_file(GBM_VOE)
    submit_port, broadcast_port = free_port(), free_port()
    (tmp_path / "eventdb").mkdir()
    with open(tmp_path / "comet.log", "wb") as log_file:
        processes.append(subprocess.Popen(
            [str(comet_bin / "twistd"), "-n", "--pidfile=", "--logfile=-", "comet",
             "--receive", f"--receive-port={submit_port}", "--broadcast",
             f"--broadcast-port={broadcast_port}", "--broadcast-test-interval=0",
             "--local-ivo=ivo://mmcross-test/comet", f"--eventdb={tmp_path / 'eventdb'}"],
            cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT))
    events: list = []
    listener = VTPListener.from_config(config, events.append,
                                       servers=[f"127.0.0.1:{broadcast_port}"],
                                       backoff_min=0.1, backoff_max=0.5)
    listener.start()
    try:
        # Comet's broadcaster greets each new subscriber with an authenticate Transport.
        wait_until(lambda: listener.stats["authenticate"] >= 1, "Comet to register us")
        wait_until(lambda: subprocess.run(
            [str(comet_bin / "comet-sendvo"), "-h", "127.0.0.1", "-p", str(submit_port),
             "-f", str(gbm)], capture_output=True, timeout=WAIT).returncode == 0,
            "Comet to accept the submission")
        wait_until(lambda: events, "the notice relayed by Comet")
    finally:
        listener.stop()
    [event] = events
    assert event.event_id == "fermi-gbm:681547990" and event.raw == gbm.read_bytes()
    assert event.source.startswith(f"vtp://127.0.0.1:{broadcast_port} ivo://nasa.gsfc.gcn/")
    assert listener.stats["voevents"] == 1 and listener.stats["unparsable"] == 0


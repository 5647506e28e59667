"""Hostile VTP byte streams against our receiver and our subscriber, over real sockets.

Hypothesis builds streams of frames from real GCN VOEvents (as sent, mutated by bit flips,
truncation and block duplication, with non-UTF-8 bytes or huge attribute values), XML bombs,
DOCTYPEs, iamalive and stray Transports, empty and one-byte frames and binary garbage; a
stream may end in a length prefix of 2**31, 2**32-1 or just above the cap, or in a truncated
frame. The bytes are cut at random TCP boundaries and sent to

* the partner submission receiver (:class:`mmcross.listeners.vtp_receiver.VTPReceiver` over
  the receiver role): every complete frame gets exactly one answer, in order (an ack, an
  iamalive, or a nak whose ``Meta/Result`` reads ``"<reason>: <text>"``), an oversized prefix
  a nak then a close, and the counters move by what was sent; a well-behaved submitter on a
  connection alongside still gets its ack and its event reaches the callback;
* the GCN listener (:class:`mmcross.listeners.vtp.VTPListener` over the subscriber role),
  the test playing the broker: iamalive is answered, real VOEvents acked, nothing else
  answered, a refused prefix or truncated frame drops the connection, and after it a real
  notice on the next connection is still acked and parsed.

No thread of either role may die (``threading.excepthook`` is watched). Waits are bounded
and generous; nothing asserts on durations.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from mmcross.listeners.partners import PartnerRegistry, hash_token
from mmcross.listeners.vtp import VTPListener, VTPListenerSettings
from mmcross.listeners.vtp_receiver import ReceiverSettings, VTPReceiver
from mmcross.model.config import Config, notice_options
from mmcross.vtp.base import MAX_FRAME_BYTES, transport_message
from tests.helpers import BILLION_LAUGHS, EXTERNAL_ENTITY, GOOD_TOKEN, WAIT, with_token

BAT = "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml"
GBM = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAK_RESULT = re.compile(r"^[a-z_]+: .+", re.S)


# -- the pieces of a stream ----------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One frame of a stream: its payload, what it is, and (for good ones) its IVORN."""

    payload: bytes
    kind: str
    ivorn: str = ""


def set_ivorn(xml: bytes, ivorn: str) -> bytes:
    """``xml`` with the root's ``ivorn`` attribute replaced."""
    root = etree.fromstring(xml)
    root.set("ivorn", ivorn)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def mutate(draw: Callable, raw: bytes) -> bytes:
    """Bit flips, truncations and duplicated blocks of ``raw``."""
    buf = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["flip", "cut", "dup", "non_utf8"]))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:]
        elif op == "dup":
            n = draw(st.integers(1, 400))
            buf[i:i] = buf[i:i + n]
        else:
            buf[i:i] = draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]))
    return bytes(buf)


def huge_attribute(xml: bytes, size: int) -> bytes:
    """``xml`` with a ``size``-character attribute on its first Param."""
    return xml.replace(b"<Param ", b'<Param junk="' + b"A" * size + b'" ', 1)


@st.composite
def pieces(draw: Callable, good: bytes) -> Piece:
    """One frame; ``good`` is a real VOEvent (with the partner token, for the receiver)."""
    kind = draw(st.sampled_from(["good", "iamalive", "mutated", "garbage", "bomb", "doctype",
                                 "huge_attr", "empty", "one_byte", "non_utf8", "transport",
                                 "json"]))
    if kind == "good":
        ivorn = f"{etree.fromstring(good).get('ivorn')}-fuzz-{draw(st.integers(0, 2**32))}"
        return Piece(set_ivorn(good, ivorn), kind, ivorn)
    if kind == "iamalive":
        return Piece(transport_message("iamalive", "ivo://fuzz/author"), kind)
    if kind == "mutated":
        return Piece(mutate(draw, good), kind)
    if kind == "garbage":
        return Piece(draw(st.binary(min_size=1, max_size=300)), kind)
    if kind == "bomb":
        return Piece(BILLION_LAUGHS, kind)
    if kind == "doctype":
        return Piece(EXTERNAL_ENTITY.replace(b"%s", GOOD_TOKEN.encode()), kind)
    if kind == "huge_attr":  # above a partner's 256 KiB, below the frame cap of 1 MiB
        ivorn = f"{etree.fromstring(good).get('ivorn')}-huge-{draw(st.integers(0, 2**32))}"
        size = draw(st.sampled_from([300_000, 1_000_000]))
        return Piece(huge_attribute(set_ivorn(good, ivorn), size), kind, ivorn)
    if kind == "empty":
        return Piece(b"", kind)
    if kind == "one_byte":
        return Piece(draw(st.binary(min_size=1, max_size=1)), kind)
    if kind == "non_utf8":
        at = good.index(b"<Who>")
        return Piece(good[:at] + b"<Description>\xff\xfe\xc0\xaf</Description>" + good[at:],
                     kind)
    if kind == "transport":
        role = draw(st.sampled_from(["ack", "nak", "authenticate", "bogus"]))
        return Piece(transport_message(role, "ivo://fuzz/author"), kind)
    hostile_json = draw(st.sampled_from([
        b'{"a": ' + b"[" * 100_000, b'{"mmcross_partner": "goto", "mmcross_token": 12}',
        b'{"mmcross_partner": "\xff\xfe", "mmcross_token": "x"}', b"{" + b"9" * 5000,
        b'{"mmcross_partner": "goto", "mmcross_token": "' + GOOD_TOKEN.encode()
        + b'", "trigger_time": "9999-99-99", "ra": 1e999}']))
    return Piece(hostile_json, kind)


@st.composite
def streams(draw: Callable, good: bytes) -> tuple[list[Piece], str, bytes, list[int]]:
    """(frames, terminator kind, terminator bytes, cut points of the whole stream)."""
    frames = draw(st.lists(pieces(good), min_size=1, max_size=8))
    end = draw(st.sampled_from(["none", "none", "oversized", "truncated"]))
    tail = b""
    if end == "oversized":
        tail = struct.pack("!I", draw(st.sampled_from([2**31, 2**32 - 1, MAX_FRAME_BYTES + 1])))
    elif end == "truncated":
        n = draw(st.integers(1, 5000))
        tail = struct.pack("!I", n) + draw(st.binary(min_size=0, max_size=min(n - 1, 50)))
        tail = tail[:draw(st.integers(1, len(tail)))]  # may stop inside the prefix itself
    total = sum(4 + len(p.payload) for p in frames) + len(tail)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, total - 1)), max_size=12))))
    return frames, end, tail, cuts


def wire(frames: list[Piece], tail: bytes) -> bytes:
    return b"".join(struct.pack("!I", len(p.payload)) + p.payload for p in frames) + tail


def send_cut(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    """Send ``data`` in segments ending at ``cuts`` (TCP_NODELAY: one segment per send)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            sock.sendall(data[start:cut])
            start = cut


def read_answers(sock: socket.socket, until: Callable[[etree._Element], bool] | None = None
                 ) -> list[etree._Element]:
    """Frames from ``sock`` until EOF (or until one satisfies ``until``), parsed."""
    sock.settimeout(WAIT)
    buf, out = b"", []
    while True:
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
            n = struct.unpack("!I", buf[:4])[0]
            out.append(etree.fromstring(buf[4:4 + n]))
            buf = buf[4 + n:]
            if until is not None and until(out[-1]):
                return out
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            assert not buf, f"{len(buf)} bytes of an unfinished answer before the close"
            return out
        buf += chunk


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT:.0f} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def thread_deaths() -> Iterator[list[threading.ExceptHookArgs]]:
    """Uncaught exceptions of any thread while the module runs."""
    deaths: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = deaths.append
    yield deaths
    threading.excepthook = previous


@pytest.fixture(scope="module")
def bat(shared_file) -> bytes:
    return shared_file(BAT).read_bytes()


# -- the partner submission receiver --------------------------------------------------------


@pytest.fixture(scope="module")
def receiver(thread_deaths) -> Iterator[tuple[VTPReceiver, list]]:
    config = Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2},
        "partners": {"goto": {"token_sha256": hash_token(GOOD_TOKEN),
                              "authorities": ["nasa.gsfc.gcn"], "rate": 1e6,
                              "burst": 1e6}}})
    events: list = []
    rx = VTPReceiver(ReceiverSettings(port=0, rate=1e6, burst=1e6),
                     PartnerRegistry.from_config(config), events.append,
                     options=notice_options(config)).start()
    yield rx, events
    rx.stop()


RECEIVER_EXPECTED = {"good": ("ack", None), "iamalive": ("iamalive", None),
                     "bomb": ("nak", "refused_doctype"), "doctype": ("nak", "refused_doctype"),
                     "huge_attr": ("nak", "oversized"), "empty": ("nak", "unparsable"),
                     "non_utf8": ("nak", "unparsable"), "transport": ("nak", "not_voevent")}


def _receiver_stream_is_answered_in_order(receiver, bat, thread_deaths, stream) -> None:
    rx, events = receiver
    frames, end, tail, cuts = stream
    before = Counter(rx.stats)
    n_events = len(events)
    with socket.create_connection(("127.0.0.1", rx.port), WAIT) as polite, \
            socket.create_connection(("127.0.0.1", rx.port), WAIT) as hostile:
        send_cut(hostile, wire(frames, tail), cuts)
        hostile.shutdown(socket.SHUT_WR)
        answers = read_answers(hostile)
        good_ivorn = "ivo://nasa.gsfc.gcn/SWIFT#polite"
        polite.sendall(struct.pack("!I", len(set_ivorn(bat, good_ivorn)))
                       + set_ivorn(bat, good_ivorn))
        polite_answer = read_answers(polite, until=lambda a: True)
    assert [(a.get("role"), a.findtext("Origin")) for a in polite_answer] == [
        ("ack", good_ivorn)]

    assert len(answers) == len(frames) + (end == "oversized")
    for piece, answer in zip(frames, answers, strict=False):
        role, result = answer.get("role"), answer.findtext("Meta/Result")
        assert role in ("ack", "nak", "iamalive"), etree.tostring(answer)
        if role == "nak":
            assert result and NAK_RESULT.match(result), result
        expected_role, reason = RECEIVER_EXPECTED.get(piece.kind, (None, None))
        if expected_role is not None:
            assert role == expected_role, (piece.kind, role, result)
        if reason is not None:
            assert result.startswith(f"{reason}: "), (piece.kind, result)
        if piece.kind == "good":
            assert answer.findtext("Origin") == piece.ivorn
    if end == "oversized":
        assert answers[-1].get("role") == "nak"
        assert answers[-1].findtext("Meta/Result").startswith("oversized_frames: ")

    wait_until(lambda: rx.stats["connections"] - before["connections"] >= 2, "two connections")
    delta = Counter(rx.stats)
    delta.subtract(before)
    roles = Counter(a.get("role") for a in answers)
    assert delta["frames"] == len(frames) + (end == "oversized") + 1  # + the polite frame
    assert delta["accepted"] == roles["ack"] + 1
    assert delta["refused"] == roles["nak"] + (end == "truncated")
    assert delta["truncated_frames"] == (end == "truncated")
    assert delta["oversized_frames"] == (end == "oversized")
    assert delta["handler_errors"] == 0 and delta["socket_errors"] == 0
    assert len(events) - n_events == roles["ack"] + 1
    assert events[-1].event_id == "swift:1208389"
    assert not thread_deaths


def test_receiver_answers_every_hostile_frame_in_order_and_serves_a_polite_peer(
        receiver, bat, thread_deaths):
    signed = with_token(bat, GOOD_TOKEN)

    @FUZZ
    @given(stream=streams(signed))
    def run(stream):
        _receiver_stream_is_answered_in_order(receiver, signed, thread_deaths, stream)

    run()


# -- the GCN listener (subscriber role), the test playing the broker -------------------------


class Broker:
    """A listening socket the subscriber connects to; the test drives each connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WAIT)
        self.port = self.server.getsockname()[1]

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        return conn

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def listener(thread_deaths) -> Iterator[tuple[VTPListener, Broker, list]]:
    config = Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2}})
    broker = Broker()
    events: list = []
    lst = VTPListener(VTPListenerSettings(servers=(("127.0.0.1", broker.port),),
                                          ivorn="ivo://mmcross-test/fuzz", backoff_min=0.01,
                                          backoff_max=0.05, iamalive_timeout=WAIT),
                      events.append, options=notice_options(config)).start()
    yield lst, broker, events
    lst.stop()
    broker.close()


SUBSCRIBER_EXPECTED = {"good": "ack", "iamalive": "iamalive", "bomb": None, "doctype": None,
                       "empty": None, "one_byte": None, "non_utf8": None, "transport": None,
                       "json": None, "huge_attr": "ack"}
PACKET_COUNTERS = ("voevents", "iamalive", "authenticate", "unexpected_transport",
                   "unparsable", "refused_doctype")


def _subscriber_stream(listener, gbm, thread_deaths, state, stream) -> None:
    lst, broker, events = listener
    frames, end, tail, cuts = stream
    before = Counter(lst.stats)
    conn = state.get("conn") or broker.accept()
    state["conn"] = None
    sentinel = f"ivo://nasa.gsfc.gcn/Fermi#sentinel-{next(state['counter'])}"
    try:
        send_cut(conn, wire(frames, tail), cuts)
        if end == "none":
            conn.sendall(struct.pack("!I", len(set_ivorn(gbm, sentinel)))
                         + set_ivorn(gbm, sentinel))
            answers = read_answers(conn, until=lambda a: a.findtext("Origin") == sentinel)
            assert answers and answers[-1].get("role") == "ack"
            answers.pop()
            state["conn"] = conn
        else:
            if end == "truncated":
                conn.shutdown(socket.SHUT_WR)
            answers = read_answers(conn)  # until the subscriber drops the connection
            conn.close()
            conn = broker.accept()  # it reconnects; a real notice there is still served
            conn.sendall(struct.pack("!I", len(set_ivorn(gbm, sentinel)))
                         + set_ivorn(gbm, sentinel))
            final = read_answers(conn, until=lambda a: a.findtext("Origin") == sentinel)
            assert [a.get("role") for a in final] == ["ack"]
            state["conn"] = conn
    except BaseException:
        with contextlib.suppress(OSError):
            conn.close()
        raise

    good = {p.ivorn for p in frames if p.ivorn}
    expected = [(SUBSCRIBER_EXPECTED[p.kind], p.ivorn or "ivo://fuzz/author") for p in frames
                if SUBSCRIBER_EXPECTED.get(p.kind) is not None]
    known = [(a.get("role"), a.findtext("Origin")) for a in answers
             if a.get("role") == "iamalive" or a.findtext("Origin") in good]
    # mutated VOEvents may still be VOEvents (with their real IVORN) and get acks
    extra = [a for a in answers if a.get("role") == "ack" and a.findtext("Origin") not in good]
    assert known == expected, ([p.kind for p in frames], known)
    assert len(extra) <= sum(p.kind in ("mutated", "garbage") for p in frames)
    for a in answers:
        assert a.get("role") in ("ack", "iamalive")
        if a.get("role") == "iamalive":
            assert a.findtext("Response") == "ivo://mmcross-test/fuzz"

    def settled() -> bool:  # the sentinel is acked before it is counted and handled
        delta = Counter(lst.stats)
        delta.subtract(before)
        handled = delta["events"] + delta["bad_notices"] + delta["not_events"]
        return (sum(delta[k] for k in PACKET_COUNTERS) == delta["packets"]
                and handled == delta["voevents"])

    wait_until(settled, "the subscriber's counters and handler")
    delta = Counter(lst.stats)
    delta.subtract(before)
    assert delta["packets"] == len(frames) + 1  # + the sentinel
    assert delta["oversized_frames"] == (end == "oversized")
    assert delta["truncated_frames"] == (end == "truncated")
    assert delta["handler_errors"] == 0 and delta["socket_errors"] == 0
    assert events and events[-1].event_id == "fermi-gbm:726773850"
    assert not thread_deaths


def test_subscriber_answers_a_hostile_broker_and_is_served_after_it(
        listener, shared_file, thread_deaths):
    gbm = shared_file(GBM).read_bytes()
    state: dict = {"conn": None, "counter": iter(range(10**9))}

    @FUZZ
    @given(stream=streams(gbm))
    def run(stream):
        _subscriber_stream(listener, gbm, thread_deaths, state, stream)

    try:
        run()
    finally:
        if state["conn"] is not None:
            state["conn"].close()

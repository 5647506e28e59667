"""Hostile alert packets and files through the public readers, against fastavro.

Mutations of the real Rubin packets in ../shared/data/alerts (bit flips, truncations, lying
schema ids and magic bytes, absurd varints and lengths up to 2**62) and of Avro container
files written from them by fastavro (codecs null and deflate, one or many records per block:
bit flips, truncations, duplicated blocks, absurd block counts and sizes, a codec header that
lies) go through :func:`mmcross.brokers.alert_files.iter_alert_batches` and
:func:`mmcross.brokers.alert_decoding.decode_wire_many`. Every bad packet or record must come
back as a :class:`~mmcross.model.errors.BadAlertError` naming the file and record (or the
message index), the untouched ones in the same file or batch must still be returned with the
values fastavro decodes, nothing else may be raised, and memory (numpy allocations, traced)
stays bounded whatever length a packet announces.

Alert times outside the survey era (:func:`mmcross.model.plausibility.implausible_mjd`) are
refused per alert and cannot move the engine's clock.
"""

from __future__ import annotations

import io
import math
import struct
import tracemalloc
import zlib
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.time import Time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcross.app.engine import Engine
from mmcross.brokers.alert_decoding import decode_wire_many
from mmcross.brokers.alert_files import iter_alert_batches, write_wire_stream
from mmcross.brokers.rubin_schemas import get_schema
from mmcross.listeners import parse_notice
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import BadAlertError

LSST = "alerts/lsst/samples/"
WIRE = [LSST + "lsst.v9_0.wire.7912941781254298.avro",
        LSST + "lsst.v7_4.wire.HSC_396895612567600.avro",
        LSST + "lsst.v11_1.wire.fake.avro"]
BAT = "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml"
GBM = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MEMORY_BOUND = 256 * 2**20  # bytes of traced allocations while reading one hostile input
N_RECORDS = 6


def zigzag_varint(value: int) -> bytes:
    """The Avro encoding of a long (zig-zag, then base-128 varint), without a 64-bit cap."""
    z = (value << 1) ^ (value >> 63) if value >= 0 else ((-value) << 1) - 1
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fastavro_record(message: bytes) -> dict:
    """Independent reference: the whole wire packet decoded by fastavro."""
    schema = get_schema(int.from_bytes(message[1:5], "big")).definition
    return fastavro.schemaless_reader(io.BytesIO(message[5:]), schema, None)


def wire_packet(record: dict, schema_id: int) -> bytes:
    """A wire-format packet written by fastavro (independent of mmcross's encoder)."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(get_schema(schema_id).definition),
                               record)
    return b"\x00" + struct.pack(">I", schema_id) + out.getvalue()


def reference(record: dict) -> tuple[int, float, float, float]:
    ds = record["diaSource"]
    return (ds["diaSourceId"], ds["ra"], ds.get("dec", ds.get("decl")),
            ds.get("midpointMjdTai", ds.get("midPointTai")))


def batch_rows(batches: list[AlertBatch]) -> dict[int, tuple[int, float, float, float]]:
    out = {}
    for b in batches:
        for i in range(len(b)):
            out[int(b.alert_id[i])] = (int(b.alert_id[i]), float(b.ra[i]), float(b.dec[i]),
                                       float(b.mjd_tai[i]))
    return out


class Traced:
    """Peak of the allocations traced while the block runs (numpy's included), bytes."""

    def __enter__(self) -> Traced:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def read_all(path: Path) -> tuple[list[AlertBatch], list[BadAlertError]]:
    """Every batch and error of one file; anything but a BadAlertError propagates."""
    errors: list[BadAlertError] = []
    with Traced() as traced:
        batches = list(iter_alert_batches([path], chunk=4, on_error=errors.append,
                                          keep_packets=False))
    assert traced.peak < MEMORY_BOUND, f"{traced.peak / 2**20:.0f} MiB traced"
    for exc in errors:
        assert isinstance(exc, BadAlertError)
        assert exc.source.startswith(str(path)), exc.source
        assert exc.reason and str(exc).startswith(exc.source)
    return batches, errors


@pytest.fixture(scope="module")
def packets(shared_file) -> list[bytes]:
    return [shared_file(p).read_bytes() for p in WIRE]


@pytest.fixture(scope="module")
def v9_records(packets) -> list[dict]:
    """Copies of the real v9.0 alert with distinct ids, a short observation_reason (a
    string length early in the body) and no cutouts (so most bytes are fields)."""
    ref = fastavro_record(packets[0])
    out = []
    for k in range(N_RECORDS):
        rec = {**ref, "diaSourceId": 1000 + k, "observation_reason": "fuzz",
               "cutoutDifference": None, "cutoutScience": None, "cutoutTemplate": None,
               "diaSource": {**ref["diaSource"], "diaSourceId": 1000 + k,
                             "ra": ref["diaSource"]["ra"] + 0.001 * k}}
        out.append(rec)
    return out


# -- wire packets in one poll ------------------------------------------------------------------


def mutate_packet(draw, raw: bytes) -> bytes:
    buf = bytearray(raw)
    op = draw(st.sampled_from(["flip", "cut", "schema_id", "magic", "varint", "empty"]))
    if op == "flip":
        i = draw(st.integers(0, min(len(buf) - 1, 800)))
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "cut":
        del buf[draw(st.integers(0, min(len(buf) - 1, 800))):]
    elif op == "schema_id":
        buf[1:5] = draw(st.sampled_from([0, 1, 901, 9999, 2**31, 2**32 - 1])).to_bytes(4, "big")
    elif op == "magic":
        buf[0] = draw(st.integers(1, 255))
    elif op == "varint":
        i = draw(st.integers(5, min(len(buf) - 1, 400)))
        value = draw(st.sampled_from([2**62, -(2**62), 2**31, 2**63 - 1, -1]))
        width = draw(st.integers(1, 10))
        buf[i:i + width] = draw(st.sampled_from([zigzag_varint(value), b"\xff" * 11]))
    else:
        buf = bytearray()
    return bytes(buf)


def test_bad_packets_in_a_poll_are_errors_with_their_index_and_the_rest_decode(packets):
    refs = [reference(fastavro_record(p)) for p in packets]

    @FUZZ
    @given(data=st.data())
    def run(data):
        picks = data.draw(st.lists(st.integers(0, len(packets) - 1), min_size=1, max_size=6))
        bad = data.draw(st.lists(st.booleans(), min_size=len(picks), max_size=len(picks)))
        messages = [mutate_packet(data.draw, packets[k]) if b else packets[k]
                    for k, b in zip(picks, bad, strict=True)]
        sources = [f"alerts/0/{50 + i}" for i in range(len(messages))]
        with Traced() as traced:
            batch, errors = decode_wire_many(messages, sources, keep_packets=False)
        assert traced.peak < MEMORY_BOUND
        refused = set()
        for exc in errors:
            assert isinstance(exc, BadAlertError) and exc.index is not None
            assert exc.source == sources[exc.index] and str(exc).startswith(sources[exc.index])
            assert bad[exc.index], f"an untouched packet was refused: {exc}"
            refused.add(exc.index)
        kept = [i for i in range(len(messages)) if i not in refused]
        assert batch.sources == [sources[i] for i in kept]
        for row, i in enumerate(kept):
            if not bad[i]:
                assert (int(batch.alert_id[row]), float(batch.ra[row]), float(batch.dec[row]),
                        float(batch.mjd_tai[row])) == refs[picks[i]]

    run()


@pytest.mark.timeout(120)
def test_absurd_lengths_at_every_early_byte_are_refused_in_bounded_memory(v9_records):
    """A varint of +-2**62, 2**31 or eleven continuation bytes written over each of the
    first 300 bytes of a body (every field the decoder reads: ids, unions, the string
    length of observation_reason, doubles), one poll of all of them plus a good packet."""
    good = wire_packet(v9_records[0], 900)
    messages = []
    for value in (zigzag_varint(2**62), zigzag_varint(-(2**62)), zigzag_varint(2**31),
                  b"\xff" * 11):
        for i in range(5, 305):
            messages.append(good[:i] + value + good[i + len(value):])
    messages.append(good)
    with Traced() as traced:
        batch, errors = decode_wire_many(messages, keep_packets=False)
    assert traced.peak < MEMORY_BOUND
    assert all(isinstance(e, BadAlertError) and e.source == f"message#{e.index}"
               for e in errors)
    assert len(batch) + len(errors) == len(messages)
    assert batch.sources[-1] == f"message#{len(messages) - 1}"
    assert int(batch.alert_id[-1]) == v9_records[0]["diaSource"]["diaSourceId"]
    assert np.all(np.isfinite(batch.mjd_tai)) and np.all(np.abs(batch.dec) <= 90.0)


# -- wire streams ----------------------------------------------------------------------------


def test_wire_stream_with_bad_frames_keeps_the_good_ones(tmp_path_factory, packets):
    refs = [reference(fastavro_record(p)) for p in packets]
    directory = tmp_path_factory.mktemp("streams")

    @FUZZ
    @given(data=st.data())
    def run(data):
        picks = data.draw(st.lists(st.integers(0, len(packets) - 1), min_size=1, max_size=5))
        bad = data.draw(st.lists(st.booleans(), min_size=len(picks), max_size=len(picks)))
        frames = [mutate_packet(data.draw, packets[k]) if b else packets[k]
                  for k, b in zip(picks, bad, strict=True)]
        path = directory / "night.wires"
        write_wire_stream(path, frames)
        tail = data.draw(st.sampled_from([b"", struct.pack(">I", 2**32 - 1) + b"abc",
                                          struct.pack(">I", 2**31), b"\x00\x00",
                                          struct.pack(">I", 1000) + packets[0][:10]]))
        path.write_bytes(path.read_bytes() + tail)
        batches, errors = read_all(path)
        refused = {e.index for e in errors}
        for i in refused:
            assert i is not None and (i == len(frames) or bad[i])
        if tail:
            assert len(frames) in refused  # the truncated last frame is reported
        rows = batch_rows(batches)
        for i, k in enumerate(picks):
            if not bad[i]:
                assert rows[refs[k][0]] == refs[k]

    run()


# -- Avro container files --------------------------------------------------------------------


def write_container(path: Path, records: list[dict], codec: str, per_block: int) -> bytes:
    schema = fastavro.parse_schema(get_schema(900).definition)
    out = io.BytesIO()
    writer = fastavro.write.Writer(out, schema, codec=codec, sync_interval=1 << 30)
    for k, rec in enumerate(records):
        writer.write(rec)
        if (k + 1) % per_block == 0:
            writer.flush()
    writer.flush()
    path.write_bytes(out.getvalue())
    return out.getvalue()


def block_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each block: from its count varint to the end of its sync marker."""
    sync = data[-16:]
    marks = []
    at = data.find(sync)
    while at >= 0:
        marks.append(at + 16)
        at = data.find(sync, at + 1)
    return list(zip(marks[:-1], marks[1:], strict=True))


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = acc = 0
    while True:
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7


CODEC_LIES = {"null": [b"deflate", b"snappy", b"zstandard", b"xz", b"bzip2"],
              "deflate": [b"null", b"snappy", b"no-such-codec"]}


def test_container_mutations_refuse_what_they_touch_and_keep_the_rest(tmp_path_factory,
                                                                       v9_records):
    directory = tmp_path_factory.mktemp("containers")
    refs = [reference(r) for r in v9_records]

    @FUZZ
    @given(codec=st.sampled_from(["null", "deflate"]), per_block=st.sampled_from([1, 2, 6]),
           data=st.data())
    def run(codec, per_block, data):
        path = directory / f"alerts.{codec}.avro"
        raw = write_container(path, v9_records, codec, per_block)
        spans = block_spans(raw)
        record_block = [k // per_block for k in range(N_RECORDS)]
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "count", "size", "codec",
                                        "header"]))
        touched: set[int] = set()  # blocks whose records may be lost
        b = data.draw(st.integers(0, len(spans) - 1))
        start, end = spans[b]
        buf = bytearray(raw)
        if op == "flip":
            i = data.draw(st.integers(start, end - 1))
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
            count, pos = read_varint(raw, start)
            _size, body = read_varint(raw, pos)
            # damage to a block's data loses that block; to its count, size or sync marker,
            # possibly every block after it too
            touched = {b} if body <= i < end - 16 else set(range(b, len(spans)))
        elif op == "cut":
            i = data.draw(st.integers(spans[0][0], len(raw) - 1))
            del buf[i:]
            touched = {k for k, (s, e) in enumerate(spans) if e > i}
        elif op == "dup":
            buf[end:end] = raw[start:end]
        elif op in ("count", "size"):
            value = data.draw(st.sampled_from([2**62, -(2**62), 2**31, 0, -1]))
            count, pos = read_varint(raw, start)
            size, body = read_varint(raw, pos)
            if op == "count":
                buf[start:pos] = zigzag_varint(value)
                touched = {b} if value != count else set()
            else:
                buf[pos:body] = zigzag_varint(value)
                touched = set(range(b, len(spans))) if value != size else set()
        elif op == "header":  # magic, metadata map (counts, lengths, schema) or sync marker
            i = data.draw(st.integers(0, spans[0][0] - 1))
            buf[i:i + 1] = data.draw(st.sampled_from([bytes([raw[i] ^ 0x01]), b"\x7f", b"\x81",
                                                      zigzag_varint(-(2**62))]))
            touched = set(range(len(spans)))
        else:
            lie = data.draw(st.sampled_from(CODEC_LIES[codec]))
            entry = b"\x14avro.codec" + zigzag_varint(len(codec)) + codec.encode()
            assert entry in raw
            buf = bytearray(raw.replace(entry, b"\x14avro.codec" + zigzag_varint(len(lie))
                                        + lie, 1))
            touched = set(range(len(spans)))
        path.write_bytes(bytes(buf))
        batches, errors = read_all(path)
        rows = batch_rows(batches)
        for k in range(N_RECORDS):
            if record_block[k] not in touched:
                assert rows.get(refs[k][0]) == refs[k], (op, k, [str(e) for e in errors])
        lost = [k for k in range(N_RECORDS) if refs[k][0] not in rows]
        if lost and op != "cut":  # a cut at a block boundary is a shorter, valid file
            assert errors, (op, lost)
        for exc in errors:
            if exc.index is not None:
                assert f"#{exc.index}" in exc.source
        for row in rows.values():  # whatever came through is a plausible alert
            assert 0.0 <= row[1] <= 360.0 and -90.0 <= row[2] <= 90.0 and math.isfinite(row[3])

    run()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_absurd_block_counts_and_sizes_are_refused_in_bounded_memory(tmp_path, v9_records,
                                                                      codec):
    """A block announcing 2**62, 2**33 or 2**31 records (or bytes) is refused as that block,
    without allocating for what it announces; the other blocks are still read."""
    path = tmp_path / f"alerts.{codec}.avro"
    raw = write_container(path, v9_records, codec, 2)
    spans = block_spans(raw)
    refs = [reference(r) for r in v9_records]
    for b, (start, _end) in enumerate(spans):
        count, pos = read_varint(raw, start)
        size, body = read_varint(raw, pos)
        for value in (2**62, 2**33, 2**31, count + 1):
            path.write_bytes(raw[:start] + zigzag_varint(value) + raw[pos:])
            batches, errors = read_all(path)
            assert errors, (b, value)
            rows = batch_rows(batches)
            for k, ref in enumerate(refs):
                if k // 2 != b:
                    assert rows.get(ref[0]) == ref, (b, value, k, [str(e) for e in errors])
            path.write_bytes(raw[:pos] + zigzag_varint(value) + raw[body:])
            batches, errors = read_all(path)
            assert errors, (b, value)
            rows = batch_rows(batches)
            for k, ref in enumerate(refs):
                if k // 2 < b:
                    assert rows.get(ref[0]) == ref


@pytest.mark.timeout(120)
def test_a_deflate_bomb_block_is_refused_before_it_is_inflated(tmp_path, v9_records):
    """A 384 MiB block of zeros deflated to about 400 KiB between two good blocks."""
    path = tmp_path / "bomb.avro"
    raw = write_container(path, v9_records, "deflate", 3)
    spans = block_spans(raw)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 24)
    bomb = b"".join(packer.compress(zeros) for _ in range(24)) + packer.flush()
    sync = raw[-16:]
    block = zigzag_varint(1) + zigzag_varint(len(bomb)) + bomb + sync
    path.write_bytes(raw[:spans[1][0]] + block + raw[spans[1][0]:])
    batches, errors = read_all(path)
    assert [e.index for e in errors] == [3]
    assert sorted(batch_rows(batches)) == [1000 + k for k in range(N_RECORDS)]


# -- alert times outside the survey era ------------------------------------------------------

YEAR_9999 = float(Time("9999-12-31T00:00:00", scale="tai").mjd)
BAD_TIMES = [1e12, 1e308, YEAR_9999, 0.0, -0.0, -1e6]


def timed_packets(v9_records: list[dict], ra: float, dec: float, times: list[float]
                  ) -> list[bytes]:
    """v9.0 packets at (ra, dec) deg with ``midpointMjdTai`` ``times``, ids 5000 + i."""
    out = []
    for i, t in enumerate(times):
        rec = v9_records[0]
        out.append(wire_packet({**rec, "diaSourceId": 5000 + i, "diaSource": {
            **rec["diaSource"], "diaSourceId": 5000 + i, "ra": ra, "dec": dec,
            "midpointMjdTai": t}}, 900))
    return out


@pytest.mark.parametrize("when", BAD_TIMES, ids=lambda t: repr(t))
def test_an_alert_time_outside_the_survey_era_is_refused_per_alert(v9_records, tmp_path,
                                                                    when):
    good_t = 60961.2
    messages = timed_packets(v9_records, 55.75, -32.27, [good_t, when, good_t])
    batch, errors = decode_wire_many(messages, [f"alerts/0/{i}" for i in range(3)])
    assert [e.index for e in errors] == [1], [str(e) for e in errors]
    assert "time" in errors[0].reason and errors[0].source == "alerts/0/1"
    assert batch.alert_id.tolist() == [5000, 5002]
    assert batch.mjd_tai.tolist() == [good_t, good_t]

    stream = tmp_path / "night.wires"
    write_wire_stream(stream, messages)
    batches, file_errors = read_all(stream)
    assert [e.index for e in file_errors] == [1]
    assert sorted(batch_rows(batches)) == [5000, 5002]


@pytest.mark.parametrize("when", BAD_TIMES, ids=lambda t: repr(t))
def test_an_absurd_alert_time_does_not_move_the_engine_clock(shared_file, v9_records, when):
    """A batch of good alerts with one absurd time inside the Swift BAT circle of GRB
    240112A: the good ones match, no event expires, and the alert history still holds them
    for the Fermi GBM notice of the same burst that arrives after them (retro-matching)."""
    config = Config.load(overrides={"localization": {"credible_level_tolerance": 1e-2}})
    options = notice_options(config)
    bat = parse_notice(shared_file(BAT).read_bytes(), source="test", **options)
    engine = Engine(config)
    engine.on_notice(bat)
    t = bat.trigger_mjd_tai + 0.1
    ra, dec = 270.6441, 24.4866  # the Swift BAT position (0.05 deg error circle)
    messages = timed_packets(v9_records, ra, dec, [t, when, t + 0.01])
    batch, errors = decode_wire_many(messages, [f"alerts/0/{i}" for i in range(3)])
    assert [e.index for e in errors] == [1]
    matches = engine.on_alerts(batch)
    assert {(m.event_id, m.alert_id) for m in matches} == {(bat.event_id, 5000),
                                                           (bat.event_id, 5002)}
    only_bad, errors = decode_wire_many([messages[1]])
    assert len(only_bad) == 0 and len(errors) == 1
    assert engine.on_alerts(only_bad) == []
    assert engine.stats["events_expired"] == 0
    assert [e.event_id for e in engine.index.live()] == [bat.event_id]

    gbm = parse_notice(shared_file(GBM).read_bytes(), source="test", **options)
    outcome = engine.on_notice(gbm)
    assert {m.alert_id for m in outcome.reports if m.event_id == gbm.event_id} == {5000, 5002}

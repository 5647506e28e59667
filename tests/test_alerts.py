"""Alert decoding: real Rubin/ZTF samples, prefix == full decode, bad packets skipped."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.time import Time

from mmcross.app.simulate import simulate_night
from mmcross.brokers.alert_decoding import decode_wire, decode_wire_many, encode_wire, split_wire
from mmcross.brokers.alert_files import iter_alert_batches, read_alert_file, write_wire_stream
from mmcross.brokers.rubin_schemas import (
    get_schema,
    known_schema_ids,
    latest_schema_id,
    schema_id_from_name,
)
from mmcross.model.errors import BadAlertError
from mmcross.model.plausibility import implausible_mjd

LSST = "alerts/lsst/samples/"
ZTF = "alerts/ztf/samples/"

# file -> (alert id, object id, RA deg, Dec deg, MJD TAI), values from MANIFEST.md
RUBIN_SAMPLES = {
    "lsst.v11_0.fakeAlert.avro": (281323062375219200, "281323062375219201", 351.5705, 0.1262,
                                  60902.99),
    "lsst.v11_1.wire.fake.avro": (281323062375219200, "281323062375219201", 351.5705, 0.1262,
                                  60902.99),
    "lsst.v7_4.wire.HSC_396895612567600.avro": (396895612567600, None, 149.76615, 2.35077,
                                                57454.299),
    "lsst.v9_0.LSSTCam_169298433221853273.avro": (169298433221853273, "169298433221853273",
                                                  9.21540, -42.83254, 60924.33222),
    "lsst.v9_0.wire.7912941781254298.avro": (7912941781254298, None, 55.75213, -32.26848,
                                             60961.23309),
}
# file -> (candid, objectId, RA, Dec, jd UTC), from MANIFEST.md
ZTF_SAMPLES = {
    "ZTF17aaacxxf_739260766315010006.v3_2.avro": (739260766315010006, "ZTF17aaacxxf", 75.20078,
                                                  35.36140, 2458493.7607639),
    "ZTF17aaajnnn_472263571115115000.v3_3.avro": (472263571115115000, "ZTF17aaajnnn",
                                                  179.64020, 52.02972, 2458226.7635764),
    "ZTF17aaarzyp_2982177112815010003.v4_02.avro": (2982177112815010003, "ZTF17aaarzyp",
                                                    97.88902, -2.79835, 2460736.6771181),
    "ZTF18abfkwnk_2188216843315010016.v3_3.avro": (2188216843315010016, "ZTF18abfkwnk",
                                                   24.56145, 63.33588, 2459942.7168403),
    "ZTF18abudxnw_2695378462115010012.v4_02.avro": (2695378462115010012, "ZTF18abudxnw",
                                                    295.30320, -10.39590, 2460449.8784606),
}


def _half_ulp(value: float) -> float:
    """Half a unit in the last decimal the MANIFEST quotes."""
    return 0.5 * 10.0 ** -len(repr(value).split(".")[1]) + 1e-12


def full_decode(path) -> dict:
    """Independent reference: the whole packet decoded by fastavro."""
    data = path.read_bytes()
    if data[:1] == b"\x00":
        schema_id = struct.unpack(">I", data[1:5])[0]
        return fastavro.schemaless_reader(io.BytesIO(data[5:]), get_schema(schema_id).definition,
                                          None)
    return next(iter(fastavro.reader(io.BytesIO(data))))


def test_registry_has_every_lsst_alert_packet_schema():
    ids = known_schema_ids()
    assert {300, 704, 900, 1000, 1100, 1101} <= set(ids)
    assert latest_schema_id() in ids
    with pytest.raises(BadAlertError, match="unknown Rubin alert schema id 4242"):
        get_schema(4242)


@pytest.mark.parametrize("name", sorted(RUBIN_SAMPLES))
def test_rubin_sample_decodes_to_manifest_values(shared_file, name):
    path = shared_file(LSST + name)
    alert_id, object_id, ra, dec, mjd = RUBIN_SAMPLES[name]
    batch = read_alert_file(path)
    assert len(batch) == 1
    assert batch.alert_id[0] == alert_id
    assert batch.ra[0] == pytest.approx(ra, abs=_half_ulp(ra))
    assert batch.dec[0] == pytest.approx(dec, abs=_half_ulp(dec))
    assert batch.mjd_tai[0] == pytest.approx(mjd, abs=_half_ulp(mjd))
    assert batch.sources == [f"{path}#0"]
    # prefix decode == full decode for every field matching needs
    ref = full_decode(path)
    ds = ref["diaSource"]
    ref_object = ds["diaObjectId"] or ref["diaObject"]["diaObjectId"]
    assert batch.object_id[0] == str(ref_object)
    if object_id is not None:
        assert batch.object_id[0] == object_id
    assert batch.ra[0] == ds["ra"] and batch.dec[0] == ds["dec"]
    assert batch.mjd_tai[0] == ds["midpointMjdTai"]
    assert bool(batch.is_new[0]) == (not ref["prvDiaSources"])
    # the packet is kept whole, as wire format, and decodes again the same
    again = decode_wire(batch.packets[0])
    assert again.alert_id[0] == alert_id and again.object_id[0] == batch.object_id[0]


def test_rubin_wire_packet_is_the_file_bytes(shared_file):
    path = shared_file(LSST + "lsst.v9_0.wire.7912941781254298.avro")
    assert read_alert_file(path).packets[0] == path.read_bytes()
    schema_id, _ = split_wire(path.read_bytes())
    assert schema_id == 900


@pytest.mark.parametrize("name", sorted(ZTF_SAMPLES))
def test_ztf_sample_decodes_with_jd_utc_to_mjd_tai(shared_file, name):
    path = shared_file(ZTF + name)
    candid, object_id, ra, dec, jd = ZTF_SAMPLES[name]
    batch = read_alert_file(path)
    assert batch.alert_id[0] == candid and batch.object_id[0] == object_id
    assert batch.ra[0] == pytest.approx(ra, abs=1e-5)
    assert batch.dec[0] == pytest.approx(dec, abs=1e-5)
    # TAI = UTC + 37 s since 2017 (all the samples are later)
    assert batch.mjd_tai[0] == pytest.approx(jd - 2400000.5 + 37 / 86400, abs=1e-8)
    assert batch.mjd_tai[0] == pytest.approx(Time(jd, format="jd", scale="utc").tai.mjd)
    ref = full_decode(path)
    has_prv_detection = any(p["candid"] is not None for p in ref["prv_candidates"] or [])
    assert bool(batch.is_new[0]) == (not has_prv_detection)
    assert batch.packets[0] == path.read_bytes()


@pytest.mark.parametrize("schema_id", known_schema_ids())
def test_prefix_decode_equals_full_decode_on_simulated_packets(schema_id):
    night = simulate_night(12, start_mjd_tai=60900.0, rng=np.random.default_rng(schema_id),
                           schema_id=schema_id, n_previous=2, cutout_bytes=50,
                           alerts_per_visit=5)
    messages = list(night.messages())
    batch, errors = decode_wire_many(messages)
    assert errors == []
    schema = get_schema(schema_id)
    for i, message in enumerate(messages):
        ref = fastavro.schemaless_reader(io.BytesIO(message[5:]), schema.definition, None)
        ds = ref["diaSource"]
        assert batch.alert_id[i] == ds["diaSourceId"]
        assert batch.object_id[i] == str(ds["diaObjectId"])
        assert batch.ra[i] == ds["ra"]
        assert batch.dec[i] == ds.get("dec", ds.get("decl"))
        assert batch.mjd_tai[i] == ds.get("midpointMjdTai", ds.get("midPointTai"))
        assert bool(batch.is_new[i]) == (not ref["prvDiaSources"])
    assert batch.is_new.any() and not batch.is_new.all()


def _sample_wire(shared_file) -> bytes:
    return shared_file(LSST + "lsst.v11_1.wire.fake.avro").read_bytes()


@pytest.mark.parametrize("bad, match", [
    (b"", "too short"),
    (b"{\"not\": \"avro\"}", "not a Confluent wire-format"),
    (b"\x00\x00\x00\x10\x92" + b"\x01" * 50, "unknown Rubin alert schema id 4242"),
])
def test_garbage_raises_bad_alert_error_with_source(bad, match):
    with pytest.raises(BadAlertError, match=match) as info:
        decode_wire(bad, source="topic/0/17")
    assert "topic/0/17" in str(info.value)


def test_truncated_body_raises(shared_file):
    message = _sample_wire(shared_file)
    for cut in (6, 40, 200):
        with pytest.raises(BadAlertError, match="x#1"):
            decode_wire(message[:cut], source="x#1")


def test_out_of_range_coordinates_raise(shared_file):
    message = _sample_wire(shared_file)
    record = fastavro.schemaless_reader(io.BytesIO(message[5:]), get_schema(1101).definition,
                                        None)
    record["diaSource"]["dec"] = 95.0
    with pytest.raises(BadAlertError, match="outside"):
        decode_wire(encode_wire(record, 1101))


def test_encode_wire_round_trips_the_sample(shared_file):
    message = _sample_wire(shared_file)
    record = fastavro.schemaless_reader(io.BytesIO(message[5:]), get_schema(1101).definition,
                                        None)
    assert encode_wire(record, 1101) == message


def test_decode_many_and_file_iterator_skip_bad_packets(tmp_path, shared_file):
    good = _sample_wire(shared_file)
    messages = [good, b"garbage", good[:30], good]
    batch, errors = decode_wire_many(messages, [f"t/0/{i}" for i in range(4)])
    assert len(batch) == 2 and batch.sources == ["t/0/0", "t/0/3"]
    assert [str(e).split(":")[0] for e in errors] == ["t/0/1", "t/0/2"]

    stream = tmp_path / "night.wires"
    write_wire_stream(stream, messages)
    (tmp_path / "junk.avro").write_bytes(b"not an alert at all")
    seen: list[BadAlertError] = []
    batches = list(iter_alert_batches([stream, tmp_path / "junk.avro",
                                       shared_file(LSST + "lsst.v9_0.wire.7912941781254298.avro")],
                                      chunk=2, on_error=seen.append))
    assert [len(b) for b in batches] == [2, 1]
    assert [b.sources for b in batches][0] == [f"{stream}#0", f"{stream}#3"]
    assert len(seen) == 3 and f"{stream}#1" in str(seen[0]) and "junk.avro" in str(seen[2])
    with pytest.raises(BadAlertError):
        list(iter_alert_batches([stream]))  # no callback: the first error is raised


def test_truncated_wire_stream_and_container_report_errors(tmp_path):
    night = simulate_night(6, start_mjd_tai=60900.0, rng=np.random.default_rng(3),
                           n_previous=1, cutout_bytes=10)
    stream = tmp_path / "a.wires"
    night.write_wire_stream(stream)
    stream.write_bytes(stream.read_bytes()[:-5])
    container = tmp_path / "b.avro"
    night.write_container(container)
    container.write_bytes(container.read_bytes()[:-40])
    seen: list[BadAlertError] = []
    batches = list(iter_alert_batches([stream, container], on_error=seen.append))
    got = sum(len(b) for b in batches)
    assert got == 5  # 5 of the stream, none of the corrupt container block
    assert len(seen) == 2 and "truncated" in str(seen[0])


def test_directory_of_samples_streams_in_chunks(shared_file):
    directory = shared_file(LSST)
    seen: list[BadAlertError] = []
    batches = list(iter_alert_batches(directory, chunk=2, on_error=seen.append))
    assert [len(b) for b in batches] == [2, 2, 1] and not seen
    ids = set(np.concatenate([b.alert_id for b in batches]).tolist())
    assert ids == {v[0] for v in RUBIN_SAMPLES.values()}


# -- Avro container files (numba walker + prefix kernel) vs fastavro full decodes --------------

CODECS = ("null", "deflate", "snappy")


def _write_container(path, schema, records, codec, sync_interval=4000) -> None:
    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), records, codec=codec,
                        sync_interval=sync_interval)


def _assert_rubin_batch_equals_records(batch, records, sources) -> None:
    """Every field matching needs, against fastavro's full decode of the same records."""
    assert len(batch) == len(records) and batch.sources == sources
    for i, ref in enumerate(records):
        ds = ref["diaSource"]
        assert batch.alert_id[i] == ds["diaSourceId"]
        ref_object = ds.get("diaObjectId") or (ref.get("diaObject") or {}).get("diaObjectId")
        assert batch.object_id[i] == ("" if ref_object is None else str(ref_object))
        assert batch.ra[i] == ds["ra"]
        assert batch.dec[i] == ds.get("dec", ds.get("decl"))
        assert batch.mjd_tai[i] == ds.get("midpointMjdTai", ds.get("midPointTai"))
        assert bool(batch.is_new[i]) == (not ref["prvDiaSources"] and not ds.get("ssObjectId"))


@pytest.mark.parametrize("codec", CODECS)
def test_simulated_container_equals_fastavro_full_decode(tmp_path, codec):
    night = simulate_night(40, start_mjd_tai=60900.0, rng=np.random.default_rng(7),
                           n_previous=3, cutout_bytes=300, alerts_per_visit=7)
    path = tmp_path / f"night.{codec}.avro"
    night.write_container(path)  # null codec, one block: rewritten with small blocks below
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        schema, records = reader.writer_schema, list(reader)
    _write_container(path, schema, records, codec)
    batches = list(iter_alert_batches([path], chunk=16))
    assert [len(b) for b in batches][:2] == [16, 16]  # chunked across blocks
    batch = read_alert_file(path)
    _assert_rubin_batch_equals_records(batch, records, [f"{path}#{i}" for i in range(40)])
    sid = schema_id_from_name(schema["name"])
    for packet, ref in zip(batch.packets, records, strict=True):  # header + the record's bytes
        assert packet[:5] == b"\x00" + sid.to_bytes(4, "big")
        assert fastavro.schemaless_reader(io.BytesIO(packet[5:]), schema, None) == ref


def _shipped_fake_alerts() -> list:
    from importlib.resources import files

    root = files("lsst.alert.packet") / "schema"
    return sorted(str(p) for p in Path(str(root)).glob("*/*/sample_data/fakeAlert.avro"))


@pytest.mark.parametrize("shipped", _shipped_fake_alerts(), ids=lambda p: p.split("schema/")[1])
def test_lsst_alert_packet_samples_in_every_codec(tmp_path, shipped):
    with open(shipped, "rb") as f:
        reader = fastavro.reader(f)
        schema, records = reader.writer_schema, list(reader)
    # The v3-v7 samples carry midPointTai ~1.48e9 (not an MJD): refused per alert by the
    # plausibility policy, then moved into the survey era for the copies below.
    errors: list[BadAlertError] = []
    direct = read_alert_file(shipped, on_error=errors.append)
    times = [r["diaSource"].get("midpointMjdTai", r["diaSource"].get("midPointTai"))
             for r in records]
    ok = [i for i, t in enumerate(times) if implausible_mjd(t, "time") is None]
    assert [e.index for e in errors] == [i for i in range(len(records)) if i not in ok]
    assert all("survey era" in e.reason for e in errors)
    _assert_rubin_batch_equals_records(direct, [records[i] for i in ok],
                                       [f"{shipped}#{i}" for i in ok])
    key = "midpointMjdTai" if "midpointMjdTai" in records[0]["diaSource"] else "midPointTai"
    records = [r if i in ok else {**r, "diaSource": {**r["diaSource"], key: 60000.5}}
               for i, r in enumerate(records)]
    # several copies with distinct ids, several blocks, each codec
    copies = []
    for k in range(5):
        for rec in records:
            rec = {**rec, "diaSource": {**rec["diaSource"],
                                        "diaSourceId": rec["diaSource"]["diaSourceId"] + k}}
            copies.append(rec)
    for codec in CODECS:
        path = tmp_path / f"copies.{codec}.avro"
        _write_container(path, schema, copies, codec, sync_interval=100)
        _assert_rubin_batch_equals_records(read_alert_file(path), copies,
                                           [f"{path}#{i}" for i in range(len(copies))])


def test_real_rubin_wire_packets_in_a_container(tmp_path, shared_file):
    path = shared_file(LSST + "lsst.v9_0.wire.7912941781254298.avro")
    ref = full_decode(path)
    records = [{**ref, "diaSource": {**ref["diaSource"], "diaSourceId": k}} for k in range(9)]
    for codec in CODECS:
        out = tmp_path / f"v9.{codec}.avro"
        _write_container(out, get_schema(900).definition, records, codec, sync_interval=1)
        _assert_rubin_batch_equals_records(read_alert_file(out), records,
                                           [f"{out}#{i}" for i in range(9)])


def test_real_ztf_packets_in_multi_record_containers(tmp_path, shared_file):
    by_version: dict = {}
    for name in sorted(ZTF_SAMPLES):
        with open(shared_file(ZTF + name), "rb") as f:
            reader = fastavro.reader(f)
            by_version.setdefault(name.split(".")[1], (reader.writer_schema, []))[1].extend(
                reader)
    for version, (schema, records) in by_version.items():
        records = records * 2
        for codec in CODECS:
            out = tmp_path / f"ztf.{version}.{codec}.avro"
            _write_container(out, schema, records, codec, sync_interval=1000)
            batch = read_alert_file(out)
            assert len(batch) == len(records)
            jd = np.array([r["candidate"]["jd"] for r in records])
            assert np.array_equal(batch.mjd_tai, Time(jd, format="jd", scale="utc").tai.mjd)
            for i, rec in enumerate(records):
                cand = rec["candidate"]
                assert batch.alert_id[i] == rec["candid"]
                assert batch.object_id[i] == rec["objectId"]
                assert batch.ra[i] == cand["ra"] and batch.dec[i] == cand["dec"]
                assert batch.mag[i] == pytest.approx(cand["magpsf"], rel=1e-7)
                prv = any(p["candid"] is not None for p in rec["prv_candidates"] or [])
                assert bool(batch.is_new[i]) == (not prv)
                # the packet is a one-record container of the same record
                assert list(fastavro.reader(io.BytesIO(batch.packets[i]))) == [rec]


def _blocks_of(path) -> tuple[list[int], bytes]:
    """The record count of each block (fastavro's block reader) and the file's bytes."""
    with open(path, "rb") as f:
        counts = [block.num_records for block in fastavro.block_reader(f)]
    return counts, path.read_bytes()


def test_corrupt_and_truncated_containers_name_file_and_record(tmp_path):
    night = simulate_night(30, start_mjd_tai=60900.0, rng=np.random.default_rng(11),
                           n_previous=2, cutout_bytes=200, alerts_per_visit=10)
    base = tmp_path / "base.avro"
    night.write_container(base)
    with open(base, "rb") as f:
        reader = fastavro.reader(f)
        schema, records = reader.writer_schema, list(reader)
    for codec in CODECS:
        path = tmp_path / f"ok.{codec}.avro"
        _write_container(path, schema, records, codec, sync_interval=2000)
        counts, data = _blocks_of(path)
        assert len(counts) >= 4
        sync = data[-16:]
        # 1. a damaged sync marker after the second block: that block is lost, not the others
        marks = [i for i in range(len(data)) if data[i:i + 16] == sync]
        second_end = marks[2]  # header sync, block 1's, block 2's
        bad = tmp_path / f"badsync.{codec}.avro"
        bad.write_bytes(data[:second_end] + bytes(16) + data[second_end + 16:])
        seen: list[BadAlertError] = []
        batch = _read_skipping(bad, seen)
        assert len(seen) == 1 and seen[0].index == counts[0]
        assert seen[0].source == f"{bad}#{counts[0]}" and str(bad) in str(seen[0])
        kept = set(batch.alert_id.tolist())
        lost = {r["diaSource"]["diaSourceId"] for r in records[counts[0]:counts[0] + counts[1]]}
        assert kept == {r["diaSource"]["diaSourceId"] for r in records} - lost
        # 2. truncated inside the last block: the records before it are all read
        cut = tmp_path / f"cut.{codec}.avro"
        cut.write_bytes(data[:-30])
        seen = []
        batch = _read_skipping(cut, seen)
        assert len(seen) == 1 and seen[0].index == sum(counts[:-1])
        assert len(batch) == sum(counts[:-1])
    # 3. garbage inside the records of a null-codec block (its framing intact): the block's
    #    records from the bad one on are lost, the next blocks are read
    path = tmp_path / "ok.null.avro"
    counts, data = _blocks_of(path)
    marks = [i for i in range(len(data)) if data[i:i + 16] == data[-16:]]
    start = marks[1] + 16
    _, p = _varint(data, start)
    size, p = _varint(data, p)
    garbled = bytearray(data)
    garbled[p + 20:p + size] = b"\xff" * (size - 20)  # never-ending varints
    bad = tmp_path / "garbled.avro"
    bad.write_bytes(bytes(garbled))
    seen = []
    batch = _read_skipping(bad, seen)
    assert len(seen) == 1 and counts[0] <= seen[0].index < counts[0] + counts[1]
    assert "lost" in seen[0].reason and seen[0].source == f"{bad}#{seen[0].index}"
    assert len(batch) == len(records) - (counts[0] + counts[1] - seen[0].index)


def _read_skipping(path, seen: list):
    return read_alert_file(path, on_error=seen.append)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    acc = shift = 0
    while True:
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7


def test_decode_errors_carry_index_and_source(shared_file):
    good = _sample_wire(shared_file)
    messages = [good, b"garbage", good, good[:30]]
    _, errors = decode_wire_many(messages, [f"t/1/{i}" for i in range(4)])
    assert [(e.index, e.source) for e in errors] == [(1, "t/1/1"), (3, "t/1/3")]
    assert errors[1].truncated and not errors[0].truncated
    assert str(errors[0]) == f"t/1/1: {errors[0].reason}"


class _FakeMessage:
    """The parts of a ``confluent_kafka.Message`` the alert consumer reads."""

    def __init__(self, offset: int, value: bytes | None) -> None:
        self._offset, self._value = offset, value

    def error(self):
        return None

    def value(self):
        return self._value

    def key(self):
        return b"k%d" % self._offset

    def topic(self):
        return "alerts"

    def partition(self):
        return 2

    def offset(self):
        return self._offset

    def timestamp(self):
        return 1, 1_700_000_000_000


def test_kafka_poll_refuses_each_bad_message_with_its_own_source(shared_file):
    """Refused messages are paired with their Kafka message by the error's index (not by
    parsing its text): the same bad bytes at two offsets give two distinct refusals."""
    from types import SimpleNamespace

    from mmcross.brokers.kafka_alerts import AlertConsumer

    good = _sample_wire(shared_file)
    values = [good, b"garbage", good[:30], b"garbage", None, good]
    messages = [_FakeMessage(100 + i, v) for i, v in enumerate(values)]
    consumer = object.__new__(AlertConsumer)  # no broker: the poll logic alone
    consumer.schemas, consumer.keep_packets, consumer._on_error = None, True, None
    consumer.consumer = SimpleNamespace(consume=lambda n, timeout: messages)
    polled = consumer.poll()
    assert len(polled.batch) == 2 and polled.messages == 6
    assert polled.offsets == {("alerts", 2): 106}
    got = sorted((str(r.source), r.key, r.value, r.error.index) for r in polled.refused)
    assert [(s, k, v) for s, k, v, _ in got] == [
        ("alerts/2/101", b"k101", b"garbage"), ("alerts/2/102", b"k102", good[:30]),
        ("alerts/2/103", b"k103", b"garbage"), ("alerts/2/104", b"k104", None)]
    assert all(str(r.error).startswith(f"{r.source}: ") for r in polled.refused)

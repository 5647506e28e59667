"""The numba prefix decoder (mmcross.brokers.avro_skip) against fastavro full decodes, bad input,
mmap."""

from __future__ import annotations

import dataclasses
import gc
import io
import math
import struct

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcross.app.simulate import simulate_night
from mmcross.brokers import avro_skip
from mmcross.brokers.alert_decoding import HEAD_BYTES, decode_wire_many, encode_wire
from mmcross.brokers.alert_files import iter_alert_batches, write_wire_stream
from mmcross.brokers.rubin_schemas import get_schema, known_schema_ids
from mmcross.model.errors import BadAlertError

LSST = "alerts/lsst/samples/"
WIRE_SAMPLES = ("lsst.v11_1.wire.fake.avro", "lsst.v7_4.wire.HSC_396895612567600.avro",
                "lsst.v9_0.wire.7912941781254298.avro")


def _buffer(messages: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(m) for m in messages], np.int64)
    ends = np.cumsum(lengths)
    return np.frombuffer(b"".join(messages), np.uint8), ends - lengths, ends


def _full(message: bytes) -> dict:
    """Independent reference: the whole packet decoded by fastavro with the writer schema."""
    sid = struct.unpack(">I", message[1:5])[0]
    return fastavro.schemaless_reader(io.BytesIO(message[5:]), get_schema(sid).definition, None)


def _assert_agrees(d: avro_skip.Decoded, i: int, message: bytes) -> None:
    ref = _full(message)
    schema = get_schema(struct.unpack(">I", message[1:5])[0])
    ds = ref["diaSource"]
    assert d.status[i] == avro_skip.OK
    assert d.schema_id[i] == schema.schema_id
    assert d.alert_id[i] == ds["diaSourceId"] and not d.id_null[i]
    assert d.ra[i] == ds["ra"]  # exact: the same IEEE bytes
    assert d.dec[i] == ds[schema.dec_field]
    assert d.mjd_tai[i] == ds[schema.time_field]
    assert d.object_id[i] == (ds.get("diaObjectId") or 0)
    assert bool(d.sso[i]) == bool(ds.get("ssObjectId"))
    assert bool(d.has_history[i]) == bool(ref["prvDiaSources"])
    flux = _ref_flux(ds)
    if flux is None:
        assert np.isnan(d.psf_flux[i])
    else:
        assert d.psf_flux[i] == flux


def _ref_flux(ds: dict) -> float | None:
    """``psfFlux`` (v5+) or ``psFlux`` (v3-v4) of a fully decoded diaSource, nJy."""
    names = [k for k in ("psfFlux", "psFlux") if k in ds]
    assert len(names) == 1, f"diaSource has flux fields {names}"
    return ds[names[0]]


def _ref_mag(message: bytes) -> float:
    """AB magnitude from the independent full decode: -2.5 log10(flux nJy) + 31.4, or NaN."""
    flux = _ref_flux(_full(message)["diaSource"])
    return -2.5 * math.log10(flux) + 31.4 if flux is not None and flux > 0 else math.nan


def _assert_mags(mag: np.ndarray, messages: list[bytes]) -> None:
    ref = np.array([_ref_mag(m) for m in messages])
    assert mag.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(mag), np.isnan(ref))
    np.testing.assert_allclose(mag[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=1e-12)


def _variants(message: bytes) -> list[bytes]:
    """The packet re-encoded with null/zero object ids, an SSO id and empty/no history."""
    sid = struct.unpack(">I", message[1:5])[0]
    schema = get_schema(sid)
    record = _full(message)
    ds_fields = {f["name"]: f["type"] for f in next(
        f for f in schema.definition["fields"] if f["name"] == "diaSource")["type"]["fields"]}
    out = []
    flux = "psfFlux" if "psfFlux" in ds_fields else "psFlux"
    for change in ({"prvDiaSources": []}, {"prvDiaSources": None},
                   {"diaObjectId": 0}, {"diaObjectId": 0, "ssObjectId": 12345},
                   {"ssObjectId": 0}, {"diaObjectId": None},
                   {flux: None}, {flux: 0.0}, {flux: -250.0}, {flux: 3631e9}):
        rec = {**record, "diaSource": dict(record["diaSource"])}
        ok = True
        for key, value in change.items():
            if key == "prvDiaSources":
                rec[key] = value
            elif key in ds_fields and (value is not None or isinstance(ds_fields[key], list)):
                rec["diaSource"][key] = value
            else:
                ok = False
        if ok:
            out.append(encode_wire(rec, sid))
    return out


def test_every_shipped_schema_compiles_to_a_program():
    table = avro_skip.program_table()
    for sid in known_schema_ids():
        assert table.by_id[sid] >= 0, f"schema {sid} fell back to fastavro"
    assert len(table.by_id) <= 4242 or table.by_id[4242] == -1


@pytest.mark.parametrize("schema_id", known_schema_ids())
def test_kernel_equals_fastavro_full_decode_for_every_schema(schema_id):
    night = simulate_night(6, start_mjd_tai=60900.0, rng=np.random.default_rng(schema_id),
                           schema_id=schema_id, n_previous=2, cutout_bytes=40,
                           alerts_per_visit=3, new_fraction=0.5)
    messages = list(night.messages())
    messages += _variants(messages[0]) + _variants(messages[-1])
    buf, starts, ends = _buffer(messages)
    d = avro_skip.decode_messages(buf, starts, ends)
    for i, message in enumerate(messages):
        _assert_agrees(d, i, message)
    assert d.has_history.any() and not d.has_history.all()
    # bare bodies of the same schema decode the same
    bodies = [m[5:] for m in messages]
    b, s, e = _buffer(bodies)
    d2 = avro_skip.decode_messages(b, s, e, body_schema_id=schema_id)
    assert np.array_equal(d2.alert_id, d.alert_id) and np.array_equal(d2.ra, d.ra)
    assert np.array_equal(d2.has_history, d.has_history)
    np.testing.assert_array_equal(d2.psf_flux, d.psf_flux)
    # the AlertBatch magnitude: -2.5 log10(psfFlux) + 31.4, NaN for null / <= 0 flux
    batch, errors = decode_wire_many(messages)
    assert errors == [] and len(batch) == len(messages)
    _assert_mags(batch.mag, messages)
    assert np.isfinite(batch.mag).sum() >= len(messages) - 6  # 2 x (null, 0, negative)
    assert np.isnan(batch.mag).sum() >= 4
    assert np.any(np.abs(batch.mag) < 1e-3)  # 3631 Jy (float32) is AB magnitude ~0


def test_kernel_equals_fastavro_on_real_wire_samples(shared_file):
    messages = [shared_file(LSST + name).read_bytes() for name in WIRE_SAMPLES]
    d = avro_skip.decode_messages(*_buffer(messages))
    for i, message in enumerate(messages):
        _assert_agrees(d, i, message)
    # and decode_wire_many (HEAD_BYTES heads only) agrees with the whole-buffer decode
    batch, errors = decode_wire_many(messages, list(WIRE_SAMPLES))
    assert errors == [] and np.array_equal(batch.alert_id, d.alert_id)
    assert [bytes(p) for p in batch.packets] == messages
    _assert_mags(batch.mag, messages)  # v7.4/v9.0 samples have psfFlux < 0: NaN
    assert np.isfinite(batch.mag).any() and np.isnan(batch.mag).any()


def _prefix_end(message: bytes) -> int:
    """Bytes the decoder must read: header + fastavro prefix + prvDiaSources head."""
    schema = get_schema(struct.unpack(">I", message[1:5])[0])
    bio = io.BytesIO(message[5:])
    fastavro.schemaless_reader(bio, schema.prefix, None)
    pos = bio.tell()

    def varint(p: int) -> tuple[int, int]:
        acc = shift = 0
        while True:
            b = message[5 + p]
            acc |= (b & 0x7F) << shift
            p += 1
            if not b & 0x80:
                return (acc >> 1) ^ -(acc & 1), p
            shift += 7

    branch, pos = varint(pos)
    if branch == 1:
        _, pos = varint(pos)
    return 5 + pos


def test_truncated_at_every_cut_point_is_an_error_and_neighbours_decode(shared_file):
    sample = _full(shared_file(LSST + "lsst.v11_1.wire.fake.avro").read_bytes())
    # with diaSource.diaObjectId set: nothing past the prvDiaSources head is read
    good = encode_wire({**sample, "diaSource": {**sample["diaSource"], "diaObjectId": 777}},
                       1101)
    need = _prefix_end(good)
    cuts = list(range(0, need + 3))
    messages = [good[:c] for c in cuts] + [good]
    sources = [f"t/0/{c}" for c in cuts] + ["t/0/good"]
    batch, errors = decode_wire_many(messages, sources)
    assert len(errors) == need  # every cut before the end of the prvDiaSources head
    assert [str(e).split(":")[0] for e in errors] == sources[:need]
    assert all(isinstance(e, BadAlertError) for e in errors)
    assert sum("truncated" in str(e) for e in errors) == need - 6  # 0..5: header too short
    assert batch.sources == sources[need:]
    assert (batch.alert_id == _full(good)["diaSource"]["diaSourceId"]).all()


def test_corrupt_headers_varints_unions_and_coordinates_are_errors(shared_file):
    good = shared_file(LSST + "lsst.v11_1.wire.fake.avro").read_bytes()
    record = _full(good)
    far = {**record, "diaSource": {**record["diaSource"], "ra": 361.0}}
    nan_time = {**record, "diaSource": {**record["diaSource"], "midpointMjdTai": float("nan")}}
    branch = 5 + next(k for k, b in enumerate(good[5:]) if b < 0x80) + 1  # after diaSourceId
    assert get_schema(1101).prefix_fields[1] == "observation_reason"
    bad = {
        "magic": b"\x01" + good[1:],
        "schema": b"\x00" + struct.pack(">I", 4242) + good[5:],
        "varint": good[:5] + b"\xff" * 11 + good[16:],  # diaSourceId: an 11-byte varint
        "union": good[:branch] + b"\x06" + good[branch + 1:],  # observation_reason branch 3
        "ra": encode_wire(far, 1101),
        "time": encode_wire(nan_time, 1101),
    }
    messages = [good, *bad.values(), good]
    sources = ["first", *bad, "last"]
    batch, errors = decode_wire_many(messages, sources)
    assert batch.sources == ["first", "last"]
    text = {str(e).split(":")[0]: str(e) for e in errors}
    assert set(text) == set(bad)
    assert "first byte 0x01" in text["magic"]
    assert "unknown Rubin alert schema id 4242" in text["schema"]
    assert "malformed Avro varint" in text["varint"]
    assert "union" in text["union"]
    assert "outside" in text["ra"] and "361.0" in text["ra"]
    assert "not a finite MJD" in text["time"]


def test_prefix_longer_than_the_copied_head_is_decoded_whole(shared_file):
    good = shared_file(LSST + "lsst.v11_1.wire.fake.avro").read_bytes()
    record = {**_full(good), "observation_reason": "x" * (2 * HEAD_BYTES)}
    long_one = encode_wire(record, 1101)
    batch, errors = decode_wire_many([good, long_one, long_one[:HEAD_BYTES + 10]],
                                     ["a", "b", "c"])
    assert batch.sources == ["a", "b"] and [str(e).split(":")[0] for e in errors] == ["c"]
    assert batch.alert_id[1] == record["diaSource"]["diaSourceId"]
    assert bytes(batch.packets[1]) == long_one


def test_unsupported_schema_falls_back_to_fastavro(monkeypatch, shared_file):
    schema = get_schema(1101)
    prefix = dict(schema.prefix)
    prefix["fields"] = [*prefix["fields"][:-1],
                        {"name": "extra", "type": {"type": "array", "items": "long"}},
                        prefix["fields"][-1]]
    with pytest.raises(avro_skip.UnsupportedSchemaError, match="array"):
        avro_skip.compile_schema(dataclasses.replace(schema, prefix=prefix))
    table = avro_skip.build_table([dataclasses.replace(schema, prefix=prefix)])
    assert table.by_id[1101] == -2
    monkeypatch.setattr(avro_skip, "program_table", lambda schema_ids=None: table)
    good = shared_file(LSST + "lsst.v11_1.wire.fake.avro").read_bytes()
    batch, errors = decode_wire_many([good, good[:40]], ["a", "b"])
    assert errors and "b" in str(errors[0])
    assert batch.alert_id[0] == _full(good)["diaSource"]["diaSourceId"]
    _assert_mags(batch.mag, [good])  # the fastavro path reads the flux too


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6),
       st.sampled_from(known_schema_ids()), st.booleans())
def test_random_bytes_never_crash_the_kernel(blobs, schema_id, with_header):
    if with_header:
        blobs = [b"\x00" + struct.pack(">I", schema_id) + b for b in blobs]
    buf, starts, ends = _buffer(blobs)
    d = avro_skip.decode_messages(buf, starts, ends)
    assert set(d.status.tolist()) <= set(range(11))
    assert (d.pos >= 0).all()
    frames = avro_skip.find_frames(buf, 0)
    assert (frames.ends <= len(buf)).all() and (frames.starts <= frames.ends).all()


_SAMPLE = next(simulate_night(1, start_mjd_tai=60900.0, rng=np.random.default_rng(1),
                              schema_id=1101, n_previous=1, cutout_bytes=1).messages())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, min(len(_SAMPLE), 1200) - 1),  # the prefix, mostly
                          st.integers(0, 255)),
                min_size=1, max_size=8))
def test_mutated_packet_never_crashes(flips):
    message = bytearray(_SAMPLE)
    for pos, value in flips:
        message[pos] = value
    batch, errors = decode_wire_many([bytes(message), _SAMPLE], ["m", "ok"])
    assert batch.sources[-1] == "ok" and len(batch) + len(errors) == 2


def test_frames_and_mmap_packets_outlive_the_iterator(tmp_path):
    night = simulate_night(9, start_mjd_tai=60900.0, rng=np.random.default_rng(5),
                           n_previous=1, cutout_bytes=5000, alerts_per_visit=4)
    messages = list(night.messages())
    messages.insert(4, b"\x00junk")
    stream = tmp_path / "n.wires"
    write_wire_stream(stream, messages)
    seen: list[BadAlertError] = []
    batches = list(iter_alert_batches([stream, stream], chunk=4, on_error=seen.append))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]  # chunks span the two files
    assert len(seen) == 2 and all(f"{stream}#4" in str(e) for e in seen)
    stream.unlink()
    gc.collect()
    packets = [bytes(p) for b in batches for p in b.packets]
    good = [m for m in messages if m != b"\x00junk"]
    assert packets == good + good
    assert batches[0].sources[:2] == [f"{stream}#0", f"{stream}#1"]
    no_packets = list(iter_alert_batches([tmp_path], keep_packets=False))
    assert no_packets == []


def test_a_batch_prepares_only_the_schemas_it_names(shared_file):
    good = shared_file(LSST + "lsst.v11_1.wire.fake.avro").read_bytes()
    buf, starts, ends = _buffer([good, good, b"\x00\x00\x00\x00\x01", b"\x01junk!!"])
    assert avro_skip.schema_ids_in(buf, starts, ends) == {1101}
    assert avro_skip.schema_ids_in(buf, starts, ends, body_schema_id=900) == {900}
    unknown = _buffer([b"\x00" + struct.pack(">I", 4242) + good[5:]])
    assert avro_skip.schema_ids_in(*unknown) == frozenset()
    d = avro_skip.decode_messages(*unknown)
    assert d.status.tolist() == [avro_skip.UNKNOWN_SCHEMA]  # still named as unknown

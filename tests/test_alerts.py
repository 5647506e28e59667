"""Alert decoding: real Rubin/ZTF samples, prefix == full decode, bad packets skipped."""

from __future__ import annotations

import io
import struct

import fastavro
import numpy as np
import pytest
from astropy.time import Time

from mmcross.app.simulate import simulate_night
from mmcross.brokers.alert_decoding import decode_wire, decode_wire_many, encode_wire, split_wire
from mmcross.brokers.alert_files import iter_alert_batches, read_alert_file, write_wire_stream
from mmcross.brokers.rubin_schemas import get_schema, known_schema_ids, latest_schema_id
from mmcross.model.errors import BadAlertError

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

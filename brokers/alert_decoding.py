"""One optical alert packet (Rubin or ZTF) -> the row of an :class:`AlertBatch`.

Rubin packets arrive in the Confluent wire format: byte ``0x00``, the schema id as a 4-byte
big-endian integer (``major * 100 + minor``), then the schemaless Avro body. Only what
matching needs is decoded: the body's prefix up to ``diaSource`` (with fastavro and the
schema's prefix writer schema), then the two varints that follow it, which say whether
``prvDiaSources`` is null/empty (first detection). The packet bytes are kept whole.

Rows: ``alert_id`` = ``diaSource.diaSourceId`` (ZTF ``candid``); ``object_id`` =
``diaObjectId`` as text, from ``diaSource`` or, when absent there, from ``diaObject`` (ZTF
``objectId``; ``""`` for a solar-system source without one; an id of 0 means none);
``ra``/``dec`` degrees ICRS;
``mjd_tai`` = ``midpointMjdTai`` (ZTF ``jd`` is UTC and converted with astropy); ``is_new``
= no earlier detection in the packet (``prvDiaSources`` null or empty) and not a
solar-system object (``ssObjectId`` null or 0).

A decoding prefix cannot see damage past ``diaSource`` (e.g. a body cut inside the cutouts).
"""

from __future__ import annotations

import io
import logging
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import fastavro
import numpy as np
from astropy.time import Time

from brokers.rubin_schemas import RubinSchema, get_schema, schema_id_from_name
from mmcross.alert import AlertBatch
from mmcross.errors import BadAlertError

log = logging.getLogger(__name__)

WIRE_MAGIC = 0
_HEADER = struct.Struct(">bI")


class AlertRow(NamedTuple):
    """One decoded alert (the units of :class:`AlertBatch`)."""

    alert_id: int
    object_id: str
    ra: float
    dec: float
    mjd_tai: float
    is_new: bool
    packet: bytes | None
    source: str


def rows_to_batch(rows: Sequence[AlertRow], *, keep_packets: bool = True) -> AlertBatch:
    """Assemble decoded rows into one :class:`AlertBatch` (packets kept if ``keep_packets``)."""
    if not rows:
        return AlertBatch.empty()
    return AlertBatch(
        np.fromiter((r.alert_id for r in rows), np.int64, len(rows)),
        np.array([r.object_id for r in rows], dtype=object),
        np.fromiter((r.ra for r in rows), np.float64, len(rows)),
        np.fromiter((r.dec for r in rows), np.float64, len(rows)),
        np.fromiter((r.mjd_tai for r in rows), np.float64, len(rows)),
        packets=[r.packet for r in rows] if keep_packets else None,
        sources=[r.source for r in rows],
        is_new=np.fromiter((r.is_new for r in rows), bool, len(rows)),
    )


def _read_long(buf: bytes, pos: int, source: str) -> tuple[int, int]:
    """Avro zigzag varint at ``pos`` -> (value, next position)."""
    shift = 0
    acc = 0
    while True:
        if pos >= len(buf):
            raise BadAlertError(f"{source}: Avro body truncated at byte {pos}")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise BadAlertError(f"{source}: malformed Avro varint at byte {pos}")


def _check(alert_id: Any, ra: Any, dec: Any, mjd: Any, source: str) -> None:
    if not isinstance(alert_id, int):
        raise BadAlertError(f"{source}: alert id is {alert_id!r}, not an integer")
    if not (isinstance(ra, float) and isinstance(dec, float)
            and 0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
        raise BadAlertError(
            f"{source}: alert {alert_id} position RA={ra!r}, Dec={dec!r} deg is outside "
            "RA [0, 360], Dec [-90, 90] (degrees ICRS)")
    if not (isinstance(mjd, float) and math.isfinite(mjd)):
        raise BadAlertError(f"{source}: alert {alert_id} has time {mjd!r}, not a finite MJD")


def split_wire(message: bytes, source: str = "") -> tuple[int, memoryview]:
    """Confluent wire-format message -> (schema id, schemaless Avro body)."""
    source = source or "alert"
    if len(message) < _HEADER.size + 1:
        raise BadAlertError(f"{source}: {len(message)} bytes is too short for a wire-format alert")
    magic, schema_id = _HEADER.unpack_from(message)
    if magic != WIRE_MAGIC:
        raise BadAlertError(
            f"{source}: not a Confluent wire-format Avro message (first byte {magic:#04x}, "
            "expected 0x00)")
    return schema_id, memoryview(message)[_HEADER.size:]


def _object_id_from_diaobject(body: memoryview, schema: RubinSchema, source: str) -> str:
    """Slow path: decode the whole body to read ``diaObject.diaObjectId``."""
    try:
        record = fastavro.schemaless_reader(io.BytesIO(body), schema.definition, None)
    except Exception as exc:  # fastavro raises many kinds on corrupt input
        raise BadAlertError(f"{source}: cannot decode Rubin v{schema.version} body: {exc!r}") \
            from exc
    obj = record.get("diaObject")
    oid = obj.get("diaObjectId") if obj else None
    return "" if oid is None else str(oid)


def decode_rubin_body(body: bytes | memoryview, schema: RubinSchema, source: str,
                      packet: bytes | None) -> AlertRow:
    """Decode the prefix of one schemaless Rubin alert body (see the module docstring)."""
    bio = io.BytesIO(body)
    try:
        head = fastavro.schemaless_reader(bio, schema.prefix, schema.prefix_reader)
    except Exception as exc:  # fastavro raises EOFError, IndexError, UnicodeError, ...
        raise BadAlertError(
            f"{source}: cannot decode Rubin alert (schema v{schema.version}) prefix: {exc!r}"
        ) from exc
    pos = bio.tell()
    # prvDiaSources: union ["null", array] index, then the first array block count.
    branch, pos = _read_long(body, pos, source)
    if branch == 0:
        has_history = False
    elif branch == 1:
        count, pos = _read_long(body, pos, source)
        has_history = count != 0
    else:
        raise BadAlertError(f"{source}: bad prvDiaSources union branch {branch}")
    ds = head["diaSource"]
    alert_id = ds.get("diaSourceId")
    ra, dec, mjd = ds.get(schema.ra_field), ds.get(schema.dec_field), ds.get(schema.time_field)
    _check(alert_id, ra, dec, mjd, source)
    # Rubin writes 0 (older packets) or null for "no such association".
    dia_object_id = ds.get("diaObjectId")
    is_sso = bool(ds.get("ssObjectId"))
    if dia_object_id:
        object_id = str(dia_object_id)
    elif is_sso:
        object_id = ""
    else:
        object_id = _object_id_from_diaobject(body, schema, source)
    is_new = not has_history and not is_sso
    return AlertRow(alert_id, object_id, ra, dec, mjd, is_new, packet, source)


def decode_wire_row(message: bytes, source: str = "", *, keep_packet: bool = True) -> AlertRow:
    """Decode one wire-format Rubin alert to an :class:`AlertRow`."""
    source = source or "alert"
    schema_id, body = split_wire(message, source)
    schema = get_schema(schema_id, source=source)
    return decode_rubin_body(body, schema, source, bytes(message) if keep_packet else None)


def decode_wire(message: bytes, source: str = "") -> AlertBatch:
    """One Confluent wire-format Rubin alert -> a 1-row :class:`AlertBatch` (packet kept).

    Raises:
        BadAlertError: not wire format, unknown schema id, undecodable or truncated prefix,
            position outside RA [0, 360] / Dec [-90, 90] degrees.
    """
    return rows_to_batch([decode_wire_row(message, source)])


def decode_wire_many(messages: Sequence[bytes], sources: Sequence[str] | None = None, *,
                     keep_packets: bool = True) -> tuple[AlertBatch, list[BadAlertError]]:
    """Decode many wire-format alerts; bad ones are left out and returned as errors.

    ``sources[i]`` names message ``i`` (e.g. ``"topic/partition/offset"``); by default
    ``"message#i"``.
    """
    rows: list[AlertRow] = []
    errors: list[BadAlertError] = []
    for i, message in enumerate(messages):
        source = sources[i] if sources is not None else f"message#{i}"
        try:
            rows.append(decode_wire_row(message, source, keep_packet=keep_packets))
        except BadAlertError as exc:
            errors.append(exc)
    return rows_to_batch(rows, keep_packets=keep_packets), errors


def encode_wire(record: dict[str, Any], schema_id: int) -> bytes:
    """A Rubin alert record (dict) -> Confluent wire-format message with ``schema_id``."""
    schema = get_schema(schema_id)
    out = io.BytesIO()
    out.write(_HEADER.pack(WIRE_MAGIC, schema_id))
    fastavro.schemaless_writer(out, schema.definition, record)
    return out.getvalue()


def wire_header(schema_id: int) -> bytes:
    """The 5-byte Confluent wire-format header for ``schema_id``."""
    return _HEADER.pack(WIRE_MAGIC, schema_id)


def rubin_schema_of(record_name: str, source: str = "") -> RubinSchema | None:
    """The registered schema for a record name like ``"lsst.v9_0.alert"``, else ``None``."""
    sid = schema_id_from_name(record_name)
    return None if sid is None else get_schema(sid, source=source)


def ztf_rows(records: Sequence[dict[str, Any]], sources: Sequence[str],
             packets: Sequence[bytes | None]) -> tuple[list[AlertRow], list[BadAlertError]]:
    """Decoded ZTF alert records -> rows (``jd`` UTC -> MJD TAI with astropy, vectorised)."""
    good: list[tuple[dict[str, Any], str, bytes | None]] = []
    errors: list[BadAlertError] = []
    for rec, src, pkt in zip(records, sources, packets, strict=True):
        try:
            cand = rec["candidate"]
            _check(rec["candid"], cand["ra"], cand["dec"], cand["jd"], src)
            if not isinstance(rec.get("objectId"), str):
                raise BadAlertError(f"{src}: ZTF alert without objectId")
        except (KeyError, TypeError) as exc:
            errors.append(BadAlertError(f"{src}: not a ZTF alert record: {exc!r}"))
            continue
        except BadAlertError as exc:
            errors.append(exc)
            continue
        good.append((rec, src, pkt))
    if not good:
        return [], errors
    jd = np.array([rec["candidate"]["jd"] for rec, _, _ in good])
    mjd_tai = Time(jd, format="jd", scale="utc").tai.mjd
    rows = []
    for (rec, src, pkt), mjd in zip(good, mjd_tai, strict=True):
        prv = rec.get("prv_candidates") or []
        # prv_candidates also holds non-detections (upper limits), which have no candid.
        is_new = not any(p.get("candid") is not None for p in prv)
        cand = rec["candidate"]
        rows.append(AlertRow(int(rec["candid"]), rec["objectId"], float(cand["ra"]),
                             float(cand["dec"]), float(mjd), is_new, pkt, src))
    return rows, errors

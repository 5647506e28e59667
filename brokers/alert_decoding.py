"""One optical alert packet (Rubin or ZTF) -> the row of an :class:`AlertBatch`.

Rubin packets arrive in the Confluent wire format: byte ``0x00``, the schema id as a 4-byte
big-endian integer (``major * 100 + minor``), then the schemaless Avro body. Only what
matching needs is decoded: the body's prefix up to ``diaSource``, then the two varints that
follow it, which say whether ``prvDiaSources`` is null/empty (first detection). Many packets
are decoded at once by the numba kernel of :mod:`mmcross.brokers.avro_skip` (straight from a buffer
such as a memory-mapped file); a schema that kernel cannot express falls back to fastavro
with the schema's prefix writer schema. The packet bytes are kept whole.

Rows: ``alert_id`` = ``diaSource.diaSourceId`` (ZTF ``candid``); ``object_id`` =
``diaObjectId`` as text, from ``diaSource`` or, when absent there, from ``diaObject`` (ZTF
``objectId``; ``""`` for a solar-system source without one; an id of 0 means none);
``ra``/``dec`` degrees ICRS;
``mjd_tai`` = ``midpointMjdTai`` (ZTF ``jd`` is UTC and converted with astropy); ``is_new``
= no earlier detection in the packet (``prvDiaSources`` null or empty) and not a
solar-system object (``ssObjectId`` null or 0); ``mag`` = AB magnitude of
``diaSource.psfFlux`` (nJy; ``psFlux`` before v5), ``-2.5 log10(flux) + 31.4``, NaN when the
flux is null, absent or <= 0 (ZTF: ``candidate.magpsf``, already AB).

A decoding prefix cannot see damage past ``diaSource`` (e.g. a body cut inside the cutouts).
"""

from __future__ import annotations

import io
import logging
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import fastavro
import numpy as np

from mmcross.brokers import avro_skip
from mmcross.brokers.rubin_schemas import RubinSchema, get_schema
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import BadAlertError
from mmcross.model.plausibility import (
    EARLIEST_MJD,
    FUTURE_MARGIN_DAYS,
    implausible_mjd,
    now_mjd,
)

log = logging.getLogger(__name__)

WIRE_MAGIC = 0
_HEADER = struct.Struct(">bI")
#: AB magnitude of a 1 nJy flux: ``-2.5 log10(1e-9 Jy / 3631 Jy)``, rounded as Rubin does.
AB_ZERO_POINT_NJY = 31.4


def ab_mag_from_njy(flux_njy: np.ndarray | float | None) -> np.ndarray:
    """AB magnitude of fluxes in nJy (``-2.5 log10(flux) + 31.4``); NaN where the flux is
    missing (NaN/None), not finite or <= 0."""
    flux = np.asarray(np.nan if flux_njy is None else flux_njy, dtype=np.float64)
    ok = np.isfinite(flux) & (flux > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, -2.5 * np.log10(np.where(ok, flux, 1.0)) + AB_ZERO_POINT_NJY,
                        np.nan)


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
    mag: float = math.nan  #: AB magnitude (NaN unknown)


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
        mag=np.fromiter((r.mag for r in rows), np.float64, len(rows)),
    )


def _read_long(buf: bytes, pos: int, source: str) -> tuple[int, int]:
    """Avro zigzag varint at ``pos`` -> (value, next position)."""
    shift = 0
    acc = 0
    while True:
        if pos >= len(buf):
            raise BadAlertError(f"Avro body truncated at byte {pos}", source=source,
                                truncated=True)
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise BadAlertError(f"malformed Avro varint at byte {pos}", source=source)


JD_MJD = 2400000.5  # Julian Date minus Modified Julian Date, days


def _plausible_mjd(mjd: np.ndarray, now: float) -> np.ndarray:
    """Which times (MJD) lie in the survey era (:mod:`mmcross.model.plausibility`)."""
    return (mjd >= EARLIEST_MJD) & (mjd <= now + FUTURE_MARGIN_DAYS)


def _check(alert_id: Any, ra: Any, dec: Any, mjd: Any, source: str,
           now: float | None = None) -> None:
    if not isinstance(alert_id, int):
        raise BadAlertError(f"alert id is {alert_id!r}, not an integer", source=source)
    if not (isinstance(ra, float) and isinstance(dec, float)
            and 0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
        raise BadAlertError(
            f"alert {alert_id} position RA={ra!r}, Dec={dec!r} deg is outside "
            "RA [0, 360], Dec [-90, 90] (degrees ICRS)", source=source)
    if not (isinstance(mjd, float) and math.isfinite(mjd)):
        raise BadAlertError(f"alert {alert_id} has time {mjd!r}, not a finite MJD",
                            source=source)
    if (why := implausible_mjd(mjd, f"alert {alert_id} time", now=now)) is not None:
        raise BadAlertError(why, source=source)


def split_wire(message: bytes, source: str = "") -> tuple[int, memoryview]:
    """Confluent wire-format message -> (schema id, schemaless Avro body)."""
    source = source or "alert"
    if len(message) < _HEADER.size + 1:
        raise BadAlertError(f"{len(message)} bytes is too short for a wire-format alert",
                            source=source, truncated=True)
    magic, schema_id = _HEADER.unpack_from(message)
    if magic != WIRE_MAGIC:
        raise BadAlertError(
            f"not a Confluent wire-format Avro message (first byte {magic:#04x}, "
            "expected 0x00)", source=source)
    return schema_id, memoryview(message)[_HEADER.size:]


def _object_id_from_diaobject(body: memoryview, schema: RubinSchema, source: str) -> str:
    """Slow path: decode the whole body to read ``diaObject.diaObjectId``."""
    try:
        record = fastavro.schemaless_reader(io.BytesIO(body), schema.definition, None)
    except Exception as exc:  # fastavro raises many kinds on corrupt input
        raise BadAlertError(f"cannot decode Rubin v{schema.version} body: {exc!r}",
                            source=source, truncated=isinstance(exc, EOFError)) from exc
    obj = record.get("diaObject")
    oid = obj.get("diaObjectId") if obj else None
    return "" if oid is None else str(oid)


def decode_rubin_body_fastavro(body: bytes | memoryview, schema: RubinSchema, source: str,
                               packet: bytes | None) -> AlertRow:
    """Decode the prefix of one schemaless Rubin alert body with fastavro (the slow path)."""
    bio = io.BytesIO(body)
    try:
        head = fastavro.schemaless_reader(bio, schema.prefix, schema.prefix_reader)
    except Exception as exc:  # fastavro raises EOFError, IndexError, UnicodeError, ...
        raise BadAlertError(
            f"cannot decode Rubin alert (schema v{schema.version}) prefix: {exc!r}",
            source=source, truncated=isinstance(exc, EOFError)) from exc
    pos = bio.tell()
    # prvDiaSources: union ["null", array] index, then the first array block count.
    branch, pos = _read_long(body, pos, source)
    if branch == 0:
        has_history = False
    elif branch == 1:
        count, pos = _read_long(body, pos, source)
        has_history = count != 0
    else:
        raise BadAlertError(f"bad prvDiaSources union branch {branch}", source=source)
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
    flux = ds.get(schema.flux_field) if schema.flux_field else None
    mag = float(ab_mag_from_njy(flux))
    return AlertRow(alert_id, object_id, ra, dec, mjd, is_new, packet, source, mag)


#: Bytes of each message :func:`decode_wire_many` copies for the kernel; a message whose
#: prefix is longer is decoded again whole.
HEAD_BYTES = 4096


def _kernel_error(status: int, pos: int, length: int, schema_id: int, source: str,
                  wire: bool) -> BadAlertError:
    """The :class:`BadAlertError` for a kernel status (``pos``: byte in the message)."""
    if status == avro_skip.TOO_SHORT:
        return BadAlertError(f"{length} bytes is too short for a wire-format alert",
                             source=source, truncated=True)
    if status == avro_skip.BAD_MAGIC:
        return BadAlertError(f"not a Confluent wire-format Avro message (first byte "
                             f"{pos:#04x}, expected 0x00)", source=source)
    if status == avro_skip.UNKNOWN_SCHEMA:
        try:
            get_schema(schema_id, source=source)
        except BadAlertError as exc:
            return exc
    where = "wire message" if wire else "Avro body"
    return BadAlertError(
        f"cannot decode Rubin alert (schema id {schema_id}) prefix: "
        f"{avro_skip.STATUS_TEXT.get(status, f'status {status}')} at byte {pos} of the "
        f"{length}-byte {where}", source=source, truncated=status == avro_skip.TRUNCATED)


class _Columns(NamedTuple):
    """Decoded rows (in message order) and the errors of the others."""

    index: np.ndarray  # int64 message index of each row
    alert_id: np.ndarray
    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mjd_tai: np.ndarray
    is_new: np.ndarray
    mag: np.ndarray
    errors: list[tuple[int, BadAlertError]]


def _decode_columns(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    source_of: Callable[[int], str],
                    message_of: Callable[[int], bytes | memoryview], *,
                    body_schema_id: int = -1, first_index: int = 0) -> _Columns:
    """Kernel-decode the messages ``buf[starts[i]:ends[i]]``; slow paths per message.

    ``message_of(i)`` gives message ``i`` whole (wire format, or the body when
    ``body_schema_id >= 0``); it is used only for fastavro fallbacks and the
    ``diaObject.diaObjectId`` look-up. The error of message ``i`` has index
    ``first_index + i``.
    """
    wire = body_schema_id < 0
    d = avro_skip.decode_messages(buf, starts, ends, body_schema_id=body_schema_id)
    alert_id, ra, dec, mjd = d.alert_id.copy(), d.ra.copy(), d.dec.copy(), d.mjd_tai.copy()
    is_new = ~d.has_history & ~d.sso
    mag = ab_mag_from_njy(d.psf_flux)
    ok = d.status == avro_skip.OK
    now = now_mjd()
    in_range = ((ra >= 0.0) & (ra <= 360.0) & (dec >= -90.0) & (dec <= 90.0)
                & _plausible_mjd(mjd, now))
    good = ok & ~d.id_null & in_range
    object_id = np.empty(len(ok), dtype=object)
    plain = good & (d.object_id != 0)
    object_id[plain] = list(map(str, d.object_id[plain].tolist()))
    object_id[good & ~plain & d.sso] = ""
    errors: list[tuple[int, BadAlertError]] = []
    for i in np.flatnonzero(~plain).tolist():
        source = source_of(i)
        try:
            if d.status[i] == avro_skip.NO_PROGRAM:
                schema = get_schema(int(body_schema_id if not wire else d.schema_id[i]))
                message = message_of(i)
                row = decode_rubin_body_fastavro(memoryview(message)[5 if wire else 0:],
                                                 schema, source, None)
                alert_id[i], object_id[i], ra[i], dec[i], mjd[i], is_new[i] = row[:6]
                mag[i] = row.mag
                good[i] = True
            elif not ok[i]:
                raise _kernel_error(int(d.status[i]), int(d.pos[i]), int(ends[i] - starts[i]),
                                    int(d.schema_id[i]), source, wire)
            elif not good[i]:
                _check(None if d.id_null[i] else int(alert_id[i]), float(ra[i]), float(dec[i]),
                       float(mjd[i]), source, now)
                raise BadAlertError("alert has a null diaSourceId", source=source)
            elif not d.sso[i]:  # no diaObjectId in diaSource: read it from diaObject
                schema = get_schema(int(d.schema_id[i]) if wire else body_schema_id)
                body = memoryview(message_of(i))[5 if wire else 0:]
                object_id[i] = _object_id_from_diaobject(body, schema, source)
        except BadAlertError as exc:
            good[i] = False
            exc.index = first_index + i
            errors.append((i, exc))
    index = np.flatnonzero(good)
    return _Columns(index, alert_id[index], object_id[index], ra[index], dec[index],
                    mjd[index], is_new[index], mag[index], errors)


def _columns_to_batch(cols: _Columns, source_of: Callable[[int], str],
                      packet_of: Callable[[int], Any] | None) -> AlertBatch:
    """Rows of :func:`_decode_columns` -> :class:`AlertBatch` (packets when ``packet_of``)."""
    index = cols.index.tolist()
    return AlertBatch(
        cols.alert_id, cols.object_id, cols.ra, cols.dec, cols.mjd_tai,
        packets=None if packet_of is None else list(map(packet_of, index)),
        sources=list(map(source_of, index)),
        is_new=cols.is_new,
        mag=cols.mag,
    )


def decode_buffer(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  source_of: Callable[[int], str], *, keep_packets: bool = True,
                  first_index: int = 0) -> tuple[AlertBatch, list[BadAlertError]]:
    """Decode the wire-format messages ``buf[starts[i]:ends[i]]`` of a uint8 buffer.

    The kept packets are zero-copy ``memoryview`` slices of ``buf`` (which they keep
    alive); ``source_of(i)`` names message ``i``. Bad messages are left out and returned as
    errors (index ``first_index + i``), in message order.
    """
    view = memoryview(buf)

    def message_of(i: int) -> memoryview:
        return view[starts[i]:ends[i]]

    cols = _decode_columns(buf, starts, ends, source_of, message_of, first_index=first_index)
    batch = _columns_to_batch(cols, source_of, None)
    if keep_packets:
        idx = cols.index
        batch.packets = [view[a:b] for a, b in zip(starts[idx].tolist(), ends[idx].tolist(),
                                                     strict=True)]
    return batch, [e for _, e in cols.errors]


def decode_rubin_body(body: bytes | memoryview, schema: RubinSchema, source: str,
                      packet: bytes | None) -> AlertRow:
    """Decode the prefix of one schemaless Rubin alert body (see the module docstring).

    Raises:
        BadAlertError: undecodable or truncated prefix, bad values (message has ``source``).
    """
    arr = np.frombuffer(body, np.uint8)
    cols = _decode_columns(arr, np.zeros(1, np.int64), np.full(1, len(arr), np.int64),
                           lambda _: source, lambda _: body, body_schema_id=schema.schema_id)
    if cols.errors:
        raise cols.errors[0][1]
    return AlertRow(int(cols.alert_id[0]), cols.object_id[0], float(cols.ra[0]),
                    float(cols.dec[0]), float(cols.mjd_tai[0]), bool(cols.is_new[0]), packet,
                    source, float(cols.mag[0]))


def decode_wire_row(message: bytes, source: str = "", *, keep_packet: bool = True) -> AlertRow:
    """Decode one wire-format Rubin alert to an :class:`AlertRow`."""
    source = source or "alert"
    arr = np.frombuffer(message, np.uint8)
    cols = _decode_columns(arr, np.zeros(1, np.int64), np.full(1, len(arr), np.int64),
                           lambda _: source, lambda _: message)
    if cols.errors:
        raise cols.errors[0][1]
    return AlertRow(int(cols.alert_id[0]), cols.object_id[0], float(cols.ra[0]),
                    float(cols.dec[0]), float(cols.mjd_tai[0]), bool(cols.is_new[0]),
                    bytes(message) if keep_packet else None, source, float(cols.mag[0]))


def decode_wire(message: bytes, source: str = "") -> AlertBatch:
    """One Confluent wire-format Rubin alert -> a 1-row :class:`AlertBatch` (packet kept).

    Raises:
        BadAlertError: not wire format, unknown schema id, undecodable or truncated prefix,
            position outside RA [0, 360] / Dec [-90, 90] degrees.
    """
    return rows_to_batch([decode_wire_row(message, source)])


def decode_wire_many(messages: Sequence[bytes], sources: Sequence[str] | None = None, *,
                     keep_packets: bool = True) -> tuple[AlertBatch, list[BadAlertError]]:
    """Decode many wire-format alerts; bad ones are left out and returned as errors, whose
    ``index`` is the position of their message in ``messages``.

    ``sources[i]`` names message ``i`` (e.g. ``"topic/partition/offset"``); by default
    ``"message#i"``. The first :data:`HEAD_BYTES` of every message are copied into one buffer
    for the kernel (the rest, cutouts mostly, is never copied); a message whose prefix runs
    past that is decoded again whole.
    """
    n = len(messages)
    if n == 0:
        return AlertBatch.empty(), []

    def source_of(i: int) -> str:
        return sources[i] if sources is not None else f"message#{i}"

    lengths = np.fromiter(map(len, messages), np.int64, n)
    heads = np.minimum(lengths, HEAD_BYTES)
    ends = np.cumsum(heads)
    starts = ends - heads
    buf = np.frombuffer(b"".join(memoryview(m)[:HEAD_BYTES] for m in messages), np.uint8)
    cols = _decode_columns(buf, starts, ends, source_of, messages.__getitem__)
    redo = [i for i, e in cols.errors if lengths[i] > HEAD_BYTES and e.truncated]
    if redo:  # prefix longer than HEAD_BYTES: decode those messages whole
        full_len = lengths[redo]
        full_ends = np.cumsum(full_len)
        full = np.frombuffer(b"".join(messages[i] for i in redo), np.uint8)
        again = _decode_columns(full, full_ends - full_len, full_ends,
                                lambda k: source_of(redo[k]), lambda k: messages[redo[k]])
        cols = _merge(cols, again, np.asarray(redo, np.int64))
    batch = _columns_to_batch(cols, source_of,
                              (lambda i: bytes(messages[i])) if keep_packets else None)
    return batch, [e for _, e in cols.errors]


def _merge(first: _Columns, again: _Columns, redo: np.ndarray) -> _Columns:
    """``first`` with the messages ``redo`` replaced by their results in ``again``."""
    index = np.concatenate([first.index, redo[again.index]])
    order = np.argsort(index, kind="stable")
    cat = [np.concatenate([getattr(first, f), getattr(again, f)])[order]
           for f in ("alert_id", "object_id", "ra", "dec", "mjd_tai", "is_new", "mag")]
    redone = set(redo.tolist())
    for k, e in again.errors:
        e.index = int(redo[k])
    errors = sorted([(i, e) for i, e in first.errors if i not in redone]
                    + [(int(redo[k]), e) for k, e in again.errors], key=lambda t: t[0])
    return _Columns(index[order], *cat, errors)


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


#: Roles of the ZTF alert fields captured by the container walker
#: (:func:`mmcross.brokers.avro_container.walk_blocks`).
ZTF_CANDID, ZTF_OBJECT, ZTF_RA, ZTF_DEC, ZTF_JD, ZTF_MAG, ZTF_PRV = range(1, 8)
ZTF_ROLES = {("candid",): ZTF_CANDID, ("objectId",): ZTF_OBJECT,
             ("candidate", "ra"): ZTF_RA, ("candidate", "dec"): ZTF_DEC,
             ("candidate", "jd"): ZTF_JD, ("candidate", "magpsf"): ZTF_MAG,
             ("prv_candidates", "candid"): ZTF_PRV}
N_ZTF_ROLES = 8


def decode_body_buffer(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, schema_id: int,
                       source_of: Callable[[int], str], *,
                       packet_of: Callable[[int], Any] | None = None
                       ) -> tuple[AlertBatch, list[BadAlertError]]:
    """Decode the schemaless Rubin bodies ``buf[starts[i]:ends[i]]`` (uint8 buffer), all of
    schema ``schema_id`` (e.g. the records of a container file), with the prefix kernel.

    Bad bodies are left out and returned as errors (``index`` = ``i``), in order;
    ``packet_of(i)`` gives the packet kept for body ``i`` (none kept when ``None``).
    """
    view = memoryview(buf)
    cols = _decode_columns(buf, starts, ends, source_of, lambda i: view[starts[i]:ends[i]],
                           body_schema_id=schema_id)
    return _columns_to_batch(cols, source_of, packet_of), [e for _, e in cols.errors]


def decode_ztf_roles(buf: np.ndarray, ivals: np.ndarray, fvals: np.ndarray,
                     present: np.ndarray, source_of: Callable[[int], str], *,
                     packet_of: Callable[[int], Any] | None = None
                     ) -> tuple[AlertBatch, list[BadAlertError]]:
    """ZTF alerts from the :data:`ZTF_ROLES` captured by the container walker (row ``i``:
    one record; ``objectId`` as byte offset in ``buf`` and length): ``jd`` UTC -> MJD TAI
    with astropy (vectorised); ``is_new`` = no ``prv_candidates`` entry with a ``candid``
    (upper limits have none); ``mag`` = ``candidate.magpsf`` (AB).

    Records without ``candid`` or ``objectId``, or with a position or time out of range,
    are returned as errors (``index`` = ``i``).
    """
    errors: list[BadAlertError] = []
    ra, dec, jd = fvals[:, ZTF_RA], fvals[:, ZTF_DEC], fvals[:, ZTF_JD]
    now = now_mjd()
    good = (present[:, ZTF_CANDID] & present[:, ZTF_OBJECT] & (ra >= 0.0) & (ra <= 360.0)
            & (dec >= -90.0) & (dec <= 90.0) & _plausible_mjd(jd - JD_MJD, now))
    for i in np.flatnonzero(~good).tolist():
        try:
            if not present[i, ZTF_OBJECT]:
                raise BadAlertError("ZTF alert without objectId", source=source_of(i))
            _check(int(ivals[i, ZTF_CANDID]) if present[i, ZTF_CANDID] else None,
                   float(ra[i]), float(dec[i]), float(jd[i]) - JD_MJD, source_of(i), now)
        except BadAlertError as exc:
            exc.index = i
            errors.append(exc)
    index = np.flatnonzero(good)
    raw = memoryview(buf)
    object_id = np.array([bytes(raw[a:a + int(m)]).decode(errors="replace") for a, m in
                          zip(ivals[index, ZTF_OBJECT].tolist(),
                              fvals[index, ZTF_OBJECT].tolist(), strict=True)], dtype=object)
    from astropy.time import Time  # here: ~0.3 s of start-up, and Rubin alerts never need it

    mjd_tai = (Time(jd[index], format="jd", scale="utc").tai.mjd if len(index)
               else np.empty(0))
    mag = np.where(present[index, ZTF_MAG], fvals[index, ZTF_MAG], np.nan)
    rows = index.tolist()
    batch = AlertBatch(
        ivals[index, ZTF_CANDID], object_id, ra[index], dec[index],
        mjd_tai, packets=None if packet_of is None else list(map(packet_of, rows)),
        sources=list(map(source_of, rows)), is_new=~present[index, ZTF_PRV],
        mag=np.where(np.isfinite(mag), mag, np.nan))
    return batch, errors

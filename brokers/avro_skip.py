"""Numba decoder of the prefix of Rubin alert packets: the few fields matching needs.

A Rubin alert body is Avro: the fields of the alert record one after the other, without
tags. Matching needs only ``diaSource.{diaSourceId, ra, dec, midpointMjdTai, diaObjectId,
ssObjectId, psfFlux}`` and, right after ``diaSource``, the ``prvDiaSources`` union branch and the
first array block count (whether the packet holds earlier detections). This module compiles
each registered writer schema's prefix (the alert record cut after ``diaSource``) into a
small *program* of field type codes, then walks many packets at once in one numba kernel,
skipping every other field by its encoded size without building any Python object.

Program ops (one per value, nested records flattened in place): ``null``; ``boolean`` (1
byte); ``int``/``long`` (zigzag varint); ``float`` (4 bytes); ``double`` (8 bytes);
``string``/``bytes`` (varint length, then that many bytes); ``fixed`` (its size); ``enum``
(varint index); a union is one op followed by its branch ops, each of which must be one of
those. A schema whose prefix holds anything else (array, map, union of records) gets no
program and is decoded with fastavro instead (:func:`program_table` reports it as such).

Every read is bounds-checked against the message end: a corrupt or cut packet gives a
status code, never a read outside the buffer. Positions returned with a status are byte
offsets inside the message (wire header included).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numba
import numpy as np

from mmcross.brokers.rubin_schemas import RubinSchema, get_schema, known_schema_ids

log = logging.getLogger(__name__)

# -- op codes --------------------------------------------------------------------------------
OP_NULL, OP_BOOL, OP_LONG, OP_FLOAT, OP_DOUBLE, OP_BYTES, OP_FIXED, OP_ENUM, OP_UNION = range(9)
_PRIMITIVE = {"null": OP_NULL, "boolean": OP_BOOL, "int": OP_LONG, "long": OP_LONG,
              "float": OP_FLOAT, "double": OP_DOUBLE, "string": OP_BYTES, "bytes": OP_BYTES}

# -- roles: which decoded value goes where -----------------------------------------------------
ROLE_NONE, ROLE_ID, ROLE_RA, ROLE_DEC, ROLE_MJD, ROLE_OBJECT, ROLE_SSO, ROLE_FLUX = range(8)
N_ROLES = 8
_INT_ROLES = (ROLE_ID, ROLE_OBJECT, ROLE_SSO)
_FLOAT_ROLES = (ROLE_RA, ROLE_DEC, ROLE_MJD, ROLE_FLUX)

# -- per-message status ------------------------------------------------------------------------
OK = 0
TOO_SHORT = 1  #: fewer than 6 bytes (header + 1)
BAD_MAGIC = 2  #: first byte is not 0
UNKNOWN_SCHEMA = 3  #: schema id not registered
NO_PROGRAM = 4  #: schema registered but its prefix needs the fastavro path
TRUNCATED = 5  #: the message ends inside the prefix (or the prvDiaSources head)
BAD_VARINT = 6  #: a varint longer than 10 bytes
BAD_UNION = 7  #: a union branch (or enum index) out of range
BAD_LENGTH = 8  #: a negative string/bytes length
BAD_PRV_BRANCH = 9  #: prvDiaSources union branch neither null nor array
BAD_FRAME = 10  #: message offsets outside the buffer (caller's bug, not the packet's)

STATUS_TEXT = {
    TOO_SHORT: "too short for a wire-format alert",
    BAD_MAGIC: "not a Confluent wire-format Avro message",
    UNKNOWN_SCHEMA: "unknown Rubin alert schema id",
    NO_PROGRAM: "schema needs the fastavro decoder",
    TRUNCATED: "Avro body truncated",
    BAD_VARINT: "malformed Avro varint",
    BAD_UNION: "bad Avro union branch or enum index",
    BAD_LENGTH: "negative Avro string/bytes length",
    BAD_PRV_BRANCH: "bad prvDiaSources union branch",
    BAD_FRAME: "message offsets outside the buffer",
}


class UnsupportedSchemaError(ValueError):
    """A writer schema whose prefix the skip program cannot express."""


@dataclass(frozen=True)
class SkipProgram:
    """The compiled prefix of one Rubin alert schema.

    Attributes:
        schema_id: ``major * 100 + minor``.
        code: int8 op codes (``OP_*``), one per value, union branches after their union.
        param: int64 op parameter (fixed size, enum symbol count, union branch count).
        role: int8 ``ROLE_*`` of each op (on a union op: of the value of its branch).
        prv_null_branch, prv_array_branch: union branch indices of ``prvDiaSources``.
    """

    schema_id: int
    code: np.ndarray
    param: np.ndarray
    role: np.ndarray
    prv_null_branch: int
    prv_array_branch: int


def _resolve(t: Any, named: dict[str, Any]) -> Any:
    if isinstance(t, str) and t not in _PRIMITIVE:
        if t not in named:
            raise UnsupportedSchemaError(f"unknown named type {t!r}")
        return named[t]
    return t


def _simple_op(t: Any, named: dict[str, Any]) -> tuple[int, int]:
    """A non-record, non-union type -> (op, param)."""
    t = _resolve(t, named)
    if isinstance(t, str):
        return _PRIMITIVE[t], 0
    if isinstance(t, dict):
        kind = t.get("type")
        if kind == "fixed":
            named.setdefault(t.get("name", ""), t)
            return OP_FIXED, int(t["size"])
        if kind == "enum":
            named.setdefault(t.get("name", ""), t)
            return OP_ENUM, len(t["symbols"])
        if isinstance(kind, str) and kind in _PRIMITIVE and "logicalType" not in t:
            return _PRIMITIVE[kind], 0
        if isinstance(kind, str) and kind in _PRIMITIVE:  # logical type: skip as its base type
            return _PRIMITIVE[kind], -1
    raise UnsupportedSchemaError(f"type {t!r} is not supported in a skip program")


def _emit(t: Any, path: tuple[str, ...], roles: dict[tuple[str, ...], int],
          named: dict[str, Any], ops: list[tuple[int, int, int]]) -> None:
    t = _resolve(t, named)
    role = roles.get(path, ROLE_NONE)
    if isinstance(t, dict) and t.get("type") == "record":
        if role != ROLE_NONE:
            raise UnsupportedSchemaError(f"field {'.'.join(path)} is a record")
        named.setdefault(t.get("name", ""), t)
        for f in t["fields"]:
            _emit(f["type"], (*path, f["name"]), roles, named, ops)
        return
    if isinstance(t, list):
        branches = [_simple_op(b, named) for b in t]
        ops.append((OP_UNION, len(branches), role))
        for op, param in branches:
            _check_role(role, op, param, path)
            ops.append((op, param, ROLE_NONE))
        return
    op, param = _simple_op(t, named)
    _check_role(role, op, param, path)
    ops.append((op, param, role))


def _check_role(role: int, op: int, param: int, path: tuple[str, ...]) -> None:
    if role == ROLE_NONE or op == OP_NULL:
        return
    if param < 0:
        raise UnsupportedSchemaError(f"field {'.'.join(path)} has a logical type")
    if role in _INT_ROLES and op != OP_LONG:
        raise UnsupportedSchemaError(f"field {'.'.join(path)} is not an int/long")
    if role in _FLOAT_ROLES and op not in (OP_FLOAT, OP_DOUBLE):
        raise UnsupportedSchemaError(f"field {'.'.join(path)} is not a float/double")


def compile_schema(schema: RubinSchema) -> SkipProgram:
    """Compile ``schema``'s prefix into a :class:`SkipProgram`.

    Raises:
        UnsupportedSchemaError: the prefix holds a type the program cannot skip, a wanted
            field has an unexpected type, or ``prvDiaSources`` is not ``[null, array]``.
    """
    ds = ("diaSource",)
    roles = {(*ds, "diaSourceId"): ROLE_ID, (*ds, schema.ra_field): ROLE_RA,
             (*ds, schema.dec_field): ROLE_DEC, (*ds, schema.time_field): ROLE_MJD,
             (*ds, "diaObjectId"): ROLE_OBJECT, (*ds, "ssObjectId"): ROLE_SSO}
    if schema.flux_field:
        roles[(*ds, schema.flux_field)] = ROLE_FLUX
    named: dict[str, Any] = {}
    ops: list[tuple[int, int, int]] = []
    for f in schema.prefix["fields"]:
        _emit(f["type"], (f["name"],), roles, named, ops)
    found = {r for _, _, r in ops} | {
        roles[p] for p in roles if p[-1] in ("diaObjectId", "ssObjectId")}  # optional fields
    for need in (ROLE_ID, ROLE_RA, ROLE_DEC, ROLE_MJD):
        if need not in found:
            raise UnsupportedSchemaError(f"Rubin v{schema.version}: a wanted diaSource field "
                                         "is missing")
    top = schema.definition["fields"]
    nxt = top[len(schema.prefix_fields)] if len(top) > len(schema.prefix_fields) else None
    prv_type = nxt["type"] if nxt is not None and nxt["name"] == "prvDiaSources" else None
    if not (isinstance(prv_type, list) and len(prv_type) == 2 and "null" in prv_type):
        raise UnsupportedSchemaError(f"Rubin v{schema.version}: prvDiaSources is not a "
                                     "[null, array] union right after diaSource")
    null_branch = prv_type.index("null")
    other = prv_type[1 - null_branch]
    if not (isinstance(other, dict) and other.get("type") == "array"):
        raise UnsupportedSchemaError(f"Rubin v{schema.version}: prvDiaSources is not an array")
    return SkipProgram(
        schema_id=schema.schema_id,
        code=np.array([o[0] for o in ops], np.int8),
        param=np.array([max(o[1], 0) for o in ops], np.int64),
        role=np.array([o[2] for o in ops], np.int8),
        prv_null_branch=null_branch,
        prv_array_branch=1 - null_branch,
    )


class ProgramTable(NamedTuple):
    """The programs of many schemas concatenated, as the kernel takes them.

    ``by_id[schema_id]`` is the program index (``-1`` unknown id, ``-2`` registered but no
    program); program ``k`` is ``code[start[k]:end[k]]`` with ``prv[k]`` = (null branch,
    array branch) of ``prvDiaSources``.
    """

    by_id: np.ndarray
    start: np.ndarray
    end: np.ndarray
    prv: np.ndarray
    code: np.ndarray
    param: np.ndarray
    role: np.ndarray


def build_table(schemas: Iterable[RubinSchema]) -> ProgramTable:
    """Compile ``schemas`` into one :class:`ProgramTable` (unsupported ones marked ``-2``)."""
    schemas = list(schemas)
    top_id = max((s.schema_id for s in schemas), default=0)
    by_id = np.full(top_id + 1, -1, np.int32)
    programs: list[SkipProgram] = []
    for s in schemas:
        try:
            programs.append(compile_schema(s))
            by_id[s.schema_id] = len(programs) - 1
        except UnsupportedSchemaError as exc:
            log.info("Rubin v%s alerts will be decoded with fastavro: %s", s.version, exc)
            by_id[s.schema_id] = -2
    sizes = np.array([len(p.code) for p in programs], np.int64)
    end = np.cumsum(sizes)

    def cat(name: str, dt: type) -> np.ndarray:
        return (np.concatenate([getattr(p, name) for p in programs]).astype(dt)
                if programs else np.empty(0, dt))

    return ProgramTable(
        by_id=by_id, start=end - sizes, end=end,
        prv=np.array([[p.prv_null_branch, p.prv_array_branch] for p in programs],
                     np.int64).reshape(-1, 2),
        code=cat("code", np.int8), param=cat("param", np.int64), role=cat("role", np.int8))


@functools.lru_cache(maxsize=16)
def program_table(schema_ids: frozenset[int] | None = None) -> ProgramTable:
    """The :class:`ProgramTable` of the given shipped schemas (default: every schema
    lsst-alert-packet ships); built once per set."""
    ids = known_schema_ids() if schema_ids is None else sorted(schema_ids)
    return build_table(get_schema(sid) for sid in ids)


def schema_ids_in(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  body_schema_id: int = -1) -> frozenset[int]:
    """The shipped schema ids the messages name (Confluent wire header; or
    ``body_schema_id`` for bare bodies): the programs :func:`decode_messages` needs."""
    if body_schema_id >= 0:
        ids = {int(body_schema_id)}
    else:
        starts = np.asarray(starts, np.int64)
        framed = starts[(np.asarray(ends, np.int64) - starts >= 6)]
        framed = framed[np.asarray(buf[framed]) == 0]
        b = np.asarray(buf, np.uint8)
        sid = ((b[framed + 1].astype(np.int64) << 24) | (b[framed + 2].astype(np.int64) << 16)
               | (b[framed + 3].astype(np.int64) << 8) | b[framed + 4].astype(np.int64))
        ids = set(np.unique(sid).tolist())
    return frozenset(ids & set(known_schema_ids()))


class Decoded(NamedTuple):
    """What :func:`decode_messages` returns, one entry per message.

    Attributes:
        status: int8 status code (``OK`` or an error code of this module).
        pos: int64 byte offset in the message where the error was seen (or 0); for
            ``BAD_MAGIC`` the first byte's value.
        schema_id: int64 schema id from the header (-1 when there was no header).
        alert_id: int64 ``diaSource.diaSourceId``; ``id_null`` when null or absent.
        ra, dec: float64 degrees ICRS (NaN when null).
        mjd_tai: float64 MJD TAI (NaN when null).
        object_id: int64 ``diaSource.diaObjectId`` (0 when null or absent).
        sso: bool, ``ssObjectId`` non-null and non-zero.
        has_history: bool, ``prvDiaSources`` non-null with a non-empty first block.
        psf_flux: float64 ``diaSource.psfFlux`` (``psFlux`` before v5), nJy; NaN when null
            or the schema has none.
    """

    status: np.ndarray
    pos: np.ndarray
    schema_id: np.ndarray
    alert_id: np.ndarray
    id_null: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mjd_tai: np.ndarray
    object_id: np.ndarray
    sso: np.ndarray
    has_history: np.ndarray
    psf_flux: np.ndarray


# -- kernels -----------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _varint(buf: np.ndarray, pos: int, end: int) -> tuple[int, int, int]:
    """Zigzag varint at ``pos`` -> (value, next pos, status)."""
    acc = np.uint64(0)
    shift = np.uint64(0)
    for _ in range(10):
        if pos >= end:
            return 0, pos, TRUNCATED
        b = np.uint64(buf[pos])
        pos += 1
        acc |= (b & np.uint64(0x7F)) << shift
        if b < np.uint64(0x80):
            value = np.int64(acc >> np.uint64(1)) ^ -np.int64(acc & np.uint64(1))
            return value, pos, OK
        shift += np.uint64(7)
    return 0, pos, BAD_VARINT


@numba.njit(cache=True, nogil=True)
def _le_bits(buf: np.ndarray, pos: int, n: int) -> np.uint64:
    bits = np.uint64(0)
    for k in range(n):
        bits |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return bits


@numba.njit(cache=True, nogil=True)
def _f64(bits: np.uint64) -> float:
    return np.array([bits], np.uint64).view(np.float64)[0]


@numba.njit(cache=True, nogil=True)
def _f32(bits: np.uint64) -> float:
    return np.float64(np.array([np.uint32(bits)], np.uint32).view(np.float32)[0])


@numba.njit(cache=True, nogil=True)
def _decode_kernel(buf, starts, ends, body_schema_id, by_id, pstart, pend, prv, code, param,
                   role, status, errpos, sids, ivals, ipresent, fvals):
    """Walk each message ``buf[starts[i]:ends[i]]``; fill the output arrays in place.

    ``body_schema_id < 0``: messages are wire format (header checked); otherwise they are
    bare bodies of that schema. ``ivals[i, r]``/``fvals[i, r]`` hold role ``r``'s value,
    ``ipresent[i, r]`` whether it was non-null; ``ivals[i, 0]`` is reused for has_history.
    """
    nbuf = buf.shape[0]
    for i in range(starts.shape[0]):
        s = starts[i]
        e = ends[i]
        if s < 0 or e > nbuf or s > e:
            status[i] = BAD_FRAME
            continue
        pos = s
        if body_schema_id < 0:
            if e - s < 6:
                status[i] = TOO_SHORT
                continue
            if buf[s] != 0:
                status[i] = BAD_MAGIC
                errpos[i] = np.int64(buf[s])
                continue
            sid = (np.int64(buf[s + 1]) << 24) | (np.int64(buf[s + 2]) << 16) \
                | (np.int64(buf[s + 3]) << 8) | np.int64(buf[s + 4])
            pos = s + 5
        else:
            sid = body_schema_id
        sids[i] = sid
        if sid >= by_id.shape[0] or by_id[sid] == -1:
            status[i] = UNKNOWN_SCHEMA
            continue
        k = by_id[sid]
        if k < 0:
            status[i] = NO_PROGRAM
            continue
        st = OK
        pc = pstart[k]
        stop = pend[k]
        while pc < stop:
            base = pc
            op = code[pc]
            r = role[pc]
            pc = base + 1
            if op == OP_UNION:
                nb = param[base]
                branch, pos, st = _varint(buf, pos, e)
                if st != OK:
                    break
                if branch < 0 or branch >= nb:
                    st = BAD_UNION
                    break
                pc = base + 1 + nb
                op = code[base + 1 + branch]
                p = param[base + 1 + branch]
            else:
                p = param[base]
            # one simple value of type ``op`` at ``pos``
            if op == OP_BOOL:
                if pos + 1 > e:
                    st = TRUNCATED
                    break
                pos += 1
            elif op in (OP_LONG, OP_ENUM):
                v, pos, st = _varint(buf, pos, e)
                if st != OK:
                    break
                if op == OP_ENUM and (v < 0 or v >= p):
                    st = BAD_UNION
                    break
                if r != 0:
                    ivals[i, r] = v
                    ipresent[i, r] = True
            elif op == OP_FLOAT:
                if pos + 4 > e:
                    st = TRUNCATED
                    break
                if r != 0:
                    fvals[i, r] = _f32(_le_bits(buf, pos, 4))
                    ipresent[i, r] = True
                pos += 4
            elif op == OP_DOUBLE:
                if pos + 8 > e:
                    st = TRUNCATED
                    break
                if r != 0:
                    fvals[i, r] = _f64(_le_bits(buf, pos, 8))
                    ipresent[i, r] = True
                pos += 8
            elif op == OP_BYTES:
                n, pos, st = _varint(buf, pos, e)
                if st != OK:
                    break
                if n < 0:
                    st = BAD_LENGTH
                    break
                if n > e - pos:
                    st = TRUNCATED
                    break
                pos += n
            elif op == OP_FIXED:
                if p > e - pos:
                    st = TRUNCATED
                    break
                pos += p
        if st == OK:
            branch, pos, st = _varint(buf, pos, e)
            if st == OK:
                if branch == prv[k, 0]:
                    ivals[i, 0] = 0
                elif branch == prv[k, 1]:
                    count, pos, st = _varint(buf, pos, e)
                    ivals[i, 0] = 1 if count != 0 else 0
                else:
                    st = BAD_PRV_BRANCH
        status[i] = st
        if st != OK:
            errpos[i] = pos - s


@numba.njit(cache=True, nogil=True)
def _frame_walk(buf, offset, starts, ends, fill):
    """Walk 4-byte big-endian length + message frames from ``offset`` to the buffer end.

    Returns (count, flaw, got, size): ``flaw`` 0 = clean end, 1 = cut in a length prefix,
    2 = cut inside a message (``got`` of ``size`` bytes present). Offsets are written to
    ``starts``/``ends`` when ``fill``.
    """
    nbuf = buf.shape[0]
    n = 0
    pos = offset
    while pos < nbuf:
        if pos + 4 > nbuf:
            return n, 1, 0, 0
        size = (np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16) \
            | (np.int64(buf[pos + 2]) << 8) | np.int64(buf[pos + 3])
        if size > nbuf - pos - 4:
            return n, 2, nbuf - pos - 4, size
        if fill:
            starts[n] = pos + 4
            ends[n] = pos + 4 + size
        pos += 4 + size
        n += 1
    return n, 0, 0, 0


@numba.njit(cache=True, nogil=True)
def _frame_kernel(buf, offset):
    empty = np.empty(0, np.int64)
    count, flaw, got, size = _frame_walk(buf, offset, empty, empty, False)
    starts = np.empty(count, np.int64)
    ends = np.empty(count, np.int64)
    _frame_walk(buf, offset, starts, ends, True)
    return starts, ends, flaw, got, size


class Frames(NamedTuple):
    """Message offsets of a wire stream (see :func:`find_frames`)."""

    starts: np.ndarray
    ends: np.ndarray
    flaw: int
    got: int
    size: int


def find_frames(buf: np.ndarray, offset: int) -> Frames:
    """Split ``buf[offset:]`` (uint8), a sequence of 4-byte big-endian length + message.

    ``flaw``: 0 when the frames end with the buffer; 1 when it ends inside a length prefix;
    2 when it ends inside a message, of which ``got`` of ``size`` bytes are present.
    """
    starts, ends, flaw, got, size = _frame_kernel(buf, np.int64(offset))
    return Frames(starts, ends, int(flaw), int(got), int(size))


def decode_messages(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, *,
                    body_schema_id: int = -1, table: ProgramTable | None = None) -> Decoded:
    """Decode the prefix of each message ``buf[starts[i]:ends[i]]`` (a uint8 array).

    Args:
        buf: the bytes holding every message (e.g. a memory-mapped file), uint8.
        starts, ends: int64 byte offsets of each message in ``buf``.
        body_schema_id: ``-1``: messages are Confluent wire format (5-byte header checked);
            else they are bare Avro bodies of this schema id.
        table: compiled programs; default :func:`program_table` of the shipped schemas the
            messages name (:func:`schema_ids_in`): a process reading one schema version
            prepares only that one.

    Never raises on packet content: each message gets a status code instead.
    """
    if table is None:
        table = program_table(schema_ids_in(buf, starts, ends, body_schema_id))
    n = len(starts)
    status = np.zeros(n, np.int8)
    errpos = np.zeros(n, np.int64)
    sids = np.full(n, -1, np.int64)
    ivals = np.zeros((n, N_ROLES), np.int64)
    ipresent = np.zeros((n, N_ROLES), np.bool_)
    fvals = np.full((n, N_ROLES), np.nan)
    _decode_kernel(np.asarray(buf, np.uint8), np.asarray(starts, np.int64),
                   np.asarray(ends, np.int64), np.int64(body_schema_id), table.by_id,
                   table.start, table.end, table.prv, table.code, table.param, table.role,
                   status, errpos, sids, ivals, ipresent, fvals)
    return Decoded(
        status=status, pos=errpos, schema_id=sids,
        alert_id=ivals[:, ROLE_ID], id_null=~ipresent[:, ROLE_ID],
        ra=fvals[:, ROLE_RA], dec=fvals[:, ROLE_DEC], mjd_tai=fvals[:, ROLE_MJD],
        object_id=np.where(ipresent[:, ROLE_OBJECT], ivals[:, ROLE_OBJECT], 0),
        sso=ipresent[:, ROLE_SSO] & (ivals[:, ROLE_SSO] != 0),
        has_history=ivals[:, 0] != 0,
        psf_flux=fvals[:, ROLE_FLUX],
    )

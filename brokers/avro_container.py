"""Avro object container files read by numba kernels: header, blocks, record boundaries.

The object container format (Avro specification 1.11, "Object Container Files"): the magic
``Obj\\x01``; the file metadata, an Avro ``map<bytes>`` holding ``avro.schema`` (the writer
schema, JSON) and ``avro.codec`` (``null`` when absent); a 16-byte sync marker; then blocks,
each the record count (long), the byte size of the serialized records after compression
(long), those bytes, and the sync marker again. Codecs: ``null``, ``deflate`` (raw RFC 1951
deflate, no zlib header), ``snappy`` (snappy-compressed data followed by the big-endian
CRC-32 of the uncompressed data), ``bzip2``, ``xz``.

Records inside a block are not delimited: finding where one ends means walking all of its
values. :func:`compile_walker` turns a writer schema into a flat program of nodes (records
flattened in place, arrays, maps and unions holding sub-programs) and :func:`walk_records`
runs it over a block with an explicit stack, writing each record's byte range; nodes can also
carry a *role* whose value (long, float/double, string/bytes position) is captured on the way.
Nothing builds a Python object per record and no schema resolution takes place.
"""

from __future__ import annotations

import bz2
import json
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import cramjam
import numba
import numpy as np

from mmcross.brokers.avro_skip import (
    BAD_LENGTH,
    BAD_UNION,
    BAD_VARINT,
    OK,
    OP_BOOL,
    OP_BYTES,
    OP_DOUBLE,
    OP_ENUM,
    OP_FIXED,
    OP_FLOAT,
    OP_LONG,
    OP_NULL,
    OP_UNION,
    TRUNCATED,
    UnsupportedSchemaError,
)
from mmcross.model.errors import BadAlertError

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
OP_RECORD, OP_ARRAY, OP_MAP = 9, 10, 11
#: ``OP_NULLABLE + op``: a ``[null, T]`` union of a simple ``T`` as one node (``param`` = the
#: null branch index), the commonest field shape of alert schemas.
OP_NULLABLE = 16
TOO_DEEP = 11  #: values nested deeper than :data:`MAX_DEPTH`
TRAILING = 12  #: bytes left in a block after its last record
MAX_DEPTH = 64
_PRIMITIVE = {"null": OP_NULL, "boolean": OP_BOOL, "int": OP_LONG, "long": OP_LONG,
              "float": OP_FLOAT, "double": OP_DOUBLE, "string": OP_BYTES, "bytes": OP_BYTES}
WALK_TEXT = {TRUNCATED: "record truncated", BAD_VARINT: "malformed Avro varint",
             BAD_UNION: "bad Avro union branch or enum index",
             BAD_LENGTH: "negative Avro length or block count",
             TOO_DEEP: f"values nested deeper than {MAX_DEPTH}",
             TRAILING: "bytes left after the block's last record"}


@dataclass(frozen=True)
class ContainerHeader:
    """The header of an Avro container file.

    Attributes:
        schema: the writer schema (JSON as Python objects).
        codec: ``avro.codec`` (``"null"`` when absent).
        sync: the 16-byte sync marker.
        data_start: byte offset of the first block.
        meta: the whole file metadata (key -> bytes).
    """

    schema: Any
    codec: str
    sync: bytes
    data_start: int
    meta: dict[str, bytes]

    @property
    def name(self) -> str:
        """Full name of the record type the file holds (``""`` when not a named record)."""
        s = self.schema
        if not isinstance(s, dict):
            return ""
        name = str(s.get("name", ""))
        ns = s.get("namespace")
        return f"{ns}.{name}" if ns and "." not in name else name


def _long(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Zigzag varint at ``pos`` -> (value, next pos); ``ValueError`` when cut or too long."""
    acc = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("ends inside a varint")
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def encode_long(value: int) -> bytes:
    """Avro zigzag varint of ``value``."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def read_header(data: bytes | memoryview, source: str) -> ContainerHeader:
    """Parse the header of the container file ``data``.

    Raises:
        BadAlertError: not a container file, cut or malformed metadata, unknown codec.
    """
    data = memoryview(data)
    if bytes(data[:4]) != MAGIC:
        raise BadAlertError("not an Avro container file (no Obj\\x01 magic)", source=source)
    meta: dict[str, bytes] = {}
    pos = 4
    try:
        while True:
            count, pos = _long(data, pos)
            if count == 0:
                break
            if count < 0:
                count = -count
                _, pos = _long(data, pos)
            for _ in range(count):
                n, pos = _long(data, pos)
                key = bytes(data[pos:pos + n]).decode()
                pos += n
                n, pos = _long(data, pos)
                if n < 0 or pos + n > len(data):
                    raise ValueError("metadata value runs past the end")
                meta[key] = bytes(data[pos:pos + n])
                pos += n
        sync = bytes(data[pos:pos + SYNC_SIZE])
        if len(sync) != SYNC_SIZE:
            raise ValueError("ends inside the sync marker")
        schema = json.loads(meta["avro.schema"])
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise BadAlertError(f"corrupt Avro container header: {exc!r}", source=source) from None
    codec = meta.get("avro.codec", b"null").decode(errors="replace")
    if codec not in _DECOMPRESS:
        raise BadAlertError(f"Avro container codec {codec!r} is not supported "
                            f"({', '.join(_DECOMPRESS)})", source=source)
    return ContainerHeader(schema, codec, sync, pos + SYNC_SIZE, meta)


#: Largest decompressed block accepted, bytes (writers flush every 16-64 KiB by default).
MAX_BLOCK_BYTES = 64 << 20


def _too_big(size: int) -> ValueError:
    return ValueError(f"block inflates past {MAX_BLOCK_BYTES} bytes ({size} announced or "
                      "reached)")


def _bounded(decompressor: Any, raw: bytes | memoryview) -> bytes:
    """``raw`` through a zlib/bz2/lzma decompressor object, at most MAX_BLOCK_BYTES out."""
    out = decompressor.decompress(bytes(raw), MAX_BLOCK_BYTES + 1)
    if len(out) > MAX_BLOCK_BYTES or getattr(decompressor, "unconsumed_tail", b""):
        raise _too_big(len(out))
    if not decompressor.eof:
        raise ValueError("block ends inside its compressed stream")
    return out


def _snappy(raw: bytes | memoryview) -> bytes:
    if len(raw) < 4:
        raise ValueError("snappy block shorter than its CRC")
    announced, shift = 0, 0
    for b in bytes(raw[:5]):  # the raw snappy preamble: uncompressed length, varint
        announced |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if announced > MAX_BLOCK_BYTES:
        raise _too_big(announced)
    out = bytes(cramjam.snappy.decompress_raw(bytes(raw[:-4])))
    if zlib.crc32(out) != int.from_bytes(raw[-4:], "big"):
        raise ValueError("snappy block CRC-32 mismatch")
    return out


_DECOMPRESS = {
    "null": None,
    "deflate": lambda raw: _bounded(zlib.decompressobj(-15), raw),
    "snappy": _snappy,
    "bzip2": lambda raw: _bounded(bz2.BZ2Decompressor(), raw),
    "xz": lambda raw: _bounded(lzma.LZMADecompressor(), raw),
}


class Block(NamedTuple):
    """One block: its records are ``data[start:stop]`` (uint8; the file mapping itself for
    the ``null`` codec, else the decompressed bytes), ``count`` records from record number
    ``first_record`` of the file."""

    data: np.ndarray
    start: int
    stop: int
    first_record: int
    count: int


def iter_blocks(buf: np.ndarray, header: ContainerHeader, source: str
                ) -> Iterator[Block | BadAlertError]:
    """The blocks of the container file ``buf`` (uint8), decompressed, in file order.

    A block that is cut, fails to decompress or is not followed by the sync marker gives a
    :class:`BadAlertError` (``index``: its first record) and reading resumes at the next
    sync marker. With the ``null`` codec the blocks are views of ``buf``.
    """
    decompress = _DECOMPRESS[header.codec]
    raw = memoryview(buf)
    pos = header.data_start
    first = 0
    n = len(buf)
    while pos < n:
        count = size = p = -1
        try:
            count, p = _long(raw, pos)
            size, p = _long(raw, p)
            if count < 0 or size < 0:
                raise ValueError(f"negative block count {count} or size {size}")
            if p + size + SYNC_SIZE > n:
                raise ValueError(f"cut: block of {size} bytes at byte {p} runs past the "
                                 f"{n}-byte file")
            if raw[p + size:p + size + SYNC_SIZE] != header.sync:
                raise ValueError(f"no sync marker after the block at byte {p}")
            block = Block(buf, p, p + size, first, count) if decompress is None else Block(
                np.frombuffer(decompress(raw[p:p + size]), np.uint8), 0, -1, first, count)
            held = size if decompress is None else len(block.data)
            if count > held:  # every record takes at least one byte
                raise ValueError(f"block of {held} bytes cannot hold {count} records")
        except (ValueError, OSError, zlib.error, lzma.LZMAError, cramjam.DecompressionError
                ) as exc:
            what = f"records from #{first}" if count < 0 else \
                f"records #{first}..#{first + count - 1}"
            yield BadAlertError(f"corrupt Avro container block ({what} lost): {exc}",
                                source=f"{source}#{first}", index=first)
            first += max(count, 0)
            if count >= 0 and size >= 0 and p + size + SYNC_SIZE <= n:
                pos = p + size + SYNC_SIZE  # framing readable: the next block starts there
                continue
            nxt = bytes(raw[pos + 1:]).find(header.sync)
            if nxt < 0:
                return
            pos = pos + 1 + nxt + SYNC_SIZE
            continue
        yield block if block.stop >= 0 else block._replace(stop=len(block.data))
        first += count
        pos = p + size + SYNC_SIZE


# -- walker programs ---------------------------------------------------------------------------

class Walker(NamedTuple):
    """A compiled writer schema: node ``k`` has op ``code[k]``, parameter ``param[k]`` (fixed
    size, enum symbol count, union branch count), ends before node ``end[k]`` (its
    sub-program is ``k + 1 .. end[k]``) and captures role ``role[k]`` (0: none)."""

    code: np.ndarray
    param: np.ndarray
    end: np.ndarray
    role: np.ndarray


def _nullable(t: list[Any]) -> tuple[int, int] | None:
    """``[null, T]`` with ``T`` long/float/double/string/bytes/boolean -> (null branch,
    op of T)."""
    if len(t) != 2 or "null" not in t:
        return None
    other = t[1 - t.index("null")]
    if isinstance(other, dict) and other.get("type") in _PRIMITIVE:
        other = other["type"]  # a logical type on a primitive
    op = _PRIMITIVE.get(other) if isinstance(other, str) else None
    if op is None or op == OP_NULL:
        return None
    return t.index("null"), op


def compile_walker(schema: Any, roles: dict[tuple[str, ...], int] | None = None) -> Walker:
    """Compile a writer schema (JSON as Python objects) into a :class:`Walker`.

    ``roles`` maps field paths (record field names from the top record down; arrays, maps
    and unions add nothing) to a role number > 0 captured by :func:`walk_records`. A role on
    a ``[null, T]`` union field is carried by its ``T`` branch.

    Raises:
        UnsupportedSchemaError: a recursive type or an unknown type name.
    """
    roles = roles or {}
    code: list[int] = []
    param: list[int] = []
    end: list[int] = []
    role: list[int] = []
    named: dict[str, Any] = {}
    active: set[str] = set()

    def full_name(t: dict[str, Any], namespace: str) -> tuple[str, str]:
        name = str(t["name"])
        ns = t.get("namespace", namespace) or ""
        if "." in name:
            return name, name.rsplit(".", 1)[0]
        return (f"{ns}.{name}" if ns else name), ns

    def node(t: Any, path: tuple[str, ...], namespace: str) -> None:
        k = len(code)
        code.append(0)
        param.append(0)
        end.append(0)
        role.append(roles.get(path, 0))
        if isinstance(t, str):
            if t in _PRIMITIVE:
                code[k] = _PRIMITIVE[t]
            else:
                ref = t if t in named else f"{namespace}.{t}"
                if ref not in named:
                    raise UnsupportedSchemaError(f"unknown Avro type name {t!r}")
                if ref in active:
                    raise UnsupportedSchemaError(f"recursive Avro type {ref!r}")
                del code[k], param[k], end[k], role[k]
                node(named[ref][0], path, named[ref][1])
                return
        elif isinstance(t, list) and _nullable(t) is not None:
            null_branch, op = _nullable(t)  # type: ignore[misc]
            code[k] = OP_NULLABLE + op
            param[k] = null_branch
        elif isinstance(t, list):
            code[k] = OP_UNION
            param[k] = len(t)
            for branch in t:
                node(branch, path, namespace)
            role[k] = 0
        elif isinstance(t, dict):
            kind = t.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                name, ns = full_name(t, namespace)
                named[name] = (t, ns)
                if kind in ("record", "error"):
                    code[k] = OP_RECORD
                    role[k] = 0
                    active.add(name)
                    for f in t["fields"]:
                        node(f["type"], (*path, f["name"]), ns)
                    active.discard(name)
                elif kind == "enum":
                    code[k] = OP_ENUM
                    param[k] = len(t["symbols"])
                else:
                    code[k] = OP_FIXED
                    param[k] = int(t["size"])
            elif kind == "array":
                code[k] = OP_ARRAY
                role[k] = 0
                node(t["items"], path, namespace)
            elif kind == "map":
                code[k] = OP_MAP
                role[k] = 0
                node(t["values"], path, namespace)
            else:  # {"type": "long", "logicalType": ...} and the like
                del code[k], param[k], end[k], role[k]
                node(kind, path, namespace)
                return
        else:
            raise UnsupportedSchemaError(f"not an Avro type: {t!r}")
        end[k] = len(code)

    node(schema, (), "")
    return Walker(np.array(code, np.int8), np.array(param, np.int64), np.array(end, np.int64),
                  np.array(role, np.int8))


@numba.njit(cache=True, nogil=True)
def _varint(buf, pos, stop):
    if pos < stop and buf[pos] < 0x80:
        b = np.int64(buf[pos])
        return (b >> 1) ^ -(b & 1), pos + 1, OK
    acc = np.uint64(0)
    shift = np.uint64(0)
    for _ in range(10):
        if pos >= stop:
            return 0, pos, TRUNCATED
        b = np.uint64(buf[pos])
        pos += 1
        acc |= (b & np.uint64(0x7F)) << shift
        if b < np.uint64(0x80):
            return np.int64(acc >> np.uint64(1)) ^ -np.int64(acc & np.uint64(1)), pos, OK
        shift += np.uint64(7)
    return 0, pos, BAD_VARINT


@numba.njit(cache=True, nogil=True)
def _le_float(buf, pos, n):
    bits = np.uint64(0)
    for k in range(n):
        bits |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    if n == 8:
        return np.array([bits], np.uint64).view(np.float64)[0]
    return np.float64(np.array([np.uint32(bits)], np.uint32).view(np.float32)[0])


@numba.njit(cache=True, nogil=True)
def _walk_kernel(buf, start, stop, n, out0, code, param, nend, role, starts, ends, ivals,
                 fvals, present):
    """Walk ``n`` records from ``buf[start]``; returns (records walked, status, error pos).

    Record ``i``'s bytes are ``buf[starts[out0 + i]:ends[out0 + i]]``; roles go to row
    ``out0 + i`` of ``ivals``/``fvals``/``present`` (see :func:`walk_blocks`).
    """
    kind = np.zeros(MAX_DEPTH, np.int8)  # 0: node sequence, 1: array, 2: map
    sa = np.zeros(MAX_DEPTH, np.int64)  # sequence: next node; array/map: item node
    sb = np.zeros(MAX_DEPTH, np.int64)  # sequence: stop node; array/map: items left in block
    pos = start
    for j in range(n):
        i = out0 + j
        starts[i] = pos
        depth = 1
        kind[0] = 0
        sa[0] = 0
        sb[0] = nend[0]
        st = OK
        while depth > 0:
            t = depth - 1
            if kind[t] == 0:
                pc = sa[t]
                if pc >= sb[t]:
                    depth -= 1
                    continue
                sa[t] = nend[pc]
                op = code[pc]
                if op >= OP_NULLABLE:
                    if pos >= stop:
                        st = TRUNCATED
                        break
                    br = np.int64(buf[pos])  # 0 -> branch 0, 2 -> branch 1 (zigzag)
                    pos += 1
                    if br == 2 * param[pc]:
                        continue
                    if br != 2 * (1 - param[pc]):
                        st = BAD_UNION
                        break
                    op -= OP_NULLABLE
                elif op == OP_UNION:
                    br, pos, st = _varint(buf, pos, stop)
                    if st != OK:
                        break
                    if br < 0 or br >= param[pc]:
                        st = BAD_UNION
                        break
                    c = pc + 1
                    for _ in range(br):
                        c = nend[c]
                    pc = c
                    op = code[pc]
                if op in (OP_RECORD, OP_ARRAY, OP_MAP):
                    if depth == MAX_DEPTH:
                        st = TOO_DEEP
                        break
                    if op == OP_RECORD:
                        kind[depth] = 0
                        sa[depth] = pc + 1
                        sb[depth] = nend[pc]
                    else:
                        kind[depth] = 1 if op == OP_ARRAY else 2
                        sa[depth] = pc + 1
                        sb[depth] = 0
                    depth += 1
                    continue
                r = role[pc]
                if op == OP_NULL:
                    continue
                if op == OP_BOOL:
                    if pos + 1 > stop:
                        st = TRUNCATED
                        break
                    if r != 0:
                        ivals[i, r] = buf[pos]
                        present[i, r] = True
                    pos += 1
                elif op in (OP_LONG, OP_ENUM):
                    v, pos, st = _varint(buf, pos, stop)
                    if st != OK:
                        break
                    if op == OP_ENUM and (v < 0 or v >= param[pc]):
                        st = BAD_UNION
                        break
                    if r != 0:
                        ivals[i, r] = v
                        present[i, r] = True
                elif op in (OP_FLOAT, OP_DOUBLE):
                    w = 4 if op == OP_FLOAT else 8
                    if pos + w > stop:
                        st = TRUNCATED
                        break
                    if r != 0:
                        fvals[i, r] = _le_float(buf, pos, w)
                        present[i, r] = True
                    pos += w
                elif op == OP_BYTES:
                    m, pos, st = _varint(buf, pos, stop)
                    if st != OK:
                        break
                    if m < 0:
                        st = BAD_LENGTH
                        break
                    if m > stop - pos:
                        st = TRUNCATED
                        break
                    if r != 0:
                        ivals[i, r] = pos
                        fvals[i, r] = m
                        present[i, r] = True
                    pos += m
                elif op == OP_FIXED:
                    if param[pc] > stop - pos:
                        st = TRUNCATED
                        break
                    pos += param[pc]
            else:  # array or map: the next item, or the next block count
                if sb[t] == 0:
                    count, pos, st = _varint(buf, pos, stop)
                    if st != OK:
                        break
                    if count == 0:
                        depth -= 1
                        continue
                    if count < 0:  # a block with its byte size: the items are walked anyway
                        count = -count
                        size, pos, st = _varint(buf, pos, stop)
                        if st != OK:
                            break
                        if size < 0:
                            st = BAD_LENGTH
                            break
                    sb[t] = count
                sb[t] -= 1
                if kind[t] == 2:  # the map key, a string
                    m, pos, st = _varint(buf, pos, stop)
                    if st != OK:
                        break
                    if m < 0 or m > stop - pos:
                        st = BAD_LENGTH if m < 0 else TRUNCATED
                        break
                    pos += m
                if depth == MAX_DEPTH:
                    st = TOO_DEEP
                    break
                kind[depth] = 0
                sa[depth] = sa[t]
                sb[depth] = nend[sa[t]]
                depth += 1
        if st != OK:
            return j, st, pos
        ends[i] = pos
    return n, OK, pos


@numba.njit(cache=True, nogil=True)
def _walk_blocks_kernel(buf, bstart, bstop, bcount, code, param, nend, role, starts, ends,
                        ok, bstatus, bpos, ivals, fvals, present):
    out0 = 0
    for b in range(bstart.shape[0]):
        done, st, pos = _walk_kernel(buf, bstart[b], bstop[b], bcount[b], out0, code, param,
                                     nend, role, starts, ends, ivals, fvals, present)
        if st == OK and pos != bstop[b]:  # the block is inconsistent: none of it is kept
            st = TRAILING
            done = 0
        ok[out0:out0 + done] = True
        bstatus[b] = st
        bpos[b] = pos
        out0 += bcount[b]


class Walked(NamedTuple):
    """What :func:`walk_blocks` returns, one row per record of the blocks.

    Attributes:
        starts, ends: int64 byte range of each record in the buffer (valid where ``ok``).
        ok: bool, the record was walked to its end. A record that fails loses the rest of
            its block: ``block_status[b]`` (``OK`` or the status) and ``block_pos[b]`` (the
            byte where the error was seen) say what went wrong in block ``b``.
        ivals, fvals, present: role captures (see :func:`walk_blocks`).
    """

    starts: np.ndarray
    ends: np.ndarray
    ok: np.ndarray
    block_status: np.ndarray
    block_pos: np.ndarray
    ivals: np.ndarray
    fvals: np.ndarray
    present: np.ndarray


def walk_blocks(buf: np.ndarray, block_start: np.ndarray, block_stop: np.ndarray,
                block_count: np.ndarray, walker: Walker, n_roles: int = 1) -> Walked:
    """Find the byte ranges of the records of blocks ``buf[block_start[b]:block_stop[b]]``
    holding ``block_count[b]`` records each (uint8 buffer, int64 offsets), and capture roles.

    Role ``r`` (``1 <= r < n_roles``) of record ``i``: ``ivals[i, r]`` for long/int/enum/
    boolean, ``fvals[i, r]`` for float/double, and for string/bytes the byte offset in
    ``buf`` (``ivals``) and the length (``fvals``); ``present[i, r]`` once a non-null value
    was seen (the last one seen wins, e.g. inside arrays).
    """
    block_start = np.asarray(block_start, np.int64)
    block_stop = np.asarray(block_stop, np.int64)
    block_count = np.asarray(block_count, np.int64)
    n = int(block_count.sum())
    nb = len(block_count)
    out = Walked(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.bool_),
                 np.zeros(nb, np.int8), np.zeros(nb, np.int64),
                 np.zeros((n, n_roles), np.int64), np.full((n, n_roles), np.nan),
                 np.zeros((n, n_roles), np.bool_))
    _walk_blocks_kernel(buf, block_start, block_stop, block_count, walker.code, walker.param,
                        walker.end, walker.role, out.starts, out.ends, out.ok,
                        out.block_status, out.block_pos, out.ivals, out.fvals, out.present)
    return out

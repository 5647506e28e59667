"""Alert files and directories -> :class:`AlertBatch` chunks, skipping bad packets.

Three file kinds are recognised by their first bytes:

* Avro object container file (``Obj\\x01``) with an embedded ``lsst.vX_Y.alert`` or
  ``ztf.alert`` schema, any number of records, codec ``null``, ``deflate``, ``snappy``,
  ``bzip2`` or ``xz``. It is memory-mapped and read by numba kernels
  (:mod:`mmcross.brokers.avro_container`): blocks are decompressed, each record's end found by
  walking its values, and Rubin records decoded by the same prefix kernel as wire streams
  (ZTF fields are captured on the walk); no record is decoded into Python objects. A corrupt
  block or record gives an error naming the file and record index, and reading goes on with
  the next block. Rubin records are re-framed as Confluent wire-format packets (header +
  the record's own bytes); a ZTF packet is a one-record container file (the file's bytes
  when it holds a single alert, as ZTF ships).
* One Confluent wire-format message (byte ``0x00`` + 4-byte schema id + body).
* A *wire stream*: :data:`WIRE_STREAM_MAGIC` then, per message, its length as a 4-byte
  big-endian unsigned integer followed by the wire-format message. It is the fastest way to
  store many Rubin alerts: finding a record's end in a container file means walking the
  whole record, while a wire stream only decodes each packet's prefix. A wire stream is
  memory-mapped: frames are found and prefixes decoded by numba kernels
  (:mod:`mmcross.brokers.avro_skip`) straight from the mapping, and the kept packets are zero-copy
  ``memoryview`` slices of it (``bytes(packet)`` gives the bytes). The mapping stays open
  while any of those packets is referenced and is unmapped when the last one goes.

Directories are expanded to their ``*.avro`` and ``*.wires`` files (recursively, sorted).
A packet's source is ``"<path>#<index in file>"``.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmcross.brokers.alert_decoding import (
    N_ZTF_ROLES,
    ZTF_ROLES,
    AlertRow,
    decode_body_buffer,
    decode_buffer,
    decode_wire_row,
    decode_ztf_roles,
    rows_to_batch,
    wire_header,
)
from mmcross.brokers.avro_container import (
    WALK_TEXT,
    Block,
    ContainerHeader,
    Walked,
    Walker,
    compile_walker,
    encode_long,
    iter_blocks,
    read_header,
    walk_blocks,
)
from mmcross.brokers.avro_skip import OK, UnsupportedSchemaError, find_frames
from mmcross.brokers.rubin_schemas import get_schema, schema_id_from_name
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import BadAlertError

log = logging.getLogger(__name__)

WIRE_STREAM_MAGIC = b"MMCROSS-WIRE-STREAM-1\n"
CONTAINER_MAGIC = b"Obj\x01"
_LEN = struct.Struct(">I")
ALERT_SUFFIXES = (".avro", ".wires")
#: Largest single wire-format message file read, bytes (an alert with cutouts: ~150 KiB).
MAX_MESSAGE_BYTES = 64 << 20

ErrorCallback = Callable[[BadAlertError], None]


def write_wire_stream(path: str | Path, messages: Iterable[bytes]) -> int:
    """Write wire-format messages as a wire stream file; returns the number written."""
    n = 0
    with open(path, "wb") as f:
        f.write(WIRE_STREAM_MAGIC)
        for message in messages:
            f.write(_LEN.pack(len(message)))
            f.write(message)
            n += 1
    return n


def write_wire_directory(directory: str | Path, messages: Iterable[bytes],
                         names: Iterable[str]) -> int:
    """Write each wire-format message to ``directory/<name>.avro``; returns the count."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for message, name in zip(messages, names, strict=True):
        (directory / f"{name}.avro").write_bytes(message)
        n += 1
    return n


def expand_paths(paths: Iterable[str | Path] | str | Path,
                 suffixes: tuple[str, ...] = ALERT_SUFFIXES) -> list[Path]:
    """Files and directories -> files, each directory expanded to its files with one of
    ``suffixes`` (sorted, recursive). Other paths are kept as given, missing ones included:
    the reader reports them."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in suffixes))
        else:
            out.append(p)
    return out


@functools.lru_cache(maxsize=32)
def _walker(schema_json: bytes, ztf: bool) -> Walker:
    """The compiled walker of a container's writer schema (cached: archives hold many files
    of one schema)."""
    try:
        return compile_walker(json.loads(schema_json), ZTF_ROLES if ztf else None)
    except UnsupportedSchemaError as exc:
        raise BadAlertError(f"Avro container schema cannot be walked: {exc}") from None


def _one_record_container(header: ContainerHeader) -> bytes:
    """The header of a ``null``-codec container file with ``header``'s schema and sync."""
    meta = {**header.meta, "avro.codec": b"null"}
    out = bytearray(CONTAINER_MAGIC)
    out += encode_long(len(meta))
    for key, value in meta.items():
        out += encode_long(len(key)) + key.encode() + encode_long(len(value)) + value
    out += encode_long(0) + header.sync
    return bytes(out)


def _block_groups(buf: np.ndarray, header: ContainerHeader, path: str, chunk: int
                  ) -> Iterator[tuple[list[Block], np.ndarray] | BadAlertError]:
    """Consecutive blocks of about ``chunk`` records, with one buffer holding them all (the
    file mapping for the ``null`` codec, else their decompressed bytes concatenated)."""
    group: list[Block] = []
    n = 0

    def flush() -> tuple[list[Block], np.ndarray]:
        if all(b.data is buf for b in group):
            return group, buf
        sizes = np.array([b.stop - b.start for b in group], np.int64)
        offsets = np.cumsum(sizes) - sizes
        joined = np.concatenate([b.data[b.start:b.stop] for b in group])
        return [b._replace(data=joined, start=int(o), stop=int(o + z)) for b, o, z in
                zip(group, offsets.tolist(), sizes.tolist(), strict=True)], joined

    for item in iter_blocks(buf, header, path):
        if isinstance(item, BadAlertError):
            yield item
            continue
        group.append(item)
        n += item.count
        if n >= chunk:
            yield flush()
            group, n = [], 0
    if group:
        yield flush()


def _container_items(f: BinaryIO, path: str, keep_packets: bool, chunk: int
                     ) -> Iterator[AlertBatch | BadAlertError]:
    """Batches (and errors) of a Rubin or ZTF Avro container file, memory-mapped: blocks
    decompressed, records delimited by the walker kernel, Rubin bodies decoded by the prefix
    kernel and ZTF fields captured on the walk; no per-record Avro decoding."""
    buf = _map_file(f)
    header = read_header(buf, path)
    name = header.name
    schema_id = schema_id_from_name(name)
    if schema_id is None and name != "ztf.alert":
        yield BadAlertError(f"Avro container of {name or 'unnamed'} records is neither a Rubin "
                            "(lsst.vX_Y.alert) nor a ZTF (ztf.alert) alert file", source=path)
        return
    if schema_id is not None:
        get_schema(schema_id, source=path)
    walker = _walker(header.meta["avro.schema"], schema_id is None)
    wire = wire_header(schema_id) if schema_id is not None else b""
    single: bytes | None = None
    if schema_id is None and keep_packets:
        single = _one_record_container(header)
    for group in _block_groups(buf, header, path, chunk):
        if isinstance(group, BadAlertError):
            yield group
            continue
        blocks, data = group
        walked = walk_blocks(data, [b.start for b in blocks], [b.stop for b in blocks],
                             [b.count for b in blocks], walker,
                             N_ZTF_ROLES if schema_id is None else 1)
        record = np.concatenate([np.arange(b.first_record, b.first_record + b.count)
                                 for b in blocks])
        yield from _walk_errors(blocks, walked, path)
        sel = np.flatnonzero(walked.ok)
        starts, ends = walked.starts[sel], walked.ends[sel]
        view = memoryview(data)

        def source_of(k: int, sel: np.ndarray = sel, record: np.ndarray = record) -> str:
            return f"{path}#{record[sel[k]]}"

        packet_of = None
        if keep_packets and schema_id is not None:
            def packet_of(k: int, starts: np.ndarray = starts, ends: np.ndarray = ends,
                          view: memoryview = view) -> bytes:
                return b"".join((wire, view[starts[k]:ends[k]]))
        elif keep_packets and len(record) == 1 and header.codec == "null" and len(sel) == 1:
            def packet_of(k: int) -> bytes:  # a one-alert file (as ZTF ships): its bytes
                return bytes(buf)
        elif keep_packets:
            def packet_of(k: int, starts: np.ndarray = starts, ends: np.ndarray = ends,
                          view: memoryview = view) -> bytes:
                body = view[starts[k]:ends[k]]
                return b"".join((single, encode_long(1), encode_long(len(body)), body,
                                 header.sync))
        if schema_id is not None:
            batch, errors = decode_body_buffer(data, starts, ends, schema_id, source_of,
                                               packet_of=packet_of)
        else:
            batch, errors = decode_ztf_roles(data, walked.ivals[sel], walked.fvals[sel],
                                             walked.present[sel], source_of,
                                             packet_of=packet_of)
        for exc in errors:
            exc.index = int(record[sel[exc.index]])
        yield from errors
        if len(batch):
            yield batch


def _walk_errors(blocks: list[Block], walked: Walked, path: str) -> Iterator[BadAlertError]:
    """One error per block whose records could not all be delimited (the rest of it is
    lost), naming the first record that failed."""
    first = 0
    for b, status, pos in zip(blocks, walked.block_status.tolist(), walked.block_pos.tolist(),
                              strict=True):
        done = int(walked.ok[first:first + b.count].sum())
        first += b.count
        if status == OK:
            continue
        k = b.first_record + done
        yield BadAlertError(f"corrupt Avro container record: {WALK_TEXT.get(status, status)} "
                            f"at byte {pos - b.start} of its block (records "
                            f"#{k}..#{b.first_record + b.count - 1} lost)",
                            source=f"{path}#{k}", index=k)


def _map_file(f: BinaryIO) -> np.ndarray:
    """The whole file as a read-only uint8 array: memory-mapped, else read."""
    try:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty file, pipe, file system without mmap
        f.seek(0)
        return np.frombuffer(f.read(), np.uint8)
    return np.frombuffer(mapping, np.uint8)


def _wire_stream_items(f: BinaryIO, path: str, keep_packets: bool, chunk: int
                       ) -> Iterator[AlertBatch | BadAlertError]:
    """Batches of at most ``chunk`` alerts (and errors) of a wire stream, memory-mapped."""
    buf = _map_file(f)
    frames = find_frames(buf, len(WIRE_STREAM_MAGIC))
    n = len(frames.starts)
    for first in range(0, n, chunk):
        def source_of(i: int, first: int = first) -> str:
            return f"{path}#{first + i}"

        batch, errors = decode_buffer(buf, frames.starts[first:first + chunk],
                                      frames.ends[first:first + chunk], source_of,
                                      keep_packets=keep_packets, first_index=first)
        yield from errors
        if len(batch):
            yield batch
    if frames.flaw == 1:
        yield BadAlertError("wire stream truncated in a length prefix", source=f"{path}#{n}",
                            index=n, truncated=True)
    elif frames.flaw == 2:
        yield BadAlertError(f"wire stream truncated ({frames.got} of {frames.size} bytes)",
                            source=f"{path}#{n}", index=n, truncated=True)


def iter_file_items(path: str | Path, *, keep_packets: bool = True, chunk: int = 10_000
                    ) -> Iterator[AlertRow | AlertBatch | BadAlertError]:
    """The packets of one alert file as decoded rows or batches (of about ``chunk``
    alerts: wire streams, container files), and the :class:`BadAlertError` of each bad
    packet or container block, in file order.

    An unreadable file or container header yields one error and ends the file.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            start = f.read(max(len(WIRE_STREAM_MAGIC), len(CONTAINER_MAGIC)))
            if start.startswith(CONTAINER_MAGIC):
                try:
                    yield from _container_items(f, path, keep_packets, chunk)
                except BadAlertError as exc:  # header, codec, schema
                    if not exc.source:
                        exc = BadAlertError(exc.reason, source=path)
                    yield exc
            elif start.startswith(WIRE_STREAM_MAGIC):
                yield from _wire_stream_items(f, path, keep_packets, chunk)
            elif start[:1] == b"\x00":
                f.seek(0)
                data = f.read(MAX_MESSAGE_BYTES + 1)
                try:
                    if len(data) > MAX_MESSAGE_BYTES:
                        raise BadAlertError(f"wire-format message longer than "
                                            f"{MAX_MESSAGE_BYTES} bytes", source=f"{path}#0")
                    yield decode_wire_row(data, f"{path}#0", keep_packet=keep_packets)
                except BadAlertError as exc:
                    exc.index = 0
                    yield exc
            else:
                yield BadAlertError("not an alert file (neither an Avro container, a "
                                    "wire-format message nor a wire stream)", source=path)
    except OSError as exc:
        yield BadAlertError(f"cannot read alert file: {exc}", source=path)


class _Rechunker:
    """Rows and batches in, batches of exactly ``chunk`` alerts out (the last one shorter)."""

    def __init__(self, chunk: int, keep_packets: bool) -> None:
        self.chunk = chunk
        self.keep_packets = keep_packets
        self.rows: list[AlertRow] = []
        self.parts: list[AlertBatch] = []
        self.n = 0

    def _rows_to_part(self) -> None:
        if self.rows:
            self.parts.append(rows_to_batch(self.rows, keep_packets=self.keep_packets))
            self.n += len(self.rows)
            self.rows = []

    def add(self, item: AlertRow | AlertBatch) -> Iterator[AlertBatch]:
        """Take one row or batch; yield the batches now complete."""
        if isinstance(item, AlertBatch):
            self._rows_to_part()
            self.parts.append(item)
            self.n += len(item)
        else:
            self.rows.append(item)
            if self.n + len(self.rows) < self.chunk:
                return
            self._rows_to_part()
        while self.n >= self.chunk:
            merged = self.parts[0] if len(self.parts) == 1 else AlertBatch.concatenate(self.parts)
            if len(merged) == self.chunk:
                self.parts, self.n = [], 0
                yield merged
            else:
                rest = merged.take(np.arange(self.chunk, len(merged)))
                self.parts, self.n = [rest], len(rest)
                yield merged.take(np.arange(self.chunk))

    def flush(self) -> Iterator[AlertBatch]:
        """Yield what is left as one batch."""
        self._rows_to_part()
        if self.n:
            yield self.parts[0] if len(self.parts) == 1 else AlertBatch.concatenate(self.parts)
        self.parts, self.n = [], 0


def iter_alert_batches(paths: Iterable[str | Path] | str | Path, chunk: int = 10_000,
                       on_error: ErrorCallback | None = None, *,
                       keep_packets: bool = True) -> Iterator[AlertBatch]:
    """Stream the alerts of files/directories as batches of ``chunk`` alerts (the last one
    may be shorter).

    Args:
        paths: alert files or directories (see the module docstring), read in order.
        chunk: largest batch size.
        on_error: called with each :class:`BadAlertError` (bad packet, unreadable file), after
            which reading goes on with the next packet. ``None``: the first error is raised.
        keep_packets: keep each alert's packet in the batches (``bytes``, or a zero-copy
            ``memoryview`` of a memory-mapped wire stream).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = _Rechunker(chunk, keep_packets)
    for path in expand_paths(paths):
        log.debug("reading alerts from %s", path)
        for item in iter_file_items(path, keep_packets=keep_packets, chunk=chunk):
            if isinstance(item, BadAlertError):
                if on_error is None:
                    raise item
                log.warning("skipping bad alert: %s", item)
                on_error(item)
                continue
            yield from out.add(item)
    yield from out.flush()


def read_alert_file(path: str | Path, *, on_error: ErrorCallback | None = None,
                    keep_packets: bool = True) -> AlertBatch:
    """All the alerts of one file (or directory) as one batch; errors raise unless ``on_error``.
    """
    return AlertBatch.concatenate(list(iter_alert_batches(
        [path], chunk=1 << 30, on_error=on_error, keep_packets=keep_packets)))

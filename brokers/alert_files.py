"""Alert files and directories -> :class:`AlertBatch` chunks, skipping bad packets.

Three file kinds are recognised by their first bytes:

* Avro object container file (``Obj\\x01``) with an embedded ``lsst.vX_Y.alert`` or
  ``ztf.alert`` schema, any number of records. Rubin records are re-framed as
  Confluent wire-format packets (header + the record's own bytes); a ZTF packet is a
  one-record container file (the file's bytes when it holds a single alert, as ZTF ships).
* One Confluent wire-format message (byte ``0x00`` + 4-byte schema id + body).
* A *wire stream*: :data:`WIRE_STREAM_MAGIC` then, per message, its length as a 4-byte
  big-endian unsigned integer followed by the wire-format message. It is the fast way to
  store many Rubin alerts: finding a record's end in a container file means skipping the
  whole record, while a wire stream only decodes each packet's prefix. A wire stream is
  memory-mapped: frames are found and prefixes decoded by numba kernels
  (:mod:`mmcross.brokers.avro_skip`) straight from the mapping, and the kept packets are zero-copy
  ``memoryview`` slices of it (``bytes(packet)`` gives the bytes). The mapping stays open
  while any of those packets is referenced and is unmapped when the last one goes.

Directories are expanded to their ``*.avro`` and ``*.wires`` files (recursively, sorted).
A packet's source is ``"<path>#<index in file>"``.
"""

from __future__ import annotations

import io
import logging
import mmap
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
import numpy as np

from mmcross.brokers.alert_decoding import (
    AlertRow,
    decode_buffer,
    decode_rubin_body,
    decode_wire_row,
    rows_to_batch,
    wire_header,
    ztf_rows,
)
from mmcross.brokers.avro_skip import find_frames
from mmcross.brokers.rubin_schemas import get_schema, schema_id_from_name
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import BadAlertError

log = logging.getLogger(__name__)

WIRE_STREAM_MAGIC = b"MMCROSS-WIRE-STREAM-1\n"
CONTAINER_MAGIC = b"Obj\x01"
_LEN = struct.Struct(">I")
ALERT_SUFFIXES = (".avro", ".wires")

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


def _skip_reader(writer: dict[str, Any]) -> dict[str, Any]:
    """Reader schema keeping only ``diaSource.diaSourceId``: decoding skips everything else."""
    ds = next(f for f in writer["fields"] if f["name"] == "diaSource")["type"]
    keep = next(f for f in ds["fields"] if f["name"] == "diaSourceId")
    return fastavro.parse_schema({
        "type": "record", "name": writer["name"],
        "fields": [{"name": "diaSource", "type": {
            "type": "record", "name": ds["name"], "fields": [keep]}}],
    })


def _container_rows(f: BinaryIO, path: str, keep_packets: bool
                    ) -> Iterator[AlertRow | BadAlertError]:
    blocks = fastavro.block_reader(f)
    writer = blocks.writer_schema
    name = writer.get("name", "") if isinstance(writer, dict) else ""
    if schema_id_from_name(name) is not None:
        schema = get_schema(schema_id_from_name(name), source=path)
        header = wire_header(schema.schema_id)
        reader = _skip_reader(writer)
        index = 0
        for block in blocks:
            data = block.bytes_.getvalue()
            bio = io.BytesIO(data)
            for _ in range(block.num_records):
                source = f"{path}#{index}"
                index += 1
                start = bio.tell()
                try:
                    fastavro.schemaless_reader(bio, writer, reader)
                except Exception as exc:  # corrupt block: the rest of it is unusable
                    yield BadAlertError(f"{source}: cannot decode Rubin record: {exc!r}")
                    break
                body = data[start:bio.tell()]
                try:
                    yield decode_rubin_body(body, schema, source,
                                            header + body if keep_packets else None)
                except BadAlertError as exc:
                    yield exc
    elif name == "ztf.alert":
        records, sources, packets = [], [], []
        for index, record in enumerate(_records(blocks)):
            records.append(record)
            sources.append(f"{path}#{index}")
        if keep_packets:
            if len(records) == 1:
                f.seek(0)
                packets = [f.read()]
            else:
                for record in records:
                    out = io.BytesIO()
                    fastavro.writer(out, writer, [record])
                    packets.append(out.getvalue())
        else:
            packets = [None] * len(records)
        rows, errors = ztf_rows(records, sources, packets)
        yield from errors
        yield from rows
    else:
        yield BadAlertError(f"{path}: Avro container of {name or 'unnamed'} records is neither "
                            "a Rubin (lsst.vX_Y.alert) nor a ZTF (ztf.alert) alert file")


def _records(blocks: Any) -> Iterator[dict[str, Any]]:
    for block in blocks:
        bio = block.bytes_
        bio.seek(0)
        for _ in range(block.num_records):
            yield fastavro.schemaless_reader(bio, blocks.writer_schema, None)


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
                                      keep_packets=keep_packets)
        yield from errors
        if len(batch):
            yield batch
    if frames.flaw == 1:
        yield BadAlertError(f"{path}#{n}: wire stream truncated in a length prefix")
    elif frames.flaw == 2:
        yield BadAlertError(f"{path}#{n}: wire stream truncated ({frames.got} of "
                            f"{frames.size} bytes)")


def iter_file_items(path: str | Path, *, keep_packets: bool = True, chunk: int = 10_000
                    ) -> Iterator[AlertRow | AlertBatch | BadAlertError]:
    """The packets of one alert file as decoded rows or batches (of at most ``chunk``
    alerts, wire streams), and the :class:`BadAlertError` of each bad packet, in file order.

    An unreadable file or a corrupt container block yields one error and ends the file.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            start = f.read(max(len(WIRE_STREAM_MAGIC), len(CONTAINER_MAGIC)))
            if start.startswith(CONTAINER_MAGIC):
                f.seek(0)
                try:
                    yield from _container_rows(f, path, keep_packets)
                except BadAlertError as exc:
                    yield exc
                except Exception as exc:  # fastavro: bad header, sync marker, codec...
                    yield BadAlertError(f"{path}: corrupt Avro container file: {exc!r}")
            elif start.startswith(WIRE_STREAM_MAGIC):
                yield from _wire_stream_items(f, path, keep_packets, chunk)
            elif start[:1] == b"\x00":
                f.seek(0)
                try:
                    yield decode_wire_row(f.read(), f"{path}#0", keep_packet=keep_packets)
                except BadAlertError as exc:
                    yield exc
            else:
                yield BadAlertError(f"{path}: not an alert file (neither an Avro container, a "
                                    "wire-format message nor a wire stream)")
    except OSError as exc:
        yield BadAlertError(f"{path}: cannot read alert file: {exc}")


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

"""A file spool: the embedded (no Kafka) input of ``mmcross listen``.

Layout under one spool directory (created when missing)::

    in/        drop notice and alert files here (write elsewhere, then rename into it)
    done/      files handled (moved here once their reports are written)
    failed/    files refused as a whole, each with a ``<name>.reason.txt`` beside it
    out/       reports: matches.jsonl and voevents/ (written by the service's sinks)
    journal/   committed, not yet applied output transactions (see :class:`SpoolJournal`)

A file in ``in/`` is handled once it has *settled* (same size and modification time for
``settle`` seconds); names starting with ``.`` or ending in ``.tmp``/``.part`` are ignored.
Files are taken oldest first (modification time, then name). The kind of a file:

* ``in/notices/...`` or ``in/alerts/...`` say it outright;
* ``in/detections/<partner>/*.json``: a partner's own transient detections (kind
  ``"detections"``, :func:`detections_partner` names the partner), trusted as local operator
  input (no signature: whoever can write the spool can also edit the config);
* else by suffix: ``.xml``, ``.json`` -> notice; ``.wires`` -> alerts; ``.avro`` -> alerts when
  it is a Confluent wire-format message or an Avro container of ``lsst.*``/``ztf.*`` alerts,
  else a notice (IGWN Avro notice).

Handling a file is exactly once (:class:`SpoolJournal`): everything a file causes -- lines
appended to ``out/*.jsonl``, VOEvent files, the store writes and the file's own move to
``done/`` or ``failed/`` -- is staged in fsynced temporary files, then committed by one journal
entry (write to a temporary name, fsync, atomic rename, fsync of the directory), then applied.
A crash before the entry leaves the file in ``in/`` and nothing visible (the staging is
discarded at start-up and the file read again); a crash after it is finished at start-up by
applying the entry again, which is idempotent: an append records the size of its target
before it, so a partial or complete earlier append is truncated or skipped, and renames and
moves are skipped once done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fastavro

from mmcross.brokers.alert_files import CONTAINER_MAGIC, WIRE_STREAM_MAGIC
from mmcross.model import crashpoints
from mmcross.model.errors import ConfigError

log = logging.getLogger(__name__)

NOTICE_SUFFIXES = (".xml", ".json")
IGNORED_SUFFIXES = (".tmp", ".part", ".reason.txt")
DETECTIONS_DIR = "detections"
SYMLINK = "symlink"  # the kind of an input that is a symbolic link: refused, never followed
NAME_MAX = 255  # bytes of one file name (Linux, macOS)
PARTNER_MATCHES = "partner_matches.jsonl"


@dataclass(frozen=True)
class SpoolFile:
    """One settled input file and its kind (``"notice"``, ``"alerts"`` or ``"detections"``)."""

    path: Path
    kind: str
    size: int
    mtime: float


def fit_name(name: str, suffix: str = "") -> str:
    """``name + suffix``, with ``name`` cut (and a hash of it added) when the whole would
    be longer than :data:`NAME_MAX` bytes."""
    whole = name + suffix
    if len(os.fsencode(whole)) <= NAME_MAX:
        return whole
    raw = os.fsencode(name)
    keep = NAME_MAX - len(os.fsencode(suffix)) - 13
    return f"{os.fsdecode(raw[:keep])}~{hashlib.sha256(raw).hexdigest()[:12]}{suffix}"


def classify(path: Path, inbox: Path) -> str:
    """``"notice"``, ``"alerts"`` or ``"detections"`` for a file of ``inbox`` (module doc)."""
    rel = path.relative_to(inbox).parts
    if len(rel) > 2 and rel[0] == DETECTIONS_DIR:
        return "detections"
    if len(rel) > 1 and rel[0] in ("notices", "alerts"):
        return "notice" if rel[0] == "notices" else "alerts"
    suffix = path.suffix.lower()
    if suffix in NOTICE_SUFFIXES:
        return "notice"
    if suffix == ".wires":
        return "alerts"
    if suffix == ".avro":
        with open(path, "rb") as f:
            start = f.read(len(WIRE_STREAM_MAGIC))
            if start[:1] == b"\x00" or start.startswith(WIRE_STREAM_MAGIC):
                return "alerts"
            if start.startswith(CONTAINER_MAGIC):
                f.seek(0)
                try:
                    name = str(fastavro.reader(f).writer_schema.get("name", ""))
                except Exception:  # noqa: BLE001 - unreadable header: let the alert reader say
                    return "alerts"
                return "alerts" if name.startswith(("lsst.", "ztf.")) else "notice"
    return "notice"


class FileSpool:
    """Finds settled files in ``<directory>/in``; says where they go once handled.

    Args:
        directory: the spool directory.
        settle: seconds a file's size and mtime must stay unchanged before it is taken.
    """

    def __init__(self, directory: str | Path, settle: float = 0.5) -> None:
        self.directory = Path(directory)
        self.inbox = self.directory / "in"
        self.done = self.directory / "done"
        self.failed = self.directory / "failed"
        self.out = self.directory / "out"
        self.settle = settle
        try:
            for d in (self.inbox, self.done, self.failed, self.out):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the spool directory {self.directory}: {exc}") \
                from exc
        self._seen: dict[Path, tuple[int, float, float]] = {}  # size, mtime, first seen

    def ready(self) -> Iterator[SpoolFile]:
        """The settled files of ``in/``, oldest first (a snapshot; files may vanish)."""
        now = time.monotonic()
        found: list[SpoolFile] = []
        current: dict[Path, tuple[int, float, float]] = {}
        for path in self.inbox.rglob("*"):
            name = path.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                st = path.lstat()
            except OSError:
                continue
            link = path.is_symlink()  # dangling, looping or not: refused, never followed
            if not link and not path.is_file():
                continue
            prev = self._seen.get(path)
            if prev is None or prev[:2] != (st.st_size, st.st_mtime):
                current[path] = (st.st_size, st.st_mtime, now)
                continue
            current[path] = prev
            if now - prev[2] >= self.settle:
                try:
                    kind = SYMLINK if link else classify(path, self.inbox)
                except OSError:
                    continue
                found.append(SpoolFile(path, kind, st.st_size, st.st_mtime))
        self._seen = current
        found.sort(key=lambda f: (f.mtime, str(f.path)))
        yield from found

    def pending(self) -> int:
        """Files waiting in ``in/`` (settled or not)."""
        return sum(1 for p in self.inbox.rglob("*") if (p.is_file() or p.is_symlink())
                   and not p.name.startswith(".") and not p.name.endswith(IGNORED_SUFFIXES))

    def destination(self, item: SpoolFile, failed: bool = False) -> Path:
        """Where :meth:`SpoolJournal` moves a handled file: ``done/`` (``failed/`` when
        refused), same relative path; a name handled before gets a ``.<ns>`` suffix."""
        target = (self.failed if failed else self.done) / item.path.relative_to(self.inbox)
        if os.path.lexists(target):
            target = target.with_name(fit_name(f"{target.stem}.{time.time_ns()}",
                                               target.suffix))
        return target

    def forget(self, item: SpoolFile) -> None:
        """Stop tracking a file moved away from ``in/``."""
        self._seen.pop(item.path, None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (not its directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class OutputTransaction:
    """What one input causes, staged in memory until :meth:`SpoolJournal.commit`.

    Attributes:
        appends: text appended to each output file (JSON Lines), in order.
        files: whole output files (VOEvents, reasons) by target path.
        moves: input files moved once committed (source, target).
    """

    appends: dict[Path, list[str]] = field(default_factory=dict)
    files: dict[Path, bytes] = field(default_factory=dict)
    moves: list[tuple[Path, Path]] = field(default_factory=list)

    def append(self, target: Path, text: str) -> None:
        if text:
            self.appends.setdefault(Path(target), []).append(text)

    def put_file(self, target: Path, data: bytes) -> None:
        self.files[Path(target)] = data

    def __bool__(self) -> bool:
        return bool(self.appends or self.files or self.moves)


class SpoolJournal:
    """Exactly-once outputs of the embedded service (module doc): stage, commit, apply.

    ``journal/<seq>.json`` is a committed entry; ``journal/<seq>/`` its staged data (one
    chunk per appended file, one file per whole output, ``store.bin`` with the store
    writes). Call :meth:`recover` once at start-up, before handling any input.

    Args:
        directory: the journal directory (``<spool>/journal``).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = max((int(p.stem) for p in self.directory.glob("*.json")
                         if p.stem.isdigit()), default=0)

    def commit(self, txn: OutputTransaction, store_payload: bytes = b"") -> Path:
        """Stage ``txn`` durably and write its journal entry (the commit point); returns the
        entry's path, for :meth:`apply`."""
        self._seq = max(self._seq + 1, time.time_ns())
        name = f"{self._seq:020d}"
        staging = self.directory / name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        appends = []
        for i, (target, texts) in enumerate(txn.appends.items()):
            chunk = staging / f"append-{i}"
            _write_durably(chunk, "".join(texts).encode("utf-8"))
            size = target.stat().st_size if target.exists() else 0
            appends.append([str(target), chunk.name, size])
        files = []
        for i, (target, data) in enumerate(txn.files.items()):
            staged = staging / f"file-{i}"
            _write_durably(staged, data)
            files.append([str(target), staged.name])
        if store_payload:
            _write_durably(staging / "store.bin", store_payload)
        _fsync_dir(staging)
        crashpoints.hit("spool_output")
        entry = {"appends": appends, "files": files,
                 "moves": [[str(a), str(b)] for a, b in txn.moves],
                 "store": bool(store_payload)}
        tmp = self.directory / f".{name}.json.tmp"
        _write_durably(tmp, json.dumps(entry).encode())
        path = self.directory / f"{name}.json"
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        crashpoints.hit("spool_journal")
        return path

    def apply(self, entry: Path, apply_store: Callable[[bytes | None], None]) -> None:
        """Make a committed entry's outputs visible (idempotent), then forget it.

        ``apply_store`` gets the entry's store payload (None when it has none) and must be
        idempotent too.
        """
        staging = entry.with_suffix("")
        record = json.loads(entry.read_text())
        for target, chunk_name, size in record["appends"]:
            _append_once(Path(target), (staging / chunk_name).read_bytes(), int(size))
            crashpoints.hit("spool_append")
        for target, staged_name in record["files"]:
            staged = staging / staged_name
            if staged.exists():
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                _fsync_dir(Path(target).parent)
        for source, target in record["moves"]:
            if os.path.lexists(source):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                _fsync_dir(Path(target).parent)
        apply_store((staging / "store.bin").read_bytes() if record["store"] else None)
        entry.unlink()
        _fsync_dir(self.directory)
        shutil.rmtree(staging, ignore_errors=True)

    def recover(self, apply_store: Callable[[bytes | None], None]) -> int:
        """At start-up: apply every committed entry (in order), discard uncommitted staging.
        Returns the number of entries applied."""
        entries = sorted(self.directory.glob("*.json"))
        for entry in entries:
            log.info("finishing the committed spool transaction %s", entry.name)
            self.apply(entry, apply_store)
        for leftover in self.directory.iterdir():
            if leftover.is_dir() or leftover.name.endswith(".tmp"):
                log.info("discarding the uncommitted spool transaction %s", leftover.name)
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()
        return len(entries)


def _append_once(target: Path, data: bytes, size_before: int) -> None:
    """Append ``data`` to ``target`` whose committed size was ``size_before`` bytes, unless
    already done: a longer file is complete, a shorter partial tail is cut first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "ab") as f:
        size = f.seek(0, os.SEEK_END)
        if size >= size_before + len(data):
            return
        if size != size_before:
            f.truncate(size_before)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def detections_partner(item: SpoolFile, inbox: Path) -> str:
    """The partner of a ``detections`` file: ``in/detections/<partner>/...``."""
    return item.path.relative_to(inbox).parts[1]

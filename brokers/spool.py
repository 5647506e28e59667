"""A file spool: the embedded (no Kafka) input of ``mmcross listen``.

Layout under one spool directory (created when missing)::

    in/        drop notice and alert files here (write elsewhere, then rename into it)
    done/      files handled (moved here once their reports are written)
    failed/    files refused as a whole, each with a ``<name>.reason.txt`` beside it
    out/       reports: matches.jsonl and voevents/ (written by the service's sinks)
    journal/   committed, not yet applied output transactions (see :class:`SpoolJournal`)
      quarantine/<seq>/  committed entries that could not be applied (``reason.json``)

A file in ``in/`` is handled once it has *settled* (same size and modification time for
``settle`` seconds); names starting with ``.`` or ending in ``.tmp``/``.part`` are ignored.
Files are taken oldest first (modification time, then name). Sub-folders of ``in/`` are
walked; a symbolic link (kind :data:`SYMLINK`) or any other entry that is not a regular file
-- FIFO, socket, device (kind :data:`NOT_REGULAR`) -- is refused, never followed nor opened.
The kind of a regular file:

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

Start-up never stops on a poison entry: a committed entry that cannot be applied *as
written* -- unreadable JSON, a wrong structure, a staged file missing, a store payload that
does not decode -- is checked before anything of it is applied, logged as a
:class:`BadJournalEntryError` and moved with its staged data to
``journal/quarantine/<seq>/`` (``entry.json``, ``staged/``, ``reason.json``); the next entries
are applied as usual, and its input file, when still in ``in/``, is read again. A failure of
the machine rather than of the entry -- any other operating-system error (disk full, no
permission, read-only file system, I/O error) or the store refusing the writes -- is raised:
start-up fails loudly and the entry is retried at the next start, once the cause is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import fastavro

from mmcross.brokers.alert_files import CONTAINER_MAGIC, WIRE_STREAM_MAGIC
from mmcross.model import crashpoints
from mmcross.model.errors import ConfigError, MmcrossError

log = logging.getLogger(__name__)

NOTICE_SUFFIXES = (".xml", ".json")
IGNORED_SUFFIXES = (".tmp", ".part", ".reason.txt")
DETECTIONS_DIR = "detections"
SYMLINK = "symlink"  # the kind of an input that is a symbolic link: refused, never followed
NOT_REGULAR = "not_regular"  # the kind of a FIFO, socket or device: refused, never opened
QUARANTINE = "quarantine"  # journal/quarantine/: committed entries that cannot be applied
NAME_MAX = 255  # bytes of one file name (Linux, macOS)
PARTNER_MATCHES = "partner_matches.jsonl"


class NotARegularFileError(MmcrossError):
    """A spool input (or journal file) that is not a regular file: a FIFO, socket, device or
    directory, refused without being opened (opening a FIFO blocks until a writer comes).

    Attributes:
        path: the refused path.
        mode: its ``st_mode`` (from ``lstat``).
        file_type: what it is, in words (``"a FIFO (named pipe)"``).
    """

    def __init__(self, path: Path | str, mode: int) -> None:
        self.path = Path(path)
        self.mode = mode
        self.file_type = describe_mode(mode)
        super().__init__(f"{self.path}: {self.file_type}, not a regular file (never opened)")


class BadJournalEntryError(MmcrossError):
    """A committed spool journal entry that cannot be applied as written (module doc).

    Attributes:
        entry: the entry (``journal/<seq>.json``).
        part: where in it: ``"entry"`` (the JSON itself) or a staged file (``"append-0"``,
            ``"store.bin"``).
        reason: what was wrong, without the place.
    """

    def __init__(self, entry: Path | str, part: str, reason: str) -> None:
        super().__init__(f"{entry} ({part}): {reason}")
        self.entry = Path(entry)
        self.part = part
        self.reason = reason

    def to_json(self) -> dict[str, str]:
        """The error as a JSON object (the ``reason.json`` of a quarantined entry)."""
        return {"error": type(self).__name__, "entry": str(self.entry), "part": self.part,
                "reason": self.reason}


_FILE_TYPES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
               (stat.S_ISREG, "a regular file"))


def describe_mode(mode: int) -> str:
    """What an ``st_mode`` is, in words (``"a socket"``)."""
    for test, words in _FILE_TYPES:
        if test(mode):
            return words
    return f"a file of type {stat.S_IFMT(mode):#o}"


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, only if it is a regular file.

    Never follows a symbolic link (``O_NOFOLLOW``: ``OSError``) and never blocks on a FIFO
    (``O_NONBLOCK``, no effect on regular files): an input replaced after it was listed
    cannot hang the reader. Raises :class:`NotARegularFileError` for anything else.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`)."""
    with open_regular(path) as f:
        return f.read()


@dataclass(frozen=True)
class SpoolFile:
    """One settled input and its kind (``"notice"``, ``"alerts"``, ``"detections"``,
    :data:`SYMLINK` or :data:`NOT_REGULAR`); ``size`` in bytes, ``mtime`` in s since 1970,
    ``mode`` its ``lstat`` ``st_mode``."""

    path: Path
    kind: str
    size: int
    mtime: float
    mode: int = stat.S_IFREG


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
        with open_regular(path) as f:
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
        self._stuck: dict[Path, tuple[int, int, int]] = {}  # unmovable entries (_identity)

    def _inputs(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Every entry of ``in/`` that is an input (not a folder, not ignored by its name,
        not stuck), with its ``lstat``."""
        for path in self.inbox.rglob("*"):  # never descends into a linked folder
            name = path.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) or self._stuck.get(path) == _identity(st):
                continue
            yield path, st

    def _kind(self, path: Path, mode: int) -> str:
        """The kind of a settled input (:class:`SpoolFile`); a link or a FIFO is never
        followed nor opened."""
        if stat.S_ISLNK(mode):  # dangling, looping or not
            return SYMLINK
        if not stat.S_ISREG(mode):
            return NOT_REGULAR
        return classify(path, self.inbox)

    def ready(self) -> Iterator[SpoolFile]:
        """The settled inputs of ``in/``, oldest first (a snapshot; files may vanish)."""
        now = time.monotonic()
        found: list[SpoolFile] = []
        current: dict[Path, tuple[int, float, float]] = {}
        for path, st in self._inputs():
            prev = self._seen.get(path)
            if prev is None or prev[:2] != (st.st_size, st.st_mtime):
                current[path] = (st.st_size, st.st_mtime, now)
                continue
            current[path] = prev
            if now - prev[2] >= self.settle:
                try:
                    kind = self._kind(path, st.st_mode)
                except (OSError, NotARegularFileError):  # replaced meanwhile: next pass
                    continue
                found.append(SpoolFile(path, kind, st.st_size, st.st_mtime, st.st_mode))
        self._seen = current
        found.sort(key=lambda f: (f.mtime, str(f.path)))
        yield from found

    def pending(self) -> int:
        """Inputs waiting in ``in/`` (settled or not; stuck ones not counted)."""
        return sum(1 for _ in self._inputs())

    def set_aside(self, item: SpoolFile, target: Path) -> None:
        """Move ``item`` (a :data:`NOT_REGULAR` entry, never opened) to ``target`` at once,
        outside the journal: it has no content to stage. When the move fails, the entry is
        remembered as stuck -- neither listed nor counted again by this process, unless
        another file takes its path -- and the ``OSError`` is raised for the caller to report
        once."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item.path, target)
            _fsync_dir(target.parent)
        except OSError:
            try:
                st = item.path.lstat()
            except OSError:
                pass
            else:
                self._stuck[item.path] = _identity(st)
            raise
        finally:
            self.forget(item)

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


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    """Device, inode and file type: a regular file put where a stuck FIFO was is new."""
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)


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
        self._unapplied: set[Path] = set()  # entries committed here, not applied yet
        self._ends: dict[Path, int] = {}  # append targets' sizes once those are applied, bytes

    def commit(self, txn: OutputTransaction, store_payload: bytes = b"") -> Path:
        """Stage ``txn`` durably and write its journal entry (the commit point); returns the
        entry's path, for :meth:`apply`."""
        self._seq = max(self._seq + 1, time.time_ns())
        name = f"{self._seq:020d}"
        staging = self.directory / name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if not self._unapplied:
            self._ends.clear()
        appends = []
        for i, (target, texts) in enumerate(txn.appends.items()):
            chunk = staging / f"append-{i}"
            data = "".join(texts).encode("utf-8")
            _write_durably(chunk, data)
            # the size the target has once every earlier entry is applied
            size = self._ends.get(target, target.stat().st_size if target.exists() else 0)
            self._ends[target] = size + len(data)
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
        path = self.directory / f"{name}.json"
        self._write_entry(path, entry)
        self._unapplied.add(path)
        crashpoints.hit("spool_journal")
        return path

    def _write_entry(self, path: Path, entry: dict) -> None:
        """Write ``entry`` as ``path`` atomically: temporary name, fsync, rename, fsync of
        the directory."""
        tmp = self.directory / f".{path.name}.tmp"
        _write_durably(tmp, json.dumps(entry).encode())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    def apply(self, entry: Path, apply_store: Callable[[bytes | None], None]) -> None:
        """Make a committed entry's outputs visible (idempotent), then forget it.

        ``apply_store`` gets the entry's store payload (None when it has none) and must be
        idempotent too. Raises :class:`BadJournalEntryError` (nothing applied) when the entry
        cannot be applied as written, ``OSError`` or the store's error when applying fails.
        """
        self._apply(self.read(entry), apply_store)

    def read(self, entry: Path) -> JournalEntry:
        """The committed entry ``entry``, checked before anything of it is applied: valid
        JSON of the expected shape, every staged chunk and store payload it needs present.

        Raises :class:`BadJournalEntryError` for an entry that is wrong as written;
        ``OSError`` (other than a missing staged file) for a failure of the machine.
        """
        if not _is_regular(entry):
            raise BadJournalEntryError(entry, "entry", "not a regular file")
        try:
            record = json.loads(read_regular(entry).decode("utf-8"))
            parsed = _parse_entry(entry, record)
        except NotARegularFileError as exc:
            raise BadJournalEntryError(entry, "entry", exc.file_type) from exc
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
            raise BadJournalEntryError(entry, "entry", f"{type(exc).__name__}: {exc}") \
                from exc
        for _target, chunk, _size in parsed.appends:
            _check_staged(entry, parsed.staging / chunk)
        if record["store"]:
            _check_staged(entry, parsed.staging / "store.bin")
            parsed.store = (parsed.staging / "store.bin").read_bytes()
        return parsed

    def _apply(self, parsed: JournalEntry, apply_store: Callable[[bytes | None], None]) \
            -> None:
        """Apply a checked entry (:meth:`apply`); every error is raised."""
        staging = parsed.staging
        for i, (target, chunk_name, size) in enumerate(parsed.appends):
            data = (staging / chunk_name).read_bytes()
            if (target.stat().st_size if target.exists() else 0) < size:
                size = self._rebase(parsed, i)
            _append_once(target, data, size)
            crashpoints.hit("spool_append")
        for target, staged_name in parsed.files:
            staged = staging / staged_name
            if staged.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                _fsync_dir(target.parent)
        for source, target in parsed.moves:
            if os.path.lexists(source):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                _fsync_dir(target.parent)
        apply_store(parsed.store)
        parsed.path.unlink()
        _fsync_dir(self.directory)
        shutil.rmtree(staging, ignore_errors=True)
        self._unapplied.discard(parsed.path)

    def _rebase(self, parsed: JournalEntry, i: int) -> int:
        """Append ``i`` of ``parsed`` targets a file now shorter than when the entry was
        committed (an earlier entry set aside, or the file rotated): record its present
        size in the entry (durably, so that applying again stays idempotent) instead of
        padding the gap; returns that size in bytes."""
        target, chunk_name, before = parsed.appends[i]
        size = target.stat().st_size if target.exists() else 0
        log.warning("%s is %d bytes, fewer than the %d it had when %s was committed: "
                    "appending at its end", target, size, before, parsed.path.name)
        parsed.appends[i] = (target, chunk_name, size)
        self._write_entry(parsed.path, {
            "appends": [[str(t), c, n] for t, c, n in parsed.appends],
            "files": [[str(t), f] for t, f in parsed.files],
            "moves": [[str(a), str(b)] for a, b in parsed.moves],
            "store": parsed.store is not None})
        return size

    def recover(self, apply_store: Callable[[bytes | None], None],
                check_store: Callable[[bytes], object] | None = None) -> Recovery:
        """At start-up: apply every committed entry (in order), set aside the entries that
        cannot be applied as written (:meth:`quarantine`), discard uncommitted staging.

        ``check_store`` decodes a store payload without applying it; anything it raises
        (but ``MemoryError``) marks the entry as poison before any of it is applied.
        ``OSError`` (disk full, permission, I/O) and errors of ``apply_store`` (the store)
        are raised: start-up fails and the entry is retried at the next start.
        """
        done = Recovery()
        for entry in sorted(self.directory.glob("*.json")):
            log.info("finishing the committed spool transaction %s", entry.name)
            try:
                parsed = self.read(entry)
                if check_store is not None and parsed.store is not None:
                    _check_payload(entry, parsed.store, check_store)
            except BadJournalEntryError as err:
                self.quarantine(err)
                done.quarantined.append(err)
                continue
            self._apply(parsed, apply_store)
            done.applied += 1
        for leftover in self.directory.iterdir():
            if leftover.name == QUARANTINE:
                continue
            if leftover.is_dir() or leftover.name.endswith(".tmp"):
                log.info("discarding the uncommitted spool transaction %s", leftover.name)
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()
                done.discarded += 1
        return done

    def quarantined(self) -> list[Path]:
        """The folders of ``quarantine/``, oldest sequence first: entries set aside at this or
        an earlier start that wait for an operator (removing a folder clears it)."""
        folder = self.directory / QUARANTINE
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())

    def quarantine(self, err: BadJournalEntryError) -> Path:
        """Move the entry of ``err`` and its staged data out of the journal, to
        ``quarantine/<seq>/`` (``<seq>.<ns>/`` when taken); returns that folder.

        ``reason.json`` is written first, then ``staged/`` and last ``entry.json``: a crash
        half-way loses nothing (the entry is set aside again at the next start, into a
        folder of its own).

        To retry an entry by hand: move ``staged/`` back as ``journal/<seq>/`` and
        ``entry.json`` as ``journal/<seq>.json``.
        """
        entry = err.entry
        place = self.directory / QUARANTINE / entry.stem
        if os.path.lexists(place):  # set aside before (and put back, or a crash half-way)
            place = place.with_name(f"{entry.stem}.{time.time_ns()}")
        place.mkdir(parents=True)
        log.error("spool journal entry %s set aside in %s: %s", entry, place, err,
                  extra={"journal_error": err.to_json()})
        _write_durably(place / "reason.json", json.dumps(err.to_json()).encode())
        staging = entry.with_suffix("")
        if os.path.lexists(staging):
            os.replace(staging, place / "staged")
        os.replace(entry, place / "entry.json")
        _fsync_dir(place)
        _fsync_dir(place.parent)
        _fsync_dir(self.directory)
        return place


@dataclass
class JournalEntry:
    """A committed journal entry, read and checked (:meth:`SpoolJournal.read`).

    Attributes:
        path: ``journal/<seq>.json``.
        staging: ``journal/<seq>/``, its staged data.
        appends: (target, chunk name, target size before the append in bytes).
        files: (target, staged file name).
        moves: (source, target) of input files.
        store: the store payload (None when the entry has none).
    """

    path: Path
    staging: Path
    appends: list[tuple[Path, str, int]]
    files: list[tuple[Path, str]]
    moves: list[tuple[Path, Path]]
    store: bytes | None = None


@dataclass
class Recovery:
    """What :meth:`SpoolJournal.recover` did: entries applied, entries set aside (their
    errors), uncommitted staging discarded."""

    applied: int = 0
    quarantined: list[BadJournalEntryError] = field(default_factory=list)
    discarded: int = 0


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _target(value: object) -> Path:
    """An output or input path of an entry (a non-empty string without NUL)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"bad path {value!r:.80}")
    return Path(value)


def _staged_name(value: object) -> str:
    """A staged file's name: one plain name inside the entry's staging folder."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value \
            or "\0" in value or os.sep in value:
        raise ValueError(f"bad staged file name {value!r:.80}")
    return value


def _size(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"bad size {value!r:.80}")
    return value


def _parse_entry(entry: Path, record: object) -> JournalEntry:
    """The fields of a journal entry's JSON, type-checked (ValueError, TypeError, KeyError
    or IndexError when it is not what :meth:`SpoolJournal.commit` writes)."""
    if not isinstance(record, dict) or not isinstance(record["store"], bool):
        raise TypeError("not a journal entry object")
    for key in ("appends", "files", "moves"):
        if not isinstance(record[key], list) or not all(
                isinstance(item, list) and len(item) == (3 if key == "appends" else 2)
                for item in record[key]):
            raise TypeError(f"{key!r} is not a list of {3 if key == 'appends' else 2}-lists")
    return JournalEntry(
        path=entry, staging=entry.with_suffix(""),
        appends=[(_target(t), _staged_name(c), _size(n)) for t, c, n in record["appends"]],
        files=[(_target(t), _staged_name(f)) for t, f in record["files"]],
        moves=[(_target(a), _target(b)) for a, b in record["moves"]])


def _check_staged(entry: Path, staged: Path) -> None:
    """A staged file an entry needs is a regular file (an entry is committed only after its
    staged data is fsynced, and chunks and the store payload are kept until it is applied:
    a missing one means a damaged entry). Other ``OSError`` are raised."""
    try:
        mode = staged.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise BadJournalEntryError(entry, staged.name, "staged file missing") from exc
    if not stat.S_ISREG(mode):
        raise BadJournalEntryError(entry, staged.name,
                                   f"staged file is {describe_mode(mode)}")


def _check_payload(entry: Path, payload: bytes, check: Callable[[bytes], object]) -> None:
    """Run ``check`` on an entry's store payload; what it raises makes the entry poison
    (decoding is pure: no operating-system error can be transient here), but
    ``MemoryError``."""
    try:
        check(payload)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure: the payload is bad
        raise BadJournalEntryError(entry, "store.bin",
                                   f"does not decode: {type(exc).__name__}: {exc}") from exc


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

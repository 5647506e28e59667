"""A file spool: the embedded (no Kafka) input of ``mmcross listen``.

Layout under one spool directory (created when missing)::

    in/        drop notice and alert files here (write elsewhere, then rename into it)
    done/      files handled (moved here once their reports are written)
    failed/    files refused as a whole, each with a ``<name>.reason.txt`` beside it
    out/       reports: matches.jsonl and voevents/ (written by the service's sinks)

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

Handling a file is idempotent: after a crash between writing its reports and moving it, the
file is read again and the store drops the matches it already holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import fastavro

from mmcross.brokers.alert_files import CONTAINER_MAGIC, WIRE_STREAM_MAGIC
from mmcross.model.errors import ConfigError

log = logging.getLogger(__name__)

NOTICE_SUFFIXES = (".xml", ".json")
IGNORED_SUFFIXES = (".tmp", ".part", ".reason.txt")
DETECTIONS_DIR = "detections"
PARTNER_MATCHES = "partner_matches.jsonl"


@dataclass(frozen=True)
class SpoolFile:
    """One settled input file and its kind (``"notice"``, ``"alerts"`` or ``"detections"``)."""

    path: Path
    kind: str
    size: int
    mtime: float


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
    """Finds settled files in ``<directory>/in`` and moves them to ``done/`` or ``failed/``.

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
                st = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            prev = self._seen.get(path)
            if prev is None or prev[:2] != (st.st_size, st.st_mtime):
                current[path] = (st.st_size, st.st_mtime, now)
                continue
            current[path] = prev
            if now - prev[2] >= self.settle:
                try:
                    kind = classify(path, self.inbox)
                except OSError:
                    continue
                found.append(SpoolFile(path, kind, st.st_size, st.st_mtime))
        self._seen = current
        found.sort(key=lambda f: (f.mtime, str(f.path)))
        yield from found

    def pending(self) -> int:
        """Files waiting in ``in/`` (settled or not)."""
        return sum(1 for p in self.inbox.rglob("*") if p.is_file()
                   and not p.name.startswith(".") and not p.name.endswith(IGNORED_SUFFIXES))

    def _move(self, item: SpoolFile, to: Path) -> Path:
        rel = item.path.relative_to(self.inbox)
        target = to / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # same name handled before: keep both
            target = target.with_name(f"{target.stem}.{time.time_ns()}{target.suffix}")
        shutil.move(str(item.path), target)
        self._seen.pop(item.path, None)
        return target

    def complete(self, item: SpoolFile) -> Path:
        """Move a handled file to ``done/`` (same relative path); returns where it went."""
        return self._move(item, self.done)

    def fail(self, item: SpoolFile, reason: str) -> Path:
        """Move a refused file to ``failed/`` with ``<name>.reason.txt`` beside it."""
        target = self._move(item, self.failed)
        reason_path = target.with_name(target.name + ".reason.txt")
        tmp = reason_path.with_suffix(".tmp")
        tmp.write_text(reason + "\n", encoding="utf-8")
        os.replace(tmp, reason_path)
        return target


def detections_partner(item: SpoolFile, inbox: Path) -> str:
    """The partner of a ``detections`` file: ``in/detections/<partner>/...``."""
    return item.path.relative_to(inbox).parts[1]


class PartnerMatchFile:
    """Append partner stream matches to ``partner_matches.jsonl``, one JSON object per line
    (the match's ``to_json()``), durably: flush + fsync per :meth:`write` call, as
    :class:`mmcross.brokers.reports.JsonLinesWriter` does for event matches.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self.count = 0

    def write(self, matches: Sequence[Any]) -> int:
        """Append a batch of stream matches; returns how many were written."""
        if not matches:
            return 0
        self._file.write("".join(m.to_json() + "\n" for m in matches))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.count += len(matches)
        log.debug("appended %d partner matches to %s", len(matches), self.path)
        return len(matches)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> PartnerMatchFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

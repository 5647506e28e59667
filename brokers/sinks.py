"""File sinks for match reports: JSON Lines and one VOEvent file per counterpart.

All take what the engine emits: new matches and revocations (``retracted=True``).
:class:`JsonLinesSink` and :class:`VOEventDirectorySink` write at once (replay, demo);
:class:`JournaledLines` and :class:`JournaledVOEvents` add to the open
:class:`~mmcross.brokers.spool.OutputTransaction` of the embedded service, made visible only
when its journal entry is committed (exactly once, see :mod:`mmcross.brokers.spool`).
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmcross.brokers.reports import JsonLinesWriter, json_lines, match_to_json
from mmcross.brokers.spool import OutputTransaction
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.model.match import Match
from mmcross.model.match_batch import MatchBatch

JsonLinesSink = JsonLinesWriter

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class VOEventDirectorySink:
    """Writes ``DIR/<event>_<alert>.xml`` per counterpart, ``...retraction.xml`` per revocation.

    Re-sending a match overwrites the same file (the IVORN is stable per event + alert), so
    the folder holds each counterpart once. The packets are built in :meth:`write`; the files
    are created by one background thread, in order (creating a file costs ~0.6 ms on this
    project's ext4 machines, as much as matching ~5,000 alerts), so matching goes on
    meanwhile. :meth:`flush` and :meth:`close` wait for every file; a failed write (disk
    full, permissions) is raised by the next :meth:`write`, :meth:`flush` or :meth:`close`,
    and no file is written after it.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: queue.Queue[list[tuple[Path, bytes]] | None] = queue.Queue(maxsize=64)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def path_for(self, match: Match) -> Path:
        return voevent_path(self.directory, match)

    def write(self, matches: Sequence[Match]) -> None:
        self._raise_failure()
        files = [(self.path_for(m),
                  retraction_voevent(m) if m.retracted else counterpart_voevent(m))
                 for m in matches]
        if not files:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_files, daemon=True,
                                            name=f"voevent-files:{self.directory}")
            self._thread.start()
        self._files.put(files)

    def _write_files(self) -> None:
        while (files := self._files.get()) is not None:
            try:
                if self._failure is None:
                    for path, xml in files:
                        write_atomically(path, xml)
            except BaseException as exc:  # handed to the caller's thread
                self._failure = exc
            finally:
                self._files.task_done()
        self._files.task_done()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def flush(self) -> None:
        """Wait until every file handed to :meth:`write` is written."""
        self._files.join()
        self._raise_failure()

    def close(self) -> None:
        """Write what is queued, stop the writer thread."""
        if self._thread is not None:
            self._files.put(None)
            self._thread.join()
            self._thread = None
        self._raise_failure()


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``<path>.tmp`` and a rename: a reader never sees
    a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def voevent_path(directory: Path, match: Match) -> Path:
    """``DIR/<event>_<alert>.xml`` of a counterpart, ``...retraction.xml`` of a revocation."""
    stem = _UNSAFE.sub("_", f"{match.event_id}_{match.alert_id}")
    return directory / (f"{stem}.retraction.xml" if match.retracted else f"{stem}.xml")


class JournaledLines:
    """One JSON line per record (``to_line(record)``) appended to ``path`` in the open
    output transaction ``current()`` (matches: :func:`match_to_json`; partner stream
    matches: their ``to_json``)."""

    def __init__(self, path: str | Path, current: Callable[[], OutputTransaction],
                 to_line: Callable[[Any], str] = match_to_json) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._current = current
        self._to_line = to_line

    def write(self, records: Sequence[Any]) -> None:
        if isinstance(records, MatchBatch):
            text = json_lines(records)  # from the columns, no Match per row
        else:
            text = "".join(self._to_line(r) + "\n" for r in records)
        self._current().append(self.path, text)

    def close(self) -> None:
        """Nothing: the service commits its transactions."""


class JournaledVOEvents:
    """A counterpart or retraction VOEvent file per match (named as
    :class:`VOEventDirectorySink` names them) in the open output transaction."""

    def __init__(self, directory: str | Path, current: Callable[[], OutputTransaction]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = current

    def write(self, matches: Sequence[Match]) -> None:
        txn = self._current()
        for m in matches:
            xml = retraction_voevent(m) if m.retracted else counterpart_voevent(m)
            txn.put_file(voevent_path(self.directory, m), xml)

    def close(self) -> None:
        """Nothing: the service commits its transactions."""

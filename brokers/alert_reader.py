"""Alert files read ahead by a background thread, in time-sorted batches.

:class:`AlertReader` starts reading when it is made: ``mmcross replay`` makes it before it
imports the engine, so walking and decoding a container file (numba kernels that release the
GIL, memory-mapped reads) overlaps the ~1.5 s of imports, notice parsing and index building,
then matching the batch before. Batches are handed over in file order, each sorted by alert
time (MJD TAI); files are expected in time order, as a broker delivers them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mmcross.brokers.alert_files import iter_alert_batches
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import BadAlertError

log = logging.getLogger(__name__)

T = TypeVar("T")


class AlertReader:
    """The alerts of ``paths`` (files or folders, see
    :func:`~mmcross.brokers.alert_files.iter_alert_batches`) as batches of about ``chunk``
    alerts sorted by time, read up to ``depth`` batches ahead from construction on.

    A bad packet or container block is logged (with its file and record) and counted in
    :attr:`errors`, never fatal. Packets are not kept (no report carries them): their cutouts
    are never copied, nor, in a container file, read from disk.

    Raises:
        FileNotFoundError: a path does not exist (at construction, before any thread starts).
    """

    def __init__(self, paths: Iterable[str | Path], *, chunk: int = 20_000,
                 depth: int = 2) -> None:
        self.paths = [Path(p) for p in paths]
        for path in self.paths:
            if not path.exists():
                raise FileNotFoundError(f"no such alert file or directory: {path}")
        self.errors = 0
        self.started = time.perf_counter()  # s, when reading began
        batches = _sorted(iter_alert_batches(self.paths, chunk=chunk, on_error=self._bad,
                                             keep_packets=False))
        self._batches = ReadAhead(batches, depth)

    def _bad(self, exc: BadAlertError) -> None:
        self.errors += 1
        log.warning("alert skipped: %s", exc)

    def __iter__(self) -> Iterator[AlertBatch]:
        return iter(self._batches)

    def close(self) -> None:
        """Stop reading (when not at the end yet) and join the thread."""
        self._batches.close()

    def __enter__(self) -> AlertReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReadAhead(Iterable[T]):
    """The items of ``items``, produced by a background thread, up to ``depth`` ahead, from
    construction on. An exception of the producer is raised by the iteration at the item
    where it happened; :meth:`close` (or leaving a ``with`` block) stops the producer and
    closes ``items`` in its thread. Iterate once.

    >>> with ReadAhead(iter(range(5))) as items:
    ...     list(items)
    [0, 1, 2, 3, 4]
    """

    def __init__(self, items: Iterable[T], depth: int = 2) -> None:
        self._items = items
        self._handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="read-ahead", daemon=True)
        self._thread.start()

    def _put(self, kind: str, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._handoff.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        items = self._items
        try:
            for item in items:
                if not self._put("item", item):
                    break
        except BaseException as exc:  # handed to the consumer
            self._put("error", exc)
            return
        else:
            if not self._stop.is_set():
                self._put("end", None)
                return
        if isinstance(items, Generator):
            items.close()  # its files, in the thread that runs it

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                kind, value = self._handoff.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sorted(batches: Iterable[AlertBatch]) -> Iterator[AlertBatch]:
    """Each non-empty batch sorted by alert time (stable)."""
    for batch in batches:
        if len(batch):
            order = np.argsort(batch.mjd_tai, kind="stable")
            yield batch.take(order) if np.any(order != np.arange(len(order))) else batch

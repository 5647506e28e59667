"""Offline replay: notices and alert files merged in time order through the engine.

A notice is applied at its arrival time (its issue time, else its trigger time, MJD TAI), so
alerts observed between the trigger and the notice are found by retro-matching. Alert files
are read as a stream in chunks, each chunk sorted by time; files are expected in time order,
as a broker would deliver them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmcross.brokers.alert_files import expand_paths
from mmcross.brokers.alert_reader import AlertReader
from mmcross.brokers.coincidence_reports import CoincidenceJsonLines, CoincidenceVOEventDirectory
from mmcross.listeners import read_notice_file
from mmcross.model.coincidence import Coincidence
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import MmcrossError
from mmcross.model.event import Event

if TYPE_CHECKING:
    from mmcross.app.engine import Engine
    from mmcross.catalogs import Store

log = logging.getLogger(__name__)

NOTICE_SUFFIXES = (".xml", ".json", ".avro")


@dataclass
class ReplaySummary:
    """Counts of what a replay did, plus its wall-clock time (s, from when reading the alerts
    began)."""

    notices: int = 0
    notice_errors: Counter[str] = field(default_factory=Counter)
    alerts: int = 0
    alert_errors: int = 0
    matches: int = 0
    revoked: int = 0
    coincidences: int = 0
    coincidences_revoked: int = 0
    seconds: float = 0.0

    @property
    def alerts_per_second(self) -> float:
        return self.alerts / self.seconds if self.seconds > 0 else float("nan")


def read_notices(paths: Iterable[Path], summary: ReplaySummary,
                 config: Config) -> list[Event]:
    """Parse notice files; unreadable or unsupported ones are counted and logged, not fatal."""
    events = []
    options = notice_options(config)
    for path in paths:
        try:
            events.append(read_notice_file(path, **options))
        except MmcrossError as exc:
            summary.notice_errors[type(exc).__name__] += 1
            log.warning("notice %s skipped: %s: %s", path, type(exc).__name__, exc)
    events.sort(key=lambda e: e.arrival_mjd_tai)
    return events


def replay(engine: Engine, notices: Iterable[str | Path | Event],
           alerts: Iterable[str | Path] | AlertReader, *, chunk: int = 20_000,
           progress_every: float = 5.0) -> ReplaySummary:
    """Run notices and alerts through ``engine`` in time order; returns the summary.

    Args:
        engine: the engine (its sinks get the reports).
        notices: notice files or folders, or already parsed events.
        alerts: alert files or folders, or an :class:`~mmcross.brokers.alert_reader.
            AlertReader` already reading them (``mmcross replay`` starts one before it loads
            the engine); a reader is closed here.
        chunk: alerts per batch when ``alerts`` are paths.
        progress_every: seconds between progress lines in the log.

    Raises:
        FileNotFoundError: a notice or alert path does not exist.
    """
    summary = ReplaySummary()
    # reading the alerts starts first: it overlaps parsing the notices
    reader = alerts if isinstance(alerts, AlertReader) else AlertReader(alerts, chunk=chunk)
    started = min(time.perf_counter(), reader.started)
    try:
        return _replay(engine, notices, reader, summary, started, progress_every)
    finally:
        reader.close()


def _replay(engine: Engine, notices: Iterable[str | Path | Event], reader: AlertReader,
            summary: ReplaySummary, started: float, progress_every: float) -> ReplaySummary:
    notices = list(notices)
    parsed = [n for n in notices if isinstance(n, Event)]
    files = expand_paths([n for n in notices if not isinstance(n, Event)], NOTICE_SUFFIXES)
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or directory: {missing[0]}")
    pending = deque(sorted(parsed + read_notices(files, summary, engine.config),
                           key=lambda e: e.arrival_mjd_tai))
    log.info("replay: %d notices parsed, %d refused", len(pending),
             sum(summary.notice_errors.values()))

    def apply(event: Event) -> None:
        outcome = engine.on_notice(event)
        reports = outcome.reports
        summary.coincidences += sum(not c.retracted for c in outcome.coincidences)
        summary.coincidences_revoked += sum(c.retracted for c in outcome.coincidences)
        summary.notices += 1
        revoked = int(np.count_nonzero(reports.column("retracted")))
        summary.matches += len(reports) - revoked
        summary.revoked += revoked

    last_report = started
    for batch in reader:
        start = 0
        while pending and pending[0].arrival_mjd_tai <= batch.mjd_tai[-1]:
            cut = int(np.searchsorted(batch.mjd_tai, pending[0].arrival_mjd_tai,
                                      side="right"))
            if cut > start:
                summary.matches += len(engine.on_alerts(batch.take(np.arange(start, cut))))
                start = cut
            apply(pending.popleft())
        if start < len(batch):
            summary.matches += len(engine.on_alerts(
                batch.take(np.arange(start, len(batch)))))
        summary.alerts += len(batch)
        now = time.perf_counter()
        if now - last_report >= progress_every:
            last_report = now
            log.info("replay: %d alerts (%.0f/s), %d matches, %d live events",
                     summary.alerts, summary.alerts / (now - started), summary.matches,
                     len(engine.index))
    summary.alert_errors = reader.errors
    while pending:
        apply(pending.popleft())
    summary.seconds = time.perf_counter() - started
    return summary


class StoredCoincidences:
    """Coincidence sink saving the records in the store (``mmcross coincidences``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write_coincidences(self, records: Sequence[Coincidence]) -> None:
        self.store.save_coincidences(records)

    def close(self) -> None:
        """The engine closes the store."""


def coincidence_sinks(out: Path, store: Store | None = None) -> list:
    """The replay's coincidence outputs: ``out/coincidences.jsonl`` (one record per new,
    recomputed or revoked coincidence), ``out/voevents/coincidences/*.xml`` and, with a
    store, its ``coincidences`` table."""
    sinks: list = [CoincidenceJsonLines(out / "coincidences.jsonl"),
                   CoincidenceVOEventDirectory(out / "voevents" / "coincidences")]
    return sinks + ([StoredCoincidences(store)] if store is not None else [])

"""``mmcross listen`` without Kafka: SQLite plus a file spool, exactly once.

Notice and alert files dropped in ``<spool>/in`` are processed once each (moved to ``done/``
or, with the reason, ``failed/``); reports go to ``<spool>/out`` as JSON Lines and VOEvent
files, partner detection files in ``<spool>/in/detections/<partner>/`` are matched too.

Each input file is one transaction of the spool journal (:class:`~mmcross.brokers.spool.
SpoolJournal`): its report lines, VOEvent files, dead-letter lines, partner matches, store
writes (staged by a :class:`~mmcross.app.staged_store.StagedStore`) and its own move out of
``in/`` are committed by one journal entry, then applied. Events pushed over VTP are one
transaction per loop pass. A crash at any point neither loses nor repeats an output file or
JSON line: start-up finishes committed entries and drops uncommitted staging, and the engine is
restored from the store, which holds exactly the committed writes. A committed entry that
cannot be applied as written is set aside in ``journal/quarantine/`` and start-up goes on; an
operating-system or store error while applying one stops it (see :mod:`mmcross.brokers.spool`).

An entry of ``in/`` that is not a regular file (FIFO, socket, device) is refused without being
opened and moved to ``failed/`` with its reason; when it cannot be moved it is reported once
and left alone until the next start. Symbolic links are refused too, never followed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmcross.app.engine import Engine
from mmcross.app.metrics import Metrics, MetricsServer, RateMeter
from mmcross.app.service_state import (
    EngineLoop,
    ServiceStats,
    declare_metrics,
    newest_alert_mjd,
    prune_history,
)
from mmcross.app.staged_store import StagedStore, apply_writes, decode_writes, encode_writes
from mmcross.app.transports import Transports
from mmcross.brokers.alert_files import iter_alert_batches
from mmcross.brokers.sinks import JournaledLines, JournaledVOEvents
from mmcross.brokers.spool import (
    NOT_REGULAR,
    PARTNER_MATCHES,
    SYMLINK,
    FileSpool,
    NotARegularFileError,
    OutputTransaction,
    Recovery,
    SpoolFile,
    SpoolJournal,
    detections_partner,
    read_regular,
)
from mmcross.listeners import parse_notice
from mmcross.listeners.partner_detections import parse_detections
from mmcross.listeners.partners import SubmissionRefusedError
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import BadNoticeError, MmcrossError, NotAnEventError

if TYPE_CHECKING:
    from mmcross.catalogs import Store


log = logging.getLogger(__name__)

#: Largest notice file read, bytes (an LVK notice with its base64 sky map: a few MiB).
MAX_NOTICE_BYTES = 64 << 20


@dataclass
class SpoolSettings:
    """``[spool]``: the spool directory (in/, done/, failed/, out/) and its timing (s)."""

    directory: str = "mmcross-spool"
    settle: float = 0.5
    poll_interval: float = 1.0
    chunk: int = 20_000

    @classmethod
    def from_config(cls, config: Config) -> SpoolSettings:
        sp = config.get("spool", {}) or {}
        return cls(**{name: type(getattr(cls, name))(sp[name]) for name in (
            "directory", "settle", "poll_interval", "chunk") if name in sp})


class EmbeddedService(EngineLoop):
    """``mmcross listen`` without Kafka: a file spool in, JSON Lines and VOEvent files out.

    Notice files and alert files (wire streams, wire-format messages, Avro containers) dropped
    into ``<spool>/in`` are handled once each, oldest first, then moved to ``<spool>/done``
    (refused files -- also links, FIFOs, sockets, devices -- to ``<spool>/failed`` with the
    reason). Reports go to
    ``<spool>/out/matches.jsonl`` and ``<spool>/out/voevents/``; refused alert packets to
    ``<spool>/out/dead-letters.jsonl``. Every file is one journal transaction (module doc).

    Args:
        config: merged configuration (``[spool]``, ``[service]``, ``[metrics]``).
        store: the store.
        spool_dir: overrides ``[spool] directory``.
        metrics_port: overrides ``[metrics] port`` (-1 off, 0 any free port).
    """

    reports_delivered_on_write = True  # counted when staged; visible once committed

    def __init__(self, config: Config, store: Store, *, spool_dir: str | None = None,
                 metrics_port: int | None = None) -> None:
        self.config = config
        self.store = store
        self.spool_settings = SpoolSettings.from_config(config)
        if spool_dir:
            self.spool_settings.directory = str(spool_dir)
        m = config.get("metrics", {}) or {}
        self.metrics_port = int(m.get("port", -1)) if metrics_port is None else metrics_port
        self.metrics_host = str(m.get("host", "127.0.0.1"))
        self.prune_interval = float((config.get("service", {}) or {}).get(
            "prune_interval", 3600.0))
        self.metrics = declare_metrics(Metrics())
        self.metrics_server: MetricsServer | None = None
        self.stats = ServiceStats()
        self.engine: Engine | None = None
        self.staged: StagedStore | None = None
        self.spool: FileSpool | None = None
        self.journal: SpoolJournal | None = None
        self.recovery: Recovery | None = None  # what start-up did with the journal
        self._txn = OutputTransaction()
        self._stop = threading.Event()
        self._rate = RateMeter(10.0)
        self._newest: float | None = None
        self._last_prune = time.monotonic()
        self._dead_path: Path | None = None
        self.partner_out: JournaledLines | None = None
        self.transports = Transports(config)

    def start(self) -> None:
        """Finish or drop the transactions a crash left, restore the engine, start inputs."""
        sp = self.spool_settings
        self.metrics.set("start_unixtime", time.time())
        if self.metrics_port >= 0 and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, self.metrics_port,
                                                self.metrics_host)
        self.spool = FileSpool(sp.directory, settle=sp.settle)
        self.journal = SpoolJournal(self.spool.directory / "journal")
        self.recovery = self.journal.recover(self._apply_store_payload,
                                             check_store=decode_writes)
        if self.recovery.quarantined:
            log.warning("%d committed spool transaction(s) could not be applied and were set "
                        "aside in %s", len(self.recovery.quarantined),
                        self.journal.directory / "quarantine")
        waiting = self.journal.quarantined()
        self.metrics.set("spool_quarantined", len(waiting))
        if len(waiting) > len(self.recovery.quarantined):
            log.warning("%d spool transaction(s) set aside earlier still wait in %s",
                        len(waiting) - len(self.recovery.quarantined),
                        self.journal.directory / "quarantine")
        out = self.spool.out
        self._dead_path = out / "dead-letters.jsonl"
        if self.transports.streams is not None and self.partner_out is None:
            self.partner_out = JournaledLines(out / PARTNER_MATCHES, self._current,
                                              to_line=lambda m: m.to_json())
        sinks = [JournaledLines(out / "matches.jsonl", self._current),
                 JournaledVOEvents(out / "voevents", self._current)]
        self.staged = StagedStore(self.store)
        self.engine = Engine(self.config, store=self.staged, sinks=sinks)
        self._newest = newest_alert_mjd(self.store)
        prune_history(self.store, self.config, self._newest)
        self.engine.restore()
        self.transports.start(self.engine)
        log.info("embedded mode (no Kafka configured): watching %s, reports to %s; "
                 "%d live events", self.spool.inbox, self.spool.out, len(self.engine.index))

    def _current(self) -> OutputTransaction:
        return self._txn

    def _apply_store_payload(self, payload: bytes | None) -> None:
        if payload:
            apply_writes(self.store, decode_writes(payload))

    def _commit(self, moves: list[tuple[Path, Path]]) -> None:
        """Commit the open output transaction with the staged store writes and ``moves``
        (journal entry), then apply it."""
        assert self.journal is not None and self.staged is not None
        txn = self._txn
        txn.moves.extend(moves)
        writes = self.staged.take()
        if not txn and not writes:
            return
        entry = self.journal.commit(txn, encode_writes(writes) if writes else b"")
        self._txn = OutputTransaction()
        self.stats.commits += 1
        self.metrics.inc("commits_total")
        self.journal.apply(entry, lambda _payload: apply_writes(self.store, writes))

    def _finish(self, item: SpoolFile, reason: str | None = None) -> None:
        """Commit what ``item`` caused together with its move to done/ (failed/ with
        ``<name>.reason.txt`` when ``reason`` is given)."""
        assert self.spool is not None
        target = self.spool.destination(item, failed=reason is not None)
        if reason is not None:
            self._txn.put_file(_reason_path(target),
                               (reason + "\n").encode("utf-8", "backslashreplace"))
        self._commit([(item.path, target)])
        self.spool.forget(item)

    def _not_regular(self, item: SpoolFile) -> None:
        """Refuse an entry of ``in/`` that is not a regular file (a FIFO, socket or device):
        never opened; moved to failed/ at once (no content to stage), then its reason
        committed. When it cannot be moved, reported once and left alone until restart."""
        assert self.spool is not None
        err = NotARegularFileError(item.path, item.mode)
        self.metrics.inc("dead_letters_total", error=type(err).__name__)
        target = self.spool.destination(item, failed=True)
        try:
            self.spool.set_aside(item, target)
        except OSError as exc:
            log.error("spool input refused: %s; it cannot be moved to %s (%s): left in place "
                      "and ignored until restart", err, target, exc)
            return
        log.warning("spool input refused: %s (moved to %s)", err, target)
        self._txn.put_file(_reason_path(target), f"refused: {err}\n".encode(
            "utf-8", "backslashreplace"))
        self._commit([])

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current file (signal-handler safe)."""
        self._stop.set()
        self.transports.inbox.wake.set()

    def run(self) -> ServiceStats:
        wake = self.transports.inbox.wake
        try:
            self.start()
            while not self._stop.is_set():
                wake.clear()  # a put after this wakes the wait below at once
                if self.step() == 0:
                    wake.wait(self.spool_settings.poll_interval)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self.transports.stop_inputs()
        if self.engine is not None and self.transports.poll(self._apply_event,
                                                            self._apply_detections):
            self._commit([])
        self.transports.inbox.close()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.store.close()
        self.partner_out = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        log.info("stopped: %d notices (%d refused), %d alerts, %d reports",
                 self.stats.notices, self.stats.notices_refused, self.stats.alerts,
                 self.stats.reports)

    def step(self) -> int:
        """Apply the events pushed over VTP (one transaction), then handle every settled
        file of the spool (one transaction each); returns how many inputs were handled."""
        assert self.spool is not None
        n = self.transports.poll(self._apply_event, self._apply_detections)
        if n:
            self._commit([])
        for item in self.spool.ready():
            if self._stop.is_set():
                break
            if item.kind == SYMLINK:
                log.warning("spool input %s is a symbolic link: refused", item.path)
                self._finish(item, "refused: a symbolic link (spool inputs must be regular "
                                   "files, links are never followed)")
            elif item.kind == NOT_REGULAR:
                self._not_regular(item)
            elif item.kind == "notice":
                self._notice_file(item)
            elif item.kind == "detections":
                self._detections_file(item)
            else:
                self._alert_file(item)
            n += 1
        self.metrics.set("alerts_per_second", self._rate.rate(time.monotonic()))
        if self.engine is not None:
            self.metrics.set("live_events", len(self.engine.index))
        self.metrics.set("consumer_lag", self.spool.pending())
        if self.prune_interval > 0 and time.monotonic() - self._last_prune >= self.prune_interval:
            self._last_prune = time.monotonic()
            prune_history(self.store, self.config, self._newest)
        return n

    def _notice_file(self, item: SpoolFile) -> None:
        assert self.engine is not None
        try:
            if item.size > MAX_NOTICE_BYTES:
                raise BadNoticeError(f"{item.path}: {item.size} bytes, more than a notice "
                                     f"file may hold ({MAX_NOTICE_BYTES})")
            event = parse_notice(read_regular(item.path), source=str(item.path),
                                 **notice_options(self.config))
        except NotAnEventError as exc:
            self.stats.notices_refused += 1
            self.metrics.inc("notices_total", outcome="not_an_event")
            log.info("notice file %s is not an event: %s", item.path, exc)
            self._finish(item)
            return
        except (MmcrossError, OSError) as exc:
            self.stats.notices_refused += 1
            self.metrics.inc("notices_total", outcome="refused")
            self.metrics.inc("dead_letters_total", error=type(exc).__name__)
            log.warning("notice file %s refused: %s", item.path, exc)
            self._finish(item, f"{type(exc).__name__}: {exc}")
            return
        self._apply_event(event)
        self._finish(item)

    def _alert_file(self, item: SpoolFile) -> None:
        assert self.engine is not None and self._dead_path is not None
        errors: list[Exception] = []
        n = 0
        for batch in iter_alert_batches([item.path], chunk=self.spool_settings.chunk,
                                        on_error=errors.append):
            if len(batch) > 1:
                order = np.argsort(batch.mjd_tai, kind="stable")
                if np.any(np.diff(order) != 1):
                    batch = batch.take(order)
            self._count_reports(self.engine.on_alerts(batch))
            self._report_partner_matches(self.transports.match_alerts(batch))
            n += len(batch)
            newest = float(batch.mjd_tai.max())
            self._newest = newest if self._newest is None else max(self._newest, newest)
            self.metrics.inc("alerts_total", len(batch))
            self.metrics.set("last_alert_mjd_tai", self._newest)
            self.metrics.set("last_alert_unixtime", time.time())
            self._rate.add(len(batch), time.monotonic())
        self.stats.alerts += n
        if errors:
            self._txn.append(self._dead_path, "".join(
                json.dumps({"file": str(item.path.name), "error": type(exc).__name__,
                            "reason": str(exc)}) + "\n" for exc in errors))
            for exc in errors:
                self.metrics.inc("dead_letters_total", error=type(exc).__name__)
        if n == 0 and errors:
            log.warning("alert file %s refused: %s", item.path, errors[0])
            self._finish(item, "; ".join(str(e) for e in errors[:10]))
            return
        log.info("alert file %s: %d alerts (%d refused)", item.path.name, n, len(errors))
        self._finish(item)

    def _detections_file(self, item: SpoolFile) -> None:
        """A partner's detections dropped in ``in/detections/<partner>/`` (operator input:
        no signature, no rate limit; the partner must exist and have a stream rule, and the
        file is within its ``max_bytes``)."""
        assert self.spool is not None
        partner = detections_partner(item, self.spool.inbox)
        try:
            p = self.transports.registry.partners.get(partner)
            if p is None:
                raise SubmissionRefusedError("unknown_partner",
                                             f"no [partners.{partner}] is configured")
            if not p.stream or self.transports.streams is None:
                raise SubmissionRefusedError("no_stream_rule",
                                             f"partner {partner!r} has no [partners.{partner}"
                                             ".stream] rule")
            if item.size > p.max_bytes:
                raise SubmissionRefusedError("oversized", f"{item.size} bytes exceed partner "
                                             f"{partner!r}'s max_bytes of {p.max_bytes}")
            detections = parse_detections(read_regular(item.path), partner,
                                          where=str(item.path))
        except (SubmissionRefusedError, NotARegularFileError, OSError) as exc:
            self.stats.detections_refused += 1
            self.metrics.inc("dead_letters_total", error=type(exc).__name__)
            log.warning("detections file %s refused: %s", item.path, exc)
            self._finish(item, f"{getattr(exc, 'reason', type(exc).__name__)}: {exc}")
            return
        self._apply_detections(partner, detections)
        self._finish(item)


def _reason_path(target: Path) -> Path:
    """Where the reason of a refused input moved to ``target`` goes: beside it, as
    ``<name>.reason.txt`` (a name too long for the suffix is cut)."""
    return target.with_name(target.name[:200] + ".reason.txt")

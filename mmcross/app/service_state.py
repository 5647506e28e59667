"""What both live services share: run counters, Prometheus metrics and alert-history pruning.

Times are MJD TAI; the history is pruned to the longest matching window (days) before the
newest stored alert.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mmcross.app.metrics import Metrics
from mmcross.matchers.partner_stream_matcher import PartnerMatch
from mmcross.model import crashpoints
from mmcross.model.config import Config
from mmcross.model.detections import Detections
from mmcross.model.event import Event
from mmcross.model.match_batch import MatchBatch

if TYPE_CHECKING:
    from mmcross.catalogs import Store

log = logging.getLogger(__name__)



@dataclass
class ServiceStats:
    """Counters of a running service (for the progress log lines)."""

    notices: int = 0
    notices_refused: int = 0
    detections: int = 0
    detections_refused: int = 0
    partner_matches: int = 0
    alerts: int = 0
    reports: int = 0
    aborts: int = 0
    dead_letters: int = 0
    commits: int = 0
    transport_errors: int = 0
    started: float = field(default_factory=time.monotonic)


def newest_alert_mjd(store: Store) -> float | None:
    """Time of the newest alert in the store's history, MJD TAI (None when empty)."""
    return store.alert_history_stats()[1]


def prune_history(store: Store, config: Config, newest_mjd_tai: float | None) -> int:
    """Delete stored alerts older than the longest matching window before the newest alert.

    The reference is the newest alert seen (MJD TAI), not the wall clock, so that a replayed
    or simulated stream keeps its history. Returns the number of alerts deleted.
    """
    if newest_mjd_tai is None:
        return 0
    before = newest_mjd_tai - config.longest_window_days
    n = store.prune_alert_history(before)
    if n:
        log.info("pruned %d stored alerts older than MJD TAI %.5f (%.2f d before the newest)",
                 n, before, config.longest_window_days)
    return n


def declare_metrics(metrics: Metrics) -> Metrics:
    """Declare the service's Prometheus metrics (names without the ``mmcross_`` prefix)."""
    for name, text in (
            ("alerts_total", "Alerts read and decoded."),
            ("matches_total", "New matches reported."),
            ("revocations_total", "Match revocations reported."),
            ("reports_delivered_total", "Match reports committed to the output."),
            ("dead_letters_total", "Refused input messages, by error class."),
            ("notices_total", "GCN notices read, by outcome."),
            ("transport_errors_total", "Kafka transport errors seen."),
            ("commits_total", "Transactions committed (outputs with their input offsets)."),
            ("transaction_aborts_total", "Transactions aborted (their input read again)."),
            ("partner_detections_total", "Partner stream detections accepted."),
            ("partner_matches_total", "Partner detection / Rubin alert matches reported.")):
        metrics.counter(name, text)
    for name, text in (
            ("alerts_per_second", "Alerts read per second over the last 10 s."),
            ("consumer_lag", "Alert messages behind the end of the assigned partitions "
                             "(-1 unknown)."),
            ("live_events", "Events in the index (matchable)."),
            ("last_alert_mjd_tai", "Time of the newest alert read, MJD TAI."),
            ("last_alert_unixtime", "Wall-clock time the last alert was read, s since 1970."),
            ("start_unixtime", "Wall-clock time the service started, s since 1970."),
            ("spool_quarantined", "Spool journal entries set aside in journal/quarantine/ "
                                  "(embedded mode), counted at start-up; each waits for an "
                                  "operator.")):
        metrics.gauge(name, text)
    return metrics


# -- VOEvent transport and partner submissions (both modes) -------------------------------


class EngineLoop:
    """What the Kafka and the embedded service do alike with notices, detections and reports.

    Subclasses provide ``engine``, ``metrics``, ``stats``, ``transports`` and ``partner_out``
    (where partner stream matches go: an object with ``write(matches)``, or ``None``).
    """

    #: True when reports count as delivered once written (spool), False when the service counts
    #: them at its transaction's commit (Kafka).
    reports_delivered_on_write = False

    def _apply_event(self, event: Event) -> None:
        """Apply one parsed notice (Kafka, spool file, GCN VTP or a partner), loop thread."""
        assert self.engine is not None
        outcome = self.engine.on_notice(event)
        crashpoints.hit("notice_apply")
        reports = outcome.reports
        self.metrics.inc("notices_total", outcome=str(outcome.change))
        self.stats.notices += 1
        self._count_reports(reports)
        log.info("notice %s: %s revision %d %s -> %d reports", event.source, event.event_id,
                 outcome.event.revision, outcome.change, len(reports))

    def _apply_detections(self, partner: str, detections: Detections) -> None:
        """Match accepted partner detections against the alert history (loop thread)."""
        assert self.engine is not None
        self.stats.detections += len(detections)
        self.metrics.inc("partner_detections_total", len(detections))
        self._report_partner_matches(
            self.transports.match_detections(self.engine, partner, detections))

    def _report_partner_matches(self, matches: list[PartnerMatch]) -> None:
        if not matches:
            return
        assert self.partner_out is not None
        self.partner_out.write(matches)
        self.stats.partner_matches += len(matches)
        self.metrics.inc("partner_matches_total", len(matches))
        log.info("%d partner stream matches to %s", len(matches),
                 getattr(self.partner_out, "topic", None) or getattr(self.partner_out, "path", ""))

    def _count_reports(self, reports: MatchBatch) -> None:
        self.stats.reports += len(reports)
        revoked = int(np.count_nonzero(reports.column("retracted")))
        self.metrics.inc("matches_total", len(reports) - revoked)
        self.metrics.inc("revocations_total", revoked)
        if self.reports_delivered_on_write:
            self.metrics.inc("reports_delivered_total", len(reports))


"""What both live services share: run counters, Prometheus metrics and alert-history pruning.

Times are MJD TAI; the history is pruned to the longest matching window (days) before the
newest stored alert.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmcross.config import Config
from mmcross.metrics import Metrics

if TYPE_CHECKING:
    from catalogs import Store

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
    redelivered: int = 0
    dead_letters: int = 0
    commits: int = 0
    transport_errors: int = 0
    started: float = field(default_factory=time.monotonic)


def newest_alert_mjd(store: Store) -> float | None:
    """Time of the newest alert in the store's history, MJD TAI (None when empty)."""
    from sqlalchemy import func, select

    from catalogs.models import AlertHistoryRow

    with store.engine.connect() as conn:
        value = conn.execute(select(func.max(AlertHistoryRow.__table__.c.mjd_tai))).scalar()
    return None if value is None else float(value)


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
            ("reports_delivered_total", "Match reports acknowledged by the output."),
            ("dead_letters_total", "Refused input messages, by error class."),
            ("notices_total", "GCN notices read, by outcome."),
            ("transport_errors_total", "Kafka transport errors seen."),
            ("commits_total", "Input offset commits."),
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
            ("start_unixtime", "Wall-clock time the service started, s since 1970.")):
        metrics.gauge(name, text)
    return metrics


# -- VOEvent transport and partner submissions (both modes) -------------------------------

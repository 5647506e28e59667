"""Recent-alert history for retro-matching events announced after their counterparts.

Alerts are kept as columnar chunks (positions, times, ids and AB magnitudes; no packets), pruned to
the longest matching window and a maximum count.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from mmcross.model.alert import AlertBatch


class AlertHistory:
    """A bounded, time-ordered store of recent alerts (MJD TAI).

    Args:
        horizon_days: alerts older than the newest alert time minus this are dropped.
        max_alerts: the oldest chunks are dropped beyond this many alerts.
    """

    def __init__(self, horizon_days: float, max_alerts: int) -> None:
        self.horizon_days = float(horizon_days)
        self.max_alerts = int(max_alerts)
        self._chunks: deque[AlertBatch] = deque()
        self._count = 0
        self.newest_mjd_tai = float("-inf")

    def __len__(self) -> int:
        return self._count

    def add(self, batch: AlertBatch) -> None:
        """Keep ``batch`` (packets and sources dropped) and prune old alerts."""
        if len(batch) == 0:
            return
        compact = AlertBatch(batch.alert_id, batch.object_id, batch.ra, batch.dec,
                             batch.mjd_tai, is_new=batch.is_new, mag=batch.mag)
        self._chunks.append(compact)
        self._count += len(compact)
        self.newest_mjd_tai = max(self.newest_mjd_tai, float(np.max(batch.mjd_tai)))
        self._prune()

    def _prune(self) -> None:
        oldest_kept = self.newest_mjd_tai - self.horizon_days
        while self._chunks and (
            self._count > self.max_alerts
            or float(np.max(self._chunks[0].mjd_tai)) < oldest_kept
        ):
            self._count -= len(self._chunks.popleft())
        if self._chunks and float(np.min(self._chunks[0].mjd_tai)) < oldest_kept:
            head = self._chunks.popleft()
            kept = head.take(head.mjd_tai >= oldest_kept)
            self._count -= len(head) - len(kept)
            if len(kept):
                self._chunks.appendleft(kept)

    def between(self, start_mjd_tai: float, end_mjd_tai: float) -> AlertBatch:
        """The kept alerts with start <= mjd_tai <= end (MJD TAI)."""
        parts = []
        for chunk in self._chunks:
            mask = (chunk.mjd_tai >= start_mjd_tai) & (chunk.mjd_tai <= end_mjd_tai)
            if mask.any():
                parts.append(chunk.take(mask))
        return AlertBatch.concatenate(parts)

    def all(self) -> AlertBatch:
        return AlertBatch.concatenate(list(self._chunks))

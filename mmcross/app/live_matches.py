"""The engine's live (not revoked) match reports, per event, as columns.

Each alert batch adds its new reports (:meth:`LiveMatches.add`: one grouping by event, no
per-match object); a notice that revises or retracts an event reads and removes that
event's reports (:meth:`LiveMatches.of`, :meth:`LiveMatches.pop`), which consolidates the
event's chunks once. An alert reported twice for an event (no store to de-duplicate)
keeps its latest report, as a mapping alert_id -> report would.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mmcross.model.match_batch import MatchBatch


class LiveMatches:
    """Live reports per event id (see module docstring)."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[MatchBatch]] = {}

    def add(self, batch: MatchBatch) -> None:
        """Remember the reports of ``batch`` (any events)."""
        if len(batch) == 0:
            return
        ids = batch.event_id
        first = ids[0]
        if (ids == first).all():
            self._chunks.setdefault(first, []).append(batch)
            return
        events, inverse = np.unique(ids, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(events) + 1))
        for k, event_id in enumerate(events.tolist()):
            rows = order[bounds[k]:bounds[k + 1]]
            self._chunks.setdefault(event_id, []).append(batch.take(np.sort(rows)))

    def of(self, event_id: str) -> MatchBatch:
        """The live reports of ``event_id`` in the order they were added (one per alert)."""
        chunks = self._chunks.get(event_id)
        if not chunks:
            return MatchBatch.empty()
        if len(chunks) > 1 or _has_repeats(chunks[0].alert_id):
            live = MatchBatch.concatenate(chunks)
            # the latest report of each alert, kept in order of first arrival
            alert_ids = live.alert_id
            reverse = alert_ids[::-1]
            _, last_from_end = np.unique(reverse, return_index=True)
            latest = len(alert_ids) - 1 - last_from_end
            _, first = np.unique(alert_ids, return_index=True)
            order = np.argsort(first, kind="stable")
            live = live.take(latest[order]) if len(latest) != len(alert_ids) else live
            chunks[:] = [live]
        return chunks[0]

    def pop(self, event_id: str, alert_ids: Iterable[int] | None = None) -> MatchBatch:
        """Remove and return the live reports of ``event_id`` (only of ``alert_ids`` if
        given), in the order they were added."""
        live = self.of(event_id)
        if alert_ids is None:
            self._chunks.pop(event_id, None)
            return live
        chosen = np.isin(live.alert_id, np.fromiter(alert_ids, np.int64))
        if chosen.any():
            self._chunks[event_id] = [live.take(~chosen)]
        return live.take(chosen)

    def forget(self, event_id: str) -> None:
        """Drop the reports of ``event_id`` (expired or replaced)."""
        self._chunks.pop(event_id, None)

    def count(self) -> int:
        """Number of live reports (all events)."""
        return sum(len(c) for chunks in self._chunks.values() for c in chunks)


def _has_repeats(values: np.ndarray) -> bool:
    return len(values) > 1 and len(np.unique(values)) != len(values)

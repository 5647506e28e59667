"""The engine: notices update the index, alerts are matched, reports go to sinks.

It wires the layers together without knowing any transport: callers (the replay driver, the
live service) hand it parsed :class:`~mmcross.model.event.Event` objects and decoded
:class:`~mmcross.model.alert.AlertBatch` objects, and it hands :class:`~mmcross.model.match.Match`
records to the sinks (JSON Lines, VOEvents, Kafka...) and to the store.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from mmcross.matchers import Matcher
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.event import Event
from mmcross.model.history import AlertHistory
from mmcross.model.index import Change, SkyIndex
from mmcross.model.match import Match

if TYPE_CHECKING:
    from mmcross.model.store import Store

log = logging.getLogger(__name__)


class ReportSink(Protocol):
    """Where match reports go. ``write`` gets new matches and revocations (retracted=True)."""

    def write(self, matches: Sequence[Match]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NoticeOutcome:
    """What applying one notice did.

    Attributes:
        change: what the index did with it (added, updated, retracted, stale, duplicate).
        event: the event as indexed (revision assigned), or as given when stale/duplicate.
        reports: the match reports it caused: retro-matches and revocations, in emit order.
    """

    change: Change
    event: Event
    reports: list[Match] = field(default_factory=list)


class Engine:
    """Index + matcher + alert history + sinks, with optional persistence.

    Args:
        config: merged configuration.
        store: optional :class:`~mmcross.model.store.Store`; when given, events, matches and the
        alert
            history survive a restart (call :meth:`restore`).
        sinks: report sinks; each gets every new match once and every revocation once.
    """

    def __init__(self, config: Config, store: Store | None = None,
                 sinks: Sequence[ReportSink] = ()) -> None:
        self.config = config
        self.store = store
        self.sinks = list(sinks)
        self.index = SkyIndex(config, store.latest_revision if store is not None else None)
        self.matcher = Matcher(config)
        self.history = AlertHistory(config.longest_window_days,
                                    int(config.get("history.max_alerts", 20_000_000)))
        self.stats: Counter[str] = Counter()
        # Live (not revoked) matches per event: event_id -> alert_id -> Match.
        self._matches: dict[str, dict[int, Match]] = {}

    # -- state -------------------------------------------------------------------------

    def restore(self) -> None:
        """Reload live events, their live matches and the alert history from the store."""
        if self.store is None:
            return
        events = self.store.load_live_events()
        self.index.restore(events)
        for event in events:
            self.matcher.upsert(event)
            self._matches[event.event_id] = {
                m.alert_id: m for m in self.store.matches(event.event_id, include_retracted=False)
                if m.event_revision == event.revision
            }
        self.history.add(self.store.load_alert_history(0.0))
        log.info("restored %d live events, %d matches, %d alerts of history", len(events),
                 sum(len(m) for m in self._matches.values()), len(self.history))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.store is not None:
            self.store.close()

    # -- notices -----------------------------------------------------------------------

    def on_notice(self, event: Event) -> NoticeOutcome:
        """Apply one parsed notice; returns what the index did and the reports it caused."""
        change, indexed = self.index.apply(event)
        self.stats[f"notices_{change}"] += 1
        if change in (Change.STALE, Change.DUPLICATE):
            return NoticeOutcome(change, indexed)
        if self.store is not None:
            self.store.save_event(indexed)
        if change is Change.RETRACTED:
            self.matcher.remove(indexed.event_id)
            return NoticeOutcome(change, indexed, self._emit(self._revoke(indexed.event_id, None)))
        self.matcher.upsert(indexed)
        if indexed.localization is None:
            log.warning("%s revision %d has no sky map in its notice: not matchable",
                        indexed.event_id, indexed.revision)
            return NoticeOutcome(change, indexed,
                                 self._emit(self._revoke(indexed.event_id, None)))
        window = self.config.time_window(indexed.kind)
        t0 = indexed.trigger_mjd_tai
        past = self.history.between(t0 + window.before, t0 + window.after)
        found = self.matcher.match(past, only=[indexed.event_id]) if len(past) else []
        self.stats["retro_matches"] += len(found)
        still = {m.alert_id for m in found}
        revoked = self._revoke(indexed.event_id,
                               [a for a in self._matches.get(indexed.event_id, {})
                                if a not in still])
        self._matches[indexed.event_id] = {}
        return NoticeOutcome(change, indexed, self._emit(revoked + self._record(found)))

    # -- alerts ------------------------------------------------------------------------

    def on_alerts(self, batch: AlertBatch) -> list[Match]:
        """Match a batch of alerts against every live event; returns the new matches.

        Events whose window closed before the batch's oldest alert expire first (the
        matcher applies each event's window to every alert, so a batch spanning an
        event's window end is still matched correctly).
        """
        if len(batch) == 0:
            return []
        self.stats["alerts"] += len(batch)
        for event in self.index.expire(float(batch.mjd_tai.min())):
            self.matcher.remove(event.event_id)
            self._matches.pop(event.event_id, None)
            self.stats["events_expired"] += 1
        self.matcher.observe(batch)
        found = self.matcher.match(batch)
        self.history.add(batch)
        if self.store is not None:
            self.store.save_alert_history(batch)
        return self._emit(self._record(found))

    # -- helpers -----------------------------------------------------------------------

    def _record(self, matches: list[Match]) -> list[Match]:
        """Remember live matches; with a store, drop those already stored (re-delivery)."""
        if self.store is not None and matches:
            matches = self.store.save_matches(matches)
        for m in matches:
            self._matches.setdefault(m.event_id, {})[m.alert_id] = m
        self.stats["matches"] += len(matches)
        return matches

    def _revoke(self, event_id: str, alert_ids: list[int] | None) -> list[Match]:
        live = self._matches.get(event_id, {})
        ids = list(live) if alert_ids is None else alert_ids
        revoked = [replace(live.pop(a), retracted=True) for a in ids if a in live]
        if self.store is not None and ids:
            self.store.revoke_matches(event_id, ids)
        self.stats["revoked"] += len(revoked)
        return revoked

    def _emit(self, reports: list[Match]) -> list[Match]:
        if reports:
            for sink in self.sinks:
                sink.write(reports)
        return reports

"""The engine: notices update the index, alerts are matched, reports go to sinks.

It wires the layers together without knowing any transport: callers (the replay driver, the
live service) hand it parsed :class:`~mmcross.model.event.Event` objects and decoded
:class:`~mmcross.model.alert.AlertBatch` objects, and it hands match reports as columns
(:class:`~mmcross.model.match_batch.MatchBatch`, one per alert batch or notice) to the sinks (JSON
Lines, VOEvents, Kafka...) and to the store.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mmcross.app.live_matches import LiveMatches
from mmcross.matchers import Matcher
from mmcross.matchers.coincidence import CoincidenceSearch, Found
from mmcross.model.alert import AlertBatch
from mmcross.model.coincidence import Coincidence
from mmcross.model.config import Config
from mmcross.model.event import Event, EventKind, NoticeAction
from mmcross.model.history import AlertHistory
from mmcross.model.index import Change, SkyIndex
from mmcross.model.match_batch import NO_REVISION, MatchBatch

if TYPE_CHECKING:
    from mmcross.model.localization import Localization
    from mmcross.model.store import Store

log = logging.getLogger(__name__)


class ReportSink(Protocol):
    """Where match reports go. ``write`` gets new matches and revocations (retracted=True) as
    one :class:`MatchBatch` per alert batch or notice (a sequence of :class:`Match`; sinks
    that can should read its columns or :meth:`MatchBatch.records`)."""

    def write(self, matches: MatchBatch) -> None: ...

    def close(self) -> None: ...


class CoincidenceSink(Protocol):
    """Where coincidence records go: new, recomputed and revoked (retracted=True) ones."""

    def write_coincidences(self, records: Sequence[Coincidence]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NoticeOutcome:
    """What applying one notice did.

    Attributes:
        change: what the index did with it (added, updated, retracted, stale, duplicate).
        event: the event as indexed (revision assigned), or as given when stale/duplicate.
        reports: the match reports it caused: retro-matches and revocations, in emit order
            (including those of the combined localizations of its coincidences).
        coincidences: coincidence records it caused (new, recomputed, revoked).
    """

    change: Change
    event: Event
    reports: MatchBatch = field(default_factory=MatchBatch.empty)
    coincidences: list[Coincidence] = field(default_factory=list)


class Engine:
    """Index + matcher + alert history + sinks, with optional persistence.

    Args:
        config: merged configuration.
        store: optional :class:`~mmcross.model.store.Store`; when given, events, matches and the
        alert
            history survive a restart (call :meth:`restore`).
        sinks: report sinks; each gets every new match once and every revocation once.
        coincidence_sinks: coincidence sinks; each gets every coincidence record (new,
            recomputed on a parent's revision, revoked on a parent's retraction) once.
    """

    def __init__(self, config: Config, store: Store | None = None,
                 sinks: Sequence[ReportSink] = (),
                 coincidence_sinks: Sequence[CoincidenceSink] = ()) -> None:
        self.config = config
        self.store = store
        self.sinks = list(sinks)
        self.coincidence_sinks = list(coincidence_sinks)
        self.coincidences = (CoincidenceSearch(config)
                             if config.get("coincidence.enabled", True) else None)
        # Live (not revoked) coincidences by coincidence id.
        self._coincidences: dict[str, Coincidence] = {}
        self.index = SkyIndex(config, store.latest_revision if store is not None else None)
        self.matcher = Matcher(config)
        self.history = AlertHistory(config.longest_window_days,
                                    int(config.get("history.max_alerts", 20_000_000)))
        self.stats: Counter[str] = Counter()
        # Live (not revoked) match reports per event, as columns.
        self._matches = LiveMatches()

    # -- state -------------------------------------------------------------------------

    def restore(self) -> None:
        """Reload live events, their live matches and the alert history from the store."""
        if self.store is None:
            return
        events = self.store.load_live_events()
        self.index.restore(events)
        for event in events:
            self.matcher.upsert(event)
            if self.coincidences is not None:
                self.coincidences.observe(event)
            if event.kind is EventKind.COINCIDENCE and "coincidence" in event.significance:
                saved = dict(event.significance["coincidence"])
                if saved.get("far_threshold") is None:  # -inf (never published) as JSON null
                    saved["far_threshold"] = float("-inf")
                record = Coincidence.from_record(saved)
                self._coincidences[record.coincidence_id] = record
            self._matches.forget(event.event_id)
            self._matches.add(MatchBatch.from_matches(
                m for m in self.store.matches(event.event_id, include_retracted=False)
                if m.event_revision == event.revision))
        self.history.add(self.store.load_alert_history(0.0))
        log.info("restored %d live events, %d matches, %d alerts of history", len(events),
                 self._matches.count(), len(self.history))

    def close(self) -> None:
        for sink in [*self.sinks, *self.coincidence_sinks]:
            sink.close()
        if self.store is not None:
            self.store.close()

    # -- notices -----------------------------------------------------------------------

    def on_notice(self, event: Event) -> NoticeOutcome:
        """Apply one parsed notice; returns what the index did, the reports and the
        coincidences it caused.

        After the index, a GW event is searched against the live external triggers and an
        external trigger against the live GW events (``[coincidence]``); each coincidence's
        combined localization is indexed as an event of kind ``coincidence`` (matched,
        retro-matched and revoked like any event). A parent's new revision recomputes its
        coincidences; a parent's retraction revokes them and their combined events' matches.
        """
        outcome = self._apply_notice(event)
        if (self.coincidences is None or outcome.event.kind is EventKind.COINCIDENCE
                or outcome.change in (Change.STALE, Change.DUPLICATE)):
            return outcome
        records, reports = self._coincide(outcome.change, outcome.event)
        return replace(outcome, reports=outcome.reports + reports, coincidences=records)

    @property
    def live_coincidences(self) -> list[Coincidence]:
        """The coincidences not revoked (latest revision of each)."""
        return list(self._coincidences.values())

    def _apply_notice(self, event: Event) -> NoticeOutcome:
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
        found = self.matcher.retro(self.history, indexed.event_id)
        self.stats["retro_matches"] += len(found)
        earlier = self._matches.of(indexed.event_id)
        gone = earlier.alert_id[~np.isin(earlier.alert_id, found.alert_id)]
        revoked = self._revoke(indexed.event_id, gone.tolist())
        # alerts still inside the new revision: their reports supersede the earlier ones
        found = _superseding(found, self._matches.of(indexed.event_id))
        self._matches.forget(indexed.event_id)
        return NoticeOutcome(change, indexed, self._emit(revoked + self._record(found)))

    # -- alerts ------------------------------------------------------------------------

    def on_alerts(self, batch: AlertBatch) -> MatchBatch:
        """Match a batch of alerts against every live event; returns the new matches.

        Events whose window closed before the batch's oldest alert expire first (the
        matcher applies each event's window to every alert, so a batch spanning an
        event's window end is still matched correctly).
        """
        if len(batch) == 0:
            return MatchBatch.empty()
        self.stats["alerts"] += len(batch)
        for event in self.index.expire(float(batch.mjd_tai.min())):
            self.matcher.remove(event.event_id)
            if self.coincidences is not None:
                self.coincidences.forget(event.event_id)
            self._matches.forget(event.event_id)
            self.stats["events_expired"] += 1
        self.matcher.observe(batch)
        found = self.matcher.match(batch)
        self.history.add(batch)
        if self.store is not None:
            self.store.save_alert_history(batch)
        return self._emit(self._record(found))

    # -- coincidences -------------------------------------------------------------------

    def _coincide(self, change: Change, event: Event) -> tuple[list[Coincidence], MatchBatch]:
        """Search/recompute/revoke the coincidences of ``event``; emit their records."""
        assert self.coincidences is not None
        records: list[Coincidence] = []
        reports = MatchBatch.empty()
        mine = [c for c in self._coincidences.values() if event.event_id in c.parents]
        if change is Change.RETRACTED:
            self.coincidences.forget(event.event_id)
            found: list[Found] = []
        elif self.coincidences.observe(event):
            found = self.coincidences.search(event)
        else:
            return [], MatchBatch.empty()
        still = {f.record.coincidence_id for f in found}
        for gone in mine:
            if gone.coincidence_id not in still:
                record, revoked = self._revoke_coincidence(gone, event)
                records.append(record)
                reports += revoked
        for f in found:
            previous = self._coincidences.get(f.record.coincidence_id)
            combined = self.coincidences.combined(f)
            record = replace(f.record, revision=previous.revision + 1 if previous else 1,
                             combined_area90=combined.area(0.9) if combined else None)
            self._coincidences[record.coincidence_id] = record
            records.append(record)
            reports += self._index_combined(record, combined, event)
            log.info("coincidence %s revision %d: dt %.3f s, temporal FAR %s Hz, space-time "
                     "FAR %s Hz%s", record.coincidence_id, record.revision,
                     record.time_difference, record.temporal_far, record.spacetime_far,
                     " (publishable)" if record.publishable else "")
        self.stats["coincidences"] += len(found)
        if records:
            for sink in self.coincidence_sinks:
                sink.write_coincidences(records)
        return records, reports

    def _index_combined(self, record: Coincidence, combined: Localization | None,
                        cause: Event) -> MatchBatch:
        """Index (or replace, or retract when it vanished) the combined localization."""
        if combined is None:
            if record.coincidence_id in self.index:
                return self._apply_notice(self._combined_retraction(record, cause)).reports
            return MatchBatch.empty()
        parents = [e for e in (self.index.get(p) for p in record.parents) if e is not None]
        newest = max(parents, key=lambda e: e.arrival_mjd_tai)
        gw = self.index.get(record.gw_event_id)
        assert gw is not None
        event = Event(
            event_id=record.coincidence_id, kind=EventKind.COINCIDENCE,
            instrument=f"{gw.instrument}+{record.ext_instrument}",
            trigger_time=gw.trigger_time, localization=combined,
            notice_type="COINCIDENCE",
            notice_time=newest.notice_time if newest.notice_time is not None
            else newest.trigger_time,
            significance={"parents": list(record.parents),
                          "coincidence": {k: _finite(v) if isinstance(v, float) else v
                                          for k, v in record.to_record().items()}},
            source=f"coincidence of {record.gw_event_id} r{record.gw_revision} and "
                   f"{record.ext_event_id} r{record.ext_revision}")
        return self._apply_notice(event).reports

    def _revoke_coincidence(self, record: Coincidence,
                            cause: Event) -> tuple[Coincidence, MatchBatch]:
        del self._coincidences[record.coincidence_id]
        revoked = replace(record, retracted=True)
        self.stats["coincidences_revoked"] += 1
        log.info("coincidence %s revoked (%s %s)", record.coincidence_id, cause.event_id,
                 "retracted" if cause.retracted else "moved out of the window")
        reports = MatchBatch.empty()
        if record.coincidence_id in self.index:
            reports = self._apply_notice(self._combined_retraction(record, cause)).reports
        return revoked, reports

    def _combined_retraction(self, record: Coincidence, cause: Event) -> Event:
        live = self.index.get(record.coincidence_id)
        assert live is not None
        when = max((live, cause), key=lambda e: e.arrival_mjd_tai)
        return Event(event_id=record.coincidence_id, kind=EventKind.COINCIDENCE,
                     instrument=live.instrument, trigger_time=live.trigger_time,
                     localization=None, action=NoticeAction.RETRACT,
                     notice_type="COINCIDENCE_RETRACTION",
                     notice_time=when.notice_time if when.notice_time is not None
                     else when.trigger_time,
                     significance={"parents": list(record.parents)},
                     source=f"revoked by {cause.event_id} revision {cause.revision}")

    # -- helpers -----------------------------------------------------------------------

    def _record(self, matches: MatchBatch) -> MatchBatch:
        """Remember live matches; with a store, drop those already stored (re-delivery)."""
        if self.store is not None and len(matches):
            matches = MatchBatch.from_matches(self.store.save_matches(matches))
        self._matches.add(matches)
        self.stats["matches"] += len(matches)
        return matches

    def _revoke(self, event_id: str, alert_ids: list[int] | None) -> MatchBatch:
        popped = self._matches.pop(event_id, alert_ids)
        ids = popped.alert_id.tolist() if alert_ids is None else alert_ids
        if self.store is not None and ids:
            self.store.revoke_matches(event_id, ids)
        self.stats["revoked"] += len(popped)
        return popped.retracted()

    def _emit(self, reports: MatchBatch) -> MatchBatch:
        if reports:
            for sink in self.sinks:
                sink.write(reports)
        return reports


def _finite(x: float | None) -> float | None:
    """``x`` unless it is infinite (JSON has no infinity): ``None`` then."""
    return x if x is None or abs(x) != float("inf") else None


def _superseding(found: MatchBatch, earlier: MatchBatch) -> MatchBatch:
    """``found`` with ``supersedes_revision`` set on the reports of alerts that ``earlier``
    (the event's live reports of its previous revision) reported too."""
    if len(found) == 0 or len(earlier) == 0:
        return found
    by_alert = np.argsort(earlier.alert_id, kind="stable")
    sorted_ids = earlier.alert_id[by_alert]
    pos = np.minimum(np.searchsorted(sorted_ids, found.alert_id), len(sorted_ids) - 1)
    hit = sorted_ids[pos] == found.alert_id
    revision = np.where(hit, earlier.columns["event_revision"][by_alert[pos]], NO_REVISION)
    return found.with_columns(supersedes_revision=revision)

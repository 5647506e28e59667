"""The in-memory index of live events: add, update, retract, expire.

The index is the single place that decides what a notice does to the live set:

* a first notice **adds** an event (revision 1);
* a later notice about the same ``event_id`` **updates** it (revision + 1) and replaces its
  localization, unless it was issued before the live revision (**stale**) or is byte-identical
  to it (**duplicate**);
* a retraction **retracts**: the event leaves the live set and later non-retraction notices
  issued before the retraction are stale;
* events **expire** once the stream time passes trigger + the kind's time window.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from mmcross.model.config import Config
from mmcross.model.event import Event, NoticeAction

log = logging.getLogger(__name__)


class Change(enum.StrEnum):
    """What applying a notice did to the index."""

    ADDED = "added"
    UPDATED = "updated"
    RETRACTED = "retracted"
    STALE = "stale"
    DUPLICATE = "duplicate"


@dataclass
class _Known:
    revision: int
    notice_mjd_tai: float
    retracted: bool


class SkyIndex:
    """Live events keyed by ``event_id``, with revision bookkeeping.

    Args:
        config: supplies each kind's time window (days) for expiry.
        latest_revision: optional lookup of the last stored revision of an event the index
            has not seen in this process (e.g. ``Store.latest_revision``), so revision numbers
            keep increasing across restarts.
    """

    def __init__(self, config: Config,
                 latest_revision: Callable[[str], int] | None = None) -> None:
        self.config = config
        self._live: dict[str, Event] = {}
        self._known: dict[str, _Known] = {}
        self._latest_revision = latest_revision
        self.version = 0  # bumped on every change of the live set

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._live

    def get(self, event_id: str) -> Event | None:
        return self._live.get(event_id)

    def live(self) -> list[Event]:
        """The live events (latest revision of each, not retracted, not expired)."""
        return list(self._live.values())

    def restore(self, events: Iterable[Event]) -> None:
        """Put stored live events back (their revision numbers kept)."""
        for event in events:
            self._live[event.event_id] = event
            self._known[event.event_id] = _Known(event.revision, event.arrival_mjd_tai, False)
        self.version += 1

    def apply(self, event: Event) -> tuple[Change, Event]:
        """Apply one parsed notice; returns the change and the event as indexed.

        The returned event carries its assigned ``revision``.
        """
        known = self._known.get(event.event_id)
        if known is None and self._latest_revision is not None:
            stored = self._latest_revision(event.event_id)
            if stored:
                known = _Known(stored, float("-inf"), False)
        arrival = event.arrival_mjd_tai
        if known is not None and arrival < known.notice_mjd_tai:
            log.info("stale notice for %s (issued before revision %d): ignored",
                     event.event_id, known.revision)
            return Change.STALE, event
        live = self._live.get(event.event_id)
        if live is not None and event.raw and event.raw == live.raw:
            return Change.DUPLICATE, live
        if known is not None and known.retracted and event.action is not NoticeAction.RETRACT:
            # A retracted event may come back only with a notice issued after the retraction.
            log.info("notice for retracted %s issued after the retraction: re-adding",
                     event.event_id)
        revision = (known.revision if known else 0) + 1
        indexed = replace(event, revision=revision)
        self._known[event.event_id] = _Known(
            revision, arrival, event.action is NoticeAction.RETRACT)
        self.version += 1
        if event.action is NoticeAction.RETRACT:
            self._live.pop(event.event_id, None)
            log.info("retracted %s (revision %d)", event.event_id, revision)
            return Change.RETRACTED, indexed
        self._live[event.event_id] = indexed
        change = Change.UPDATED if live is not None else Change.ADDED
        log.info("%s %s revision %d (%s %s)", change, event.event_id, revision,
                 event.instrument, event.notice_type)
        return change, indexed

    def expire(self, now_mjd_tai: float) -> list[Event]:
        """Remove and return events whose window ended before ``now_mjd_tai`` (MJD TAI)."""
        gone = [e for e in self._live.values()
                if now_mjd_tai > e.trigger_mjd_tai + self.config.time_window(e.kind).after]
        for event in gone:
            del self._live[event.event_id]
            log.info("expired %s (trigger %s)", event.event_id, event.trigger_time.isot)
        if gone:
            self.version += 1
        return gone

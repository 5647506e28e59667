"""What the floors above need of a persistent store, as a :class:`typing.Protocol`.

:class:`mmcross.catalogs.Store` (SQLAlchemy: SQLite or PostgreSQL) implements it; the engine,
the live services are written against this protocol, so none of them
imports the catalogs floor or probes a store for optional methods. Times are MJD TAI (days).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from mmcross.model.alert import AlertBatch
from mmcross.model.event import Event
from mmcross.model.match import Match


class Store(Protocol):
    """Events with their revisions and sky maps, matches, pending writes and the alert history."""

    def latest_revision(self, event_id: str) -> int:
        """The highest stored revision of ``event_id``, 0 if it was never stored."""
        ...

    def save_event(self, event: Event) -> int:
        """Store one event revision; returns the revision number stored."""
        ...

    def load_live_events(self, now_mjd_tai: float | None = None) -> list[Event]:
        """The latest revision of every event that is not retracted, sky maps restored."""
        ...

    def save_matches(self, matches: Sequence[Match]) -> Sequence[Match]:
        """Store matches (idempotent per event revision and alert); returns the new ones."""
        ...

    def revoke_matches(self, event_id: str,
                       alert_ids: Iterable[int] | None = None) -> list[Match]:
        """Mark live matches of ``event_id`` retracted; returns them with ``retracted=True``."""
        ...

    def matches(self, event_id: str | None = None,
                include_retracted: bool = True) -> list[Match]:
        """Stored matches (of one event if ``event_id``), in the order they were stored."""
        ...

    def save_pending(self, owner: str, txn: str, payload: bytes) -> None:
        """Keep ``owner``'s store writes of transaction ``txn`` (replacing older ones)."""
        ...

    def pending(self, owner: str) -> tuple[str, bytes] | None:
        """``(txn, payload)`` of ``owner``'s pending transaction, or None."""
        ...

    def drop_pending(self, owner: str) -> None:
        """Forget ``owner``'s pending transaction."""
        ...

    def save_alert_history(self, batch: AlertBatch) -> None:
        """Keep the alerts of ``batch`` for retro-matching after a restart."""
        ...

    def load_alert_history(self, since_mjd_tai: float,
                           until_mjd_tai: float | None = None) -> AlertBatch:
        """Stored alerts with ``since <= mjd_tai`` (and ``<= until``), time-ordered."""
        ...

    def alert_history_stats(self) -> tuple[int, float | None]:
        """(number of stored alerts, newest alert time MJD TAI or None when empty)."""
        ...

    def prune_alert_history(self, before_mjd_tai: float) -> int:
        """Delete stored alerts older than ``before_mjd_tai``; returns how many."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...

"""Read-only queries over the catalog, for the web page and JSON API (``mmcross serve``).

:class:`Catalog` opens the store through a read-only connection (:func:`read_only_url`:
SQLite ``mode=ro``, PostgreSQL ``default_transaction_read_only``) and answers with plain
dataclasses and :class:`~mmcross.model.match.Match` records; it never writes. Sky maps are
read through :meth:`mmcross.catalogs.store.Store.load_event`, so this module does not depend
on how the store keeps them.

Units: times are ISO 8601 UTC strings and MJD TAI (days); areas deg^2; distances Mpc;
``time_offset`` days (alert minus trigger); FAR Hz (converted from per year when a notice
gives it so).

An event's **status**, as of the store's stream time (the newest stored alert, MJD TAI; the
wall clock when no alert is stored), is the first that applies of:

* ``retracted``: a retraction notice was received;
* ``expired``: the stream time is past trigger + the kind's ``[match.time_window]`` end;
* ``updated``: live, with more than one revision;
* ``live``.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from astropy.time import Time
from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from mmcross.catalogs.models import AlertHistoryRow, EventRevisionRow, EventRow, MatchRow
from mmcross.catalogs.store import Store, _match_from_row, mask_url
from mmcross.model.config import Config
from mmcross.model.errors import StoreError
from mmcross.model.match import Match

log = logging.getLogger(__name__)


class EventStatus(enum.StrEnum):
    """Where an event stands (see the module docstring)."""

    LIVE = "live"
    UPDATED = "updated"
    RETRACTED = "retracted"
    EXPIRED = "expired"


class MatchSort(enum.StrEnum):
    """Orderings of matches: stored order, or one of the match quantities."""

    STORED = "stored"
    CREDIBLE_LEVEL = "credible_level"
    P_CHANCE = "p_chance"
    TIME_OFFSET = "time_offset"
    DISTANCE = "distance"


@dataclass(frozen=True)
class SkySummary:
    """What an event's sky map says: 90% credible area (deg^2) and, for GW maps with a
    distance layer, the all-sky luminosity distance mean and standard deviation (Mpc)."""

    area90: float
    distance_mean: float | None
    distance_std: float | None


@dataclass(frozen=True)
class EventSummary:
    """One event as listed: its latest revision, counts and status.

    ``trigger_time`` is ISO UTC, ``trigger_mjd_tai`` MJD TAI; ``far`` the false-alarm rate
    (Hz) when the notice gave one; ``significance`` the notice's significance fields;
    ``matches``/``matches_revoked``: alerts whose current record (see
    :meth:`Catalog.matches`) is live / revoked; ``sky`` is ``None`` when no revision carried
    a sky map.
    """

    event_id: str
    kind: str
    instrument: str
    trigger_time: str
    trigger_mjd_tai: float
    revision: int
    revisions: int
    status: EventStatus
    far: float | None
    significance: dict[str, Any]
    first_notice_time: str
    last_notice_time: str
    matches: int
    matches_revoked: int
    sky: SkySummary | None


@dataclass(frozen=True)
class RevisionSummary:
    """One accepted notice of an event (positions deg ICRS, radius deg, times ISO UTC)."""

    revision: int
    action: str
    notice_type: str
    notice_time: str | None
    trigger_time: str
    serial: int | None
    role: str
    notice_format: str
    significance: dict[str, Any]
    ra: float | None
    dec: float | None
    error_radius: float | None
    containment: float | None


@dataclass(frozen=True)
class EventFilter:
    """Event list filters; ``since``/``until`` bound the trigger time (MJD TAI, inclusive)."""

    kind: str | None = None
    instrument: str | None = None
    status: EventStatus | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


@dataclass(frozen=True)
class MatchFilter:
    """Match filters; ``since``/``until`` bound the alert time (MJD TAI, inclusive)."""

    event_id: str | None = None
    kind: str | None = None
    instrument: str | None = None
    max_credible_level: float | None = None
    max_p_chance: float | None = None
    since: float | None = None
    until: float | None = None
    include_revoked: bool = False
    limit: int = 1000
    sort: MatchSort = MatchSort.STORED
    descending: bool = True


def read_only_url(url: str) -> str:
    """``url`` made read-only at the connection: SQLite as a ``mode=ro`` file URI,
    PostgreSQL with ``default_transaction_read_only=on``.

    Raises:
        StoreError: the URL cannot be parsed, is an in-memory SQLite database, or is of
            another database kind.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"cannot read the store URL {mask_url(url)}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            raise StoreError(f"an in-memory SQLite store ({mask_url(url)}) cannot be opened by "
                             "another connection")
        if not database.startswith("file:"):
            database = "file:" + quote(str(Path(database).resolve()))
        query = {**parsed.query, "mode": "ro", "uri": "true"}
        return parsed.set(database=database, query=query).render_as_string(hide_password=False)
    if backend == "postgresql":
        options = str(parsed.query.get("options", ""))
        options = f"{options} -c default_transaction_read_only=on".strip()
        return parsed.update_query_dict({"options": options}).render_as_string(
            hide_password=False)
    raise StoreError(f"read-only access to {backend} stores is not supported "
                     f"({mask_url(url)}): use SQLite or PostgreSQL")


def _now_mjd_tai() -> float:
    return float(Time.now().tai.mjd)


SECONDS_PER_YEAR = 365.25 * 86400.0
"""Julian year, seconds (FARs given per year)."""


def far_hz(significance: Mapping[str, Any]) -> float | None:
    """The notice's false-alarm rate in Hz: ``far`` (Hz, GW notices) or ``far_per_year``
    (IceCube's ``FAR``, per year); ``None`` when it gave none."""
    for key, scale in (("far", 1.0), ("far_per_year", 1.0 / SECONDS_PER_YEAR)):
        try:
            far = float(significance[key]) * scale
        except (KeyError, TypeError, ValueError):
            continue
        if far == far and far >= 0:  # NaN and negative: no FAR
            return far
    return None


def _current_matches(event_id: str | None) -> Select[tuple[MatchRow]]:
    """The current record of each (event, alert): the match row of the latest revision that
    matched the alert (of one event if ``event_id``)."""
    latest = select(MatchRow.event_id, MatchRow.alert_id,
                    func.max(MatchRow.event_revision).label("revision"))
    if event_id is not None:
        latest = latest.where(MatchRow.event_id == event_id)
    latest_q = latest.group_by(MatchRow.event_id, MatchRow.alert_id).subquery()
    return select(MatchRow).join(latest_q, and_(MatchRow.event_id == latest_q.c.event_id,
                                                MatchRow.alert_id == latest_q.c.alert_id,
                                                MatchRow.event_revision == latest_q.c.revision))


class Catalog:
    """Read-only view of a store for the web page and JSON API.

    Args:
        url: the store's SQLAlchemy URL (opened read-only, see :func:`read_only_url`).
        config: gives the matching windows that decide when an event expires.

    Raises:
        StoreError: the store cannot be opened (missing file or tables, unreachable server).
    """

    def __init__(self, url: str, config: Config) -> None:
        self.url = mask_url(url)
        self.config = config
        try:
            self.store = Store(read_only_url(url))
        except StoreError as exc:
            cause = str(exc.__cause__ or exc)
            hint = (" (the store lacks tables or columns of this mmcross: open it once for "
                    "writing, e.g. `mmcross events --db URL`)"
                    if "readonly" in cause or "read-only" in cause else "")
            raise StoreError(f"cannot open the store at {self.url} for reading: "
                             f"{cause}{hint}") from exc
        self._sky: dict[tuple[str, int], SkySummary | None] = {}
        self._sky_lock = threading.Lock()

    def close(self) -> None:
        """Release the connections."""
        self.store.close()

    def _read(self, what: str, stmt: Any) -> list[Any]:
        try:
            with self.store.engine.connect() as conn:
                return list(conn.execute(stmt).all())
        except SQLAlchemyError as exc:
            raise StoreError(f"{what} failed in the store at {self.url}: {exc}") from exc

    # -- time and status ---------------------------------------------------------------

    def stream_time(self) -> float:
        """The newest stored alert time (MJD TAI), else the wall clock (MJD TAI)."""
        (newest,), = self._read("reading the stream time",
                                select(func.max(AlertHistoryRow.mjd_tai)))
        return _now_mjd_tai() if newest is None else float(newest)

    def status(self, kind: str, trigger_mjd_tai: float, revision: int, retracted: bool,
               now_mjd_tai: float) -> EventStatus:
        """The status of an event (see the module docstring) at ``now_mjd_tai`` (MJD TAI)."""
        if retracted:
            return EventStatus.RETRACTED
        try:
            after = self.config.time_window(kind).after
        except (ValueError, KeyError):  # a kind this configuration does not know
            after = self.config.longest_window_days
        if now_mjd_tai > trigger_mjd_tai + after:
            return EventStatus.EXPIRED
        return EventStatus.UPDATED if revision > 1 else EventStatus.LIVE

    # -- events ------------------------------------------------------------------------

    def events(self, flt: EventFilter | None = None) -> list[EventSummary]:
        """Events matching ``flt``, newest trigger first, at most ``flt.limit``."""
        flt = flt or EventFilter()
        conditions: list[ColumnElement[bool]] = []
        if flt.kind is not None:
            conditions.append(EventRow.kind == flt.kind)
        if flt.instrument is not None:
            conditions.append(EventRow.instrument == flt.instrument)
        if flt.since is not None:
            conditions.append(EventRow.trigger_mjd_tai >= float(flt.since))
        if flt.until is not None:
            conditions.append(EventRow.trigger_mjd_tai <= float(flt.until))
        return self._summaries(conditions, flt.limit, flt.status)

    def event(self, event_id: str) -> EventSummary | None:
        """One event, or ``None`` when the store does not know it."""
        rows = self._summaries([EventRow.event_id == event_id], 1, None)
        return rows[0] if rows else None

    def _summaries(self, conditions: list[ColumnElement[bool]], limit: int,
                   status: EventStatus | None) -> list[EventSummary]:
        """Events meeting ``conditions`` and of ``status`` (any if ``None``), newest trigger
        first, at most ``limit``; sky summaries are read only for those returned."""
        rev = EventRevisionRow
        n_rev = (select(rev.event_id, func.count().label("n")).group_by(rev.event_id)
                 .subquery())
        current = _current_matches(None).subquery()
        live = (select(current.c.event_id, func.count().label("n"))
                .where(current.c.retracted.is_(False)).group_by(current.c.event_id).subquery())
        dead = (select(current.c.event_id, func.count().label("n"))
                .where(current.c.retracted.is_(True)).group_by(current.c.event_id).subquery())
        stmt = (select(EventRow.event_id, EventRow.kind, EventRow.instrument,
                       EventRow.trigger_time_utc, EventRow.trigger_mjd_tai,
                       EventRow.latest_revision, EventRow.retracted,
                       EventRow.first_notice_time_utc, EventRow.last_notice_time_utc,
                       rev.significance, n_rev.c.n, live.c.n, dead.c.n)
                .outerjoin(rev, and_(rev.event_id == EventRow.event_id,
                                     rev.revision == EventRow.latest_revision))
                .outerjoin(n_rev, n_rev.c.event_id == EventRow.event_id)
                .outerjoin(live, live.c.event_id == EventRow.event_id)
                .outerjoin(dead, dead.c.event_id == EventRow.event_id)
                .where(*conditions)
                .order_by(EventRow.trigger_mjd_tai.desc(), EventRow.event_id))
        if status is None:
            stmt = stmt.limit(limit)
        elif status is EventStatus.RETRACTED:
            stmt = stmt.where(EventRow.retracted.is_(True))
        else:
            stmt = stmt.where(EventRow.retracted.is_(False))
        now = self.stream_time()
        kept = []
        for row in self._read("listing events", stmt):
            state = self.status(row[1], float(row[4]), int(row[5]), bool(row[6]), now)
            if status is None or state is status:
                kept.append((row, state))
            if len(kept) == limit:
                break
        out = []
        for (event_id, kind, instrument, trigger, trigger_tai, revision, _retracted, first, last,
             significance, n_revisions, n_live, n_dead), state in kept:
            significance = dict(significance or {})
            out.append(EventSummary(
                event_id=event_id, kind=kind, instrument=instrument, trigger_time=trigger,
                trigger_mjd_tai=float(trigger_tai), revision=int(revision),
                revisions=int(n_revisions or 0), status=state, far=far_hz(significance),
                significance=significance, first_notice_time=first, last_notice_time=last,
                matches=int(n_live or 0), matches_revoked=int(n_dead or 0),
                sky=self.sky(event_id, int(revision))))
        return out

    def revisions(self, event_id: str) -> list[RevisionSummary]:
        """Every stored revision of ``event_id``, oldest first (empty when unknown)."""
        rev = EventRevisionRow
        stmt = (select(rev.revision, rev.action, rev.notice_type, rev.notice_time_utc,
                       rev.trigger_time_utc, rev.serial, rev.role, rev.notice_format,
                       rev.significance, rev.ra, rev.dec, rev.error_radius, rev.containment)
                .where(rev.event_id == event_id).order_by(rev.revision))
        return [RevisionSummary(
            revision=int(r[0]), action=r[1], notice_type=r[2], notice_time=r[3],
            trigger_time=r[4], serial=r[5], role=r[6], notice_format=r[7],
            significance=dict(r[8] or {}), ra=r[9], dec=r[10], error_radius=r[11],
            containment=r[12])
            for r in self._read(f"reading the revisions of {event_id}", stmt)]

    def sky(self, event_id: str, revision: int) -> SkySummary | None:
        """The sky summary of the latest revision of ``event_id`` that has a sky map, kept
        per (event, latest revision) once computed; ``None`` without any map. One summary is
        computed at a time (reading a large map takes seconds; never twice)."""
        key = (event_id, revision)
        if key in self._sky:
            return self._sky[key]
        with self._sky_lock:
            if key not in self._sky:
                self._sky[key] = self._sky_summary(event_id)
            return self._sky[key]

    def _sky_summary(self, event_id: str) -> SkySummary | None:
        try:
            event = self.store.load_event(event_id, with_localization=True)
        except StoreError as exc:  # an unreadable map: the event is listed without it
            log.warning("no sky summary for %s: %s", event_id, exc)
            return None
        if event is None or event.localization is None:
            return None
        loc = event.localization
        dist, std = loc.meta.get("DISTMEAN"), loc.meta.get("DISTSTD")
        numbers = isinstance(dist, int | float) and isinstance(std, int | float)
        return SkySummary(area90=float(loc.area(0.9)),
                          distance_mean=float(dist) if numbers else None,
                          distance_std=float(std) if numbers else None)

    # -- matches -----------------------------------------------------------------------

    def matches(self, flt: MatchFilter | None = None) -> list[Match]:
        """The current match record of each (event, alert): the one of the latest revision
        that matched the alert (revoked ones only with ``include_revoked``), filtered by
        ``flt``, ordered by ``flt.sort`` (distance: unknown last), at most ``flt.limit``."""
        flt = flt or MatchFilter()
        rev = EventRevisionRow
        alert_tai = rev.trigger_mjd_tai + MatchRow.time_offset
        stmt = _current_matches(flt.event_id).join(
            rev, and_(rev.event_id == MatchRow.event_id, rev.revision == MatchRow.event_revision))
        if flt.kind is not None:
            stmt = stmt.where(MatchRow.event_kind == flt.kind)
        if flt.instrument is not None:
            stmt = stmt.where(MatchRow.instrument == flt.instrument)
        if flt.max_credible_level is not None:
            stmt = stmt.where(MatchRow.credible_level <= float(flt.max_credible_level))
        if flt.max_p_chance is not None:
            stmt = stmt.where(MatchRow.p_chance <= float(flt.max_p_chance))
        if flt.since is not None:
            stmt = stmt.where(alert_tai >= float(flt.since))
        if flt.until is not None:
            stmt = stmt.where(alert_tai <= float(flt.until))
        if not flt.include_revoked:
            stmt = stmt.where(MatchRow.retracted.is_(False))
        column = {MatchSort.STORED: MatchRow.id,
                  MatchSort.CREDIBLE_LEVEL: MatchRow.credible_level,
                  MatchSort.P_CHANCE: MatchRow.p_chance,
                  MatchSort.TIME_OFFSET: MatchRow.time_offset,
                  MatchSort.DISTANCE: MatchRow.distance_mean}[flt.sort]
        order = column.desc() if flt.descending else column.asc()
        stmt = stmt.order_by(order.nulls_last(), MatchRow.id).limit(flt.limit)
        try:
            with Session(self.store.engine) as s:
                rows = s.scalars(stmt).all()
                return [_match_from_row(r) for r in rows]
        except SQLAlchemyError as exc:
            raise StoreError(f"reading matches failed in the store at {self.url}: {exc}") from exc

    def fingerprint(self, event_id: str) -> str:
        """A short text that changes whenever the event gets a revision or its matches
        change (new, revoked): for caches and for pages that poll."""
        (n, newest, revoked), = self._read(
            f"reading the match state of {event_id}",
            select(func.count(), func.max(MatchRow.id),
                   func.count().filter(MatchRow.retracted.is_(True)))
            .where(MatchRow.event_id == event_id))
        (revision,), = self._read(f"reading the revision of {event_id}",
                                  select(func.max(EventRevisionRow.revision))
                                  .where(EventRevisionRow.event_id == event_id))
        return f"r{revision or 0}-m{n}-{newest or 0}-x{revoked}"



"""The catalog store: events, their revisions, matches and alert history in a SQL database.

SQLite (a file, WAL journal, foreign keys on) by default; PostgreSQL for production
(``postgresql+psycopg2://user:password@host:port/db``). Every public method runs in one
transaction: it commits as a whole or not at all, so a crash never leaves half-written
state. Database failures are raised as :class:`mmcross.model.errors.StoreError` naming the
operation and the URL (password masked).

Times are stored twice: ISO 8601 UTC strings (exact, to rebuild astropy ``Time``) and
MJD TAI floats (days, for queries). See :mod:`mmcross.catalogs.models` for every column's unit.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import numpy as np
from astropy.time import Time
from sqlalchemy import Engine, create_engine, delete, event, func, insert, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mmcross.catalogs.models import (
    AlertHistoryRow,
    Base,
    CoincidenceRow,
    EventRevisionRow,
    EventRow,
    MatchRow,
    PendingWriteRow,
)
from mmcross.model import shapes
from mmcross.model.alert import AlertBatch
from mmcross.model.coincidence import Coincidence
from mmcross.model.errors import StoreError
from mmcross.model.event import Event, EventKind, NoticeAction
from mmcross.model.localization import Localization
from mmcross.model.match import Match
from mmcross.model.match_batch import MatchBatch
from mmcross.model.regions import region_from_dict

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///mmcross.sqlite"
_CHUNK = 500  # keys per IN (...) clause
_MATCH_FIELDS = tuple(f.name for f in fields(Match))


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also for unparseable URLs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any parse failure: fall back to a regex
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def iso_utc(t: Time) -> str:
    """ISO 8601 UTC string of a scalar astropy Time, to the nanosecond (no zone suffix)."""
    return str(Time(t.utc, precision=9).isot)


def time_from_iso(iso: str) -> Time:
    """Inverse of :func:`iso_utc`: an astropy Time in the UTC scale."""
    return Time(iso, format="isot", scale="utc")


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (numpy scalars unwrapped, non-finite floats as text)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSONB refuses bare NaN/Infinity
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _revision_row(event: Event, revision: int, localization: bytes | None) -> EventRevisionRow:
    """The ``event_revisions`` row of one event revision (kept separate for crash tests)."""
    notice_iso = None if event.notice_time is None else iso_utc(event.notice_time)
    notice_tai = None if event.notice_time is None else float(event.notice_time.tai.mjd)
    return EventRevisionRow(
        event_id=event.event_id, revision=revision, action=str(event.action),
        kind=str(event.kind), instrument=event.instrument,
        trigger_time_utc=iso_utc(event.trigger_time), trigger_mjd_tai=event.trigger_mjd_tai,
        notice_type=event.notice_type, notice_time_utc=notice_iso, notice_mjd_tai=notice_tai,
        arrival_mjd_tai=event.arrival_mjd_tai,
        serial=None if event.serial is None else int(event.serial), role=event.role,
        significance=_jsonable(event.significance or {}),
        ra=_opt_float(event.ra), dec=_opt_float(event.dec),
        error_radius=_opt_float(event.error_radius), containment=_opt_float(event.containment),
        raw=bytes(event.raw), notice_format=event.notice_format, source=event.source,
        ivorn=event.ivorn or None, localization=localization,
        region=(None if event.localization is None or event.localization.region is None
                else event.localization.region.to_dict()),
    )


#: Nullable columns added after the first stores were made: (table, column, SQL type per
#: dialect, what it is for). A store that predates one gets it on open, with a log line.
_LATER_COLUMNS = (
    (EventRevisionRow.__tablename__, "region", {"postgresql": "JSONB"}, "JSON",
     "analytic regions"),
    (EventRevisionRow.__tablename__, "ivorn", {}, "TEXT", "VOEvent identity"),
    (MatchRow.__tablename__, "notice_ivorn", {}, "TEXT", "VOEvent identity"),
    (MatchRow.__tablename__, "supersedes_revision", {}, "INTEGER", "VOEvent identity"),
)


def _add_later_columns(engine: Engine, url: str) -> None:
    """Add the nullable columns of :data:`_LATER_COLUMNS` to a store made before them (its
    rows keep working: old events keep their FITS sky maps, old matches cite no notice)."""
    inspector = inspect(engine)
    for table, column, types, default_type, why in _LATER_COLUMNS:
        if column in {c["name"] for c in inspector.get_columns(table)}:
            continue
        kind = types.get(engine.dialect.name, default_type)
        log.info("store %s predates %s: adding column %s.%s (%s)", url, why, table, column, kind)
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


def _match_record_values(record: dict[str, Any]) -> dict[str, Any]:
    """A report record (:meth:`MatchBatch.records`: plain Python values) as column values."""
    return {**record, "notice_ivorn": record["notice_ivorn"] or ""}


def _match_from_row(row: MatchRow) -> Match:
    values = {name: getattr(row, name) for name in _MATCH_FIELDS}
    values["notice_ivorn"] = values["notice_ivorn"] or ""  # NULL in rows of older stores
    return Match(**values)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _configure_sqlite(engine: Engine) -> None:
    """WAL journal, foreign keys, and real BEGIN so reads and writes share one transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


class Store:
    """Persistence of events, matches, deliveries and alert history.

    Args:
        url: SQLAlchemy URL, ``sqlite:///path.sqlite`` (default ``sqlite:///mmcross.sqlite``
            in the working directory) or ``postgresql+psycopg2://user:pw@host:port/db``.
            Tables are created when missing.

    Raises:
        StoreError: the URL is invalid, its driver is missing or the database unreachable.
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = mask_url(url)
        try:
            self.engine = create_engine(url, pool_pre_ping=True)
            if self.engine.dialect.name == "sqlite":
                _configure_sqlite(self.engine)
            Base.metadata.create_all(self.engine)
            _add_later_columns(self.engine, self.url)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open the store at {self.url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._dialect = self.engine.dialect.name
        log.info("store open at %s", self.url)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _transaction(self, what: str) -> Iterator[Session]:
        """One session in one transaction: commit on success, roll back on any exception."""
        session = self._sessions()
        try:
            with session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"{what} failed in the store at {self.url}: {exc}") from exc
        finally:
            session.close()

    def _insert(self, table: Any) -> Any:
        """An INSERT that skips rows violating a unique key (SQLite / PostgreSQL)."""
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        if self._dialect == "sqlite":
            return sqlite.insert(table)
        return None

    # -- events ------------------------------------------------------------------------

    def save_event(self, event: Event) -> int:
        """Store one event revision and update the event's summary row.

        The revision number is ``event.revision`` (assigned by the index); 0 means "the next
        one" (latest stored + 1). Saving an existing (event_id, revision) again replaces
        that revision's row. A retraction marks the event retracted for good.

        Returns:
            the revision number stored.
        """
        localization = (None if event.localization is None
                        or event.localization.region is not None
                        else bytes(event.localization.to_fits_bytes()))
        trigger_iso = iso_utc(event.trigger_time)
        arrival_tai = event.arrival_mjd_tai
        arrival_time = event.notice_time if event.notice_time is not None else event.trigger_time
        arrival_iso = iso_utc(arrival_time)
        with self._transaction(f"saving event {event.event_id}") as s:
            row = s.get(EventRow, event.event_id, with_for_update=True)
            latest = 0 if row is None else row.latest_revision
            revision = event.revision if event.revision > 0 else latest + 1
            if row is None:
                row = EventRow(
                    event_id=event.event_id, kind=str(event.kind), instrument=event.instrument,
                    trigger_time_utc=trigger_iso, trigger_mjd_tai=event.trigger_mjd_tai,
                    latest_revision=revision, retracted=event.retracted,
                    first_notice_time_utc=arrival_iso, first_notice_mjd_tai=arrival_tai,
                    last_notice_time_utc=arrival_iso, last_notice_mjd_tai=arrival_tai)
                s.add(row)
            else:
                if revision >= latest:
                    row.kind, row.instrument = str(event.kind), event.instrument
                    row.trigger_time_utc = trigger_iso
                    row.trigger_mjd_tai = event.trigger_mjd_tai
                    row.latest_revision = revision
                row.retracted = row.retracted or event.retracted
                if arrival_tai < row.first_notice_mjd_tai:
                    row.first_notice_time_utc, row.first_notice_mjd_tai = arrival_iso, arrival_tai
                if arrival_tai > row.last_notice_mjd_tai:
                    row.last_notice_time_utc, row.last_notice_mjd_tai = arrival_iso, arrival_tai
            s.flush()
            new = _revision_row(event, revision, localization)
            old = s.scalar(select(EventRevisionRow).where(
                EventRevisionRow.event_id == event.event_id,
                EventRevisionRow.revision == revision))
            if old is None:
                s.add(new)
            else:
                log.warning("replacing stored revision %d of %s", revision, event.event_id)
                for column in EventRevisionRow.__table__.columns:
                    if column.key not in ("id", "created_at"):
                        setattr(old, column.key, getattr(new, column.key))
        log.debug("saved %s revision %d (%s)", event.event_id, revision, event.action)
        return revision

    def latest_revision(self, event_id: str) -> int:
        """The highest stored revision of ``event_id``, 0 if it was never stored."""
        with self._transaction(f"reading the latest revision of {event_id}") as s:
            value = s.scalar(select(func.max(EventRevisionRow.revision))
                             .where(EventRevisionRow.event_id == event_id))
        return int(value or 0)

    def load_live_events(self, now_mjd_tai: float | None = None) -> list[Event]:
        """The latest revision of every event that is not retracted, sky maps restored.

        Args:
            now_mjd_tai: if given (MJD TAI), the state as known at that time: only revisions
                whose notice (else trigger) time is <= ``now_mjd_tai`` count, so an event
                first announced or retracted later is left out / still live. Expiry of the
                matching window is the index's job, not the store's.

        Returns:
            events ordered by the arrival time of their latest revision, ``revision`` kept.
        """
        rev = EventRevisionRow
        latest = select(rev.event_id, func.max(rev.revision).label("revision"))
        retractions = select(rev.event_id).where(rev.action == str(NoticeAction.RETRACT))
        if now_mjd_tai is not None:
            now_mjd_tai = float(now_mjd_tai)  # psycopg2 cannot bind numpy scalars
            latest = latest.where(rev.arrival_mjd_tai <= now_mjd_tai)
            retractions = retractions.where(rev.arrival_mjd_tai <= now_mjd_tai)
        latest_q = latest.group_by(rev.event_id).subquery()
        stmt = (select(rev)
                .join(latest_q, (rev.event_id == latest_q.c.event_id)
                      & (rev.revision == latest_q.c.revision))
                .where(rev.event_id.not_in(retractions))
                .order_by(rev.arrival_mjd_tai, rev.event_id))
        with self._transaction("loading live events") as s:
            rows = s.scalars(stmt).all()
        return [self._event_from_row(r) for r in rows]

    def load_event(self, event_id: str, *, with_localization: bool = False) -> Event | None:
        """The latest revision of ``event_id`` (retracted or not), or ``None`` if unknown.

        With ``with_localization``, the latest revision that carries a sky map instead (e.g.
        the revision before a retraction), or ``None`` if none does.
        """
        rev = EventRevisionRow
        stmt = select(rev).where(rev.event_id == event_id)
        if with_localization:
            stmt = stmt.where(rev.localization.is_not(None) | rev.region.is_not(None))
        stmt = stmt.order_by(rev.revision.desc()).limit(1)
        with self._transaction(f"loading event {event_id}") as s:
            row = s.scalars(stmt).first()
        return None if row is None else self._event_from_row(row)

    def _event_from_row(self, row: EventRevisionRow) -> Event:
        localization = None
        if row.region is not None:
            try:
                localization = shapes.region_localization(region_from_dict(row.region))
            except Exception as exc:
                raise StoreError(
                    f"stored region of {row.event_id} revision {row.revision} in {self.url} "
                    f"cannot be read: {exc}") from exc
        elif row.localization is not None:
            try:
                localization = Localization.from_fits(bytes(row.localization))
            except Exception as exc:
                raise StoreError(
                    f"stored sky map of {row.event_id} revision {row.revision} in {self.url} "
                    f"cannot be read: {exc}") from exc
        return Event(
            event_id=row.event_id, kind=EventKind(row.kind), instrument=row.instrument,
            trigger_time=time_from_iso(row.trigger_time_utc), localization=localization,
            revision=row.revision, serial=row.serial, action=NoticeAction(row.action),
            notice_type=row.notice_type,
            notice_time=None if row.notice_time_utc is None else time_from_iso(
                row.notice_time_utc),
            role=row.role, significance=dict(row.significance or {}),
            ra=row.ra, dec=row.dec, error_radius=row.error_radius, containment=row.containment,
            raw=bytes(row.raw), notice_format=row.notice_format, source=row.source,
            ivorn=row.ivorn or "",
        )

    def events(self, include_retracted: bool = True) -> list[dict[str, Any]]:
        """Summary rows for ``mmcross events``, ordered by trigger time.

        Keys: event_id, kind, instrument, trigger_time (ISO UTC), trigger_mjd_tai,
        revision (the latest), revisions (count), retracted, first_notice_time,
        last_notice_time (ISO UTC), matches (live), matches_retracted.
        """
        n_rev = (select(EventRevisionRow.event_id, func.count().label("n"))
                 .group_by(EventRevisionRow.event_id).subquery())
        live = (select(MatchRow.event_id, func.count().label("n"))
                .where(MatchRow.retracted.is_(False)).group_by(MatchRow.event_id).subquery())
        dead = (select(MatchRow.event_id, func.count().label("n"))
                .where(MatchRow.retracted.is_(True)).group_by(MatchRow.event_id).subquery())
        stmt = (select(EventRow, n_rev.c.n, live.c.n, dead.c.n)
                .outerjoin(n_rev, n_rev.c.event_id == EventRow.event_id)
                .outerjoin(live, live.c.event_id == EventRow.event_id)
                .outerjoin(dead, dead.c.event_id == EventRow.event_id)
                .order_by(EventRow.trigger_mjd_tai, EventRow.event_id))
        if not include_retracted:
            stmt = stmt.where(EventRow.retracted.is_(False))
        with self._transaction("listing events") as s:
            rows = s.execute(stmt).all()
        return [
            {"event_id": e.event_id, "kind": e.kind, "instrument": e.instrument,
             "trigger_time": e.trigger_time_utc, "trigger_mjd_tai": e.trigger_mjd_tai,
             "revision": e.latest_revision, "revisions": int(nr or 0),
             "retracted": bool(e.retracted), "first_notice_time": e.first_notice_time_utc,
             "last_notice_time": e.last_notice_time_utc, "matches": int(nl or 0),
             "matches_retracted": int(nd or 0)}
            for e, nr, nl, nd in rows
        ]

    # -- matches -----------------------------------------------------------------------

    def save_matches(self, matches: Sequence[Match]) -> MatchBatch:
        """Store matches (a :class:`MatchBatch` or a list of :class:`Match`), idempotent on
        (event_id, event_revision, alert_id).

        Returns:
            the matches that were not stored before (input order, duplicates dropped).
        """
        batch = MatchBatch.from_matches(matches)
        keys = list(zip(batch.event_id.tolist(), batch.columns["event_revision"].tolist(),
                        batch.alert_id.tolist(), strict=True))
        unique: dict[tuple[str, int, int], int] = {}
        for row, key in enumerate(keys):
            unique.setdefault(key, row)
        if not unique:
            return batch
        records = batch.records()
        values = [_match_record_values(records[row]) for row in unique.values()]
        table = MatchRow.__table__
        stmt = self._insert(table)
        with self._transaction(f"saving {len(values)} matches") as s:
            if stmt is not None:
                stmt = stmt.on_conflict_do_nothing(
                    index_elements=["event_id", "event_revision", "alert_id"]).returning(
                    table.c.event_id, table.c.event_revision, table.c.alert_id)
                new_keys = {tuple(r) for r in s.execute(stmt, values)}
            else:  # other dialects: look first, then insert (unique key still guards)
                existing = set(self._existing_match_keys(s, list(unique)))
                new_keys = set(unique) - existing
                rows = [v for k, v in zip(unique, values, strict=True) if k in new_keys]
                if rows:
                    s.execute(insert(table), rows)
        new = np.array([row for key, row in unique.items() if key in new_keys], np.int64)
        log.debug("saved %d new matches of %d", len(new), len(batch))
        return batch.take(new)

    @staticmethod
    def _existing_match_keys(s: Session,
                             keys: list[tuple[str, int, int]]) -> Iterable[tuple[str, int, int]]:
        for event_id in {k[0] for k in keys}:
            alert_ids = [k[2] for k in keys if k[0] == event_id]
            for chunk in _chunks(alert_ids):
                yield from (tuple(r) for r in s.execute(
                    select(MatchRow.event_id, MatchRow.event_revision, MatchRow.alert_id)
                    .where(MatchRow.event_id == event_id, MatchRow.alert_id.in_(chunk))))

    def revoke_matches(self, event_id: str,
                       alert_ids: Iterable[int] | None = None) -> list[Match]:
        """Mark the live matches of ``event_id`` retracted (only ``alert_ids`` if given).

        Returns:
            the revoked matches, with ``retracted=True``, ordered as they were stored.
        """
        base = (select(MatchRow)
                .where(MatchRow.event_id == event_id, MatchRow.retracted.is_(False))
                .order_by(MatchRow.id).with_for_update())
        with self._transaction(f"revoking matches of {event_id}") as s:
            if alert_ids is None:
                rows = list(s.scalars(base))
            else:
                ids = sorted({int(a) for a in alert_ids})
                rows = [r for chunk in _chunks(ids)
                        for r in s.scalars(base.where(MatchRow.alert_id.in_(chunk)))]
                rows.sort(key=lambda r: r.id)
            now = func.now()
            for row in rows:
                row.retracted = True
                row.retracted_at = now
            s.flush()
            revoked = [_match_from_row(r) for r in rows]
        log.debug("revoked %d matches of %s", len(revoked), event_id)
        return revoked

    def matches(self, event_id: str | None = None,
                include_retracted: bool = True) -> list[Match]:
        """Stored matches (of one event if ``event_id``), in the order they were stored."""
        stmt = select(MatchRow).order_by(MatchRow.id)
        if event_id is not None:
            stmt = stmt.where(MatchRow.event_id == event_id)
        if not include_retracted:
            stmt = stmt.where(MatchRow.retracted.is_(False))
        with self._transaction("reading matches") as s:
            return [_match_from_row(r) for r in s.scalars(stmt)]

    # -- pending writes of a live transaction ------------------------------------------

    def save_pending(self, owner: str, txn: str, payload: bytes) -> None:
        """Keep ``owner``'s writes of transaction ``txn`` until :meth:`drop_pending`
        (one pending transaction per owner: a new one replaces the old)."""
        with self._transaction(f"saving the pending writes of {owner}") as s:
            row = s.get(PendingWriteRow, owner, with_for_update=True)
            if row is None:
                s.add(PendingWriteRow(owner=owner, txn=txn, payload=payload))
            else:
                row.txn, row.payload = txn, payload

    def pending(self, owner: str) -> tuple[str, bytes] | None:
        """``(txn, payload)`` of ``owner``'s pending transaction, or None."""
        with self._transaction(f"reading the pending writes of {owner}") as s:
            row = s.get(PendingWriteRow, owner)
            return None if row is None else (row.txn, bytes(row.payload))

    def drop_pending(self, owner: str) -> None:
        """Forget ``owner``'s pending transaction (applied or known aborted)."""
        with self._transaction(f"dropping the pending writes of {owner}") as s:
            s.execute(delete(PendingWriteRow).where(PendingWriteRow.owner == owner))

    # -- alert history -----------------------------------------------------------------

    def save_alert_history(self, batch: AlertBatch) -> None:
        """Keep the alerts' ids, positions (deg ICRS), times (MJD TAI), is_new flags and AB
        magnitudes (NULL when unknown).

        Alerts already stored (same ``alert_id``) are skipped. One bulk INSERT.
        """
        if len(batch) == 0:
            return
        is_new = (batch.is_new if batch.is_new is not None
                  else np.zeros(len(batch), dtype=bool))
        mags = [None if not np.isfinite(m) else m for m in batch.mag.tolist()]
        rows = [
            {"alert_id": a, "object_id": str(o), "ra": r, "dec": d, "mjd_tai": t, "is_new": n,
             "mag": m}
            for a, o, r, d, t, n, m in zip(
                batch.alert_id.tolist(), batch.object_id.tolist(), batch.ra.tolist(),
                batch.dec.tolist(), batch.mjd_tai.tolist(), is_new.tolist(), mags, strict=True)
        ]
        table = AlertHistoryRow.__table__
        stmt = self._insert(table)
        with self._transaction(f"saving {len(rows)} alerts of history") as s:
            if stmt is not None:
                s.execute(stmt.on_conflict_do_nothing(index_elements=["alert_id"]), rows)
            else:
                s.execute(insert(table), rows)

    def load_alert_history(self, since_mjd_tai: float,
                           until_mjd_tai: float | None = None) -> AlertBatch:
        """Stored alerts with ``since <= mjd_tai`` (and ``<= until``), MJD TAI, time-ordered."""
        t = AlertHistoryRow.__table__
        since_mjd_tai = float(since_mjd_tai)
        stmt = (select(t.c.alert_id, t.c.object_id, t.c.ra, t.c.dec, t.c.mjd_tai, t.c.is_new,
                       t.c.mag)
                .where(t.c.mjd_tai >= since_mjd_tai).order_by(t.c.mjd_tai, t.c.alert_id))
        if until_mjd_tai is not None:
            stmt = stmt.where(t.c.mjd_tai <= float(until_mjd_tai))
        with self._transaction("loading alert history") as s:
            rows = s.execute(stmt).all()
        if not rows:
            return AlertBatch(np.empty(0, np.int64), np.empty(0, object), np.empty(0),
                              np.empty(0), np.empty(0), is_new=np.empty(0, bool))
        alert_id, object_id, ra, dec, mjd, is_new, mag = zip(*rows, strict=True)
        return AlertBatch(np.array(alert_id, np.int64), np.array(object_id, object),
                          np.array(ra, np.float64), np.array(dec, np.float64),
                          np.array(mjd, np.float64), is_new=np.array(is_new, bool),
                          mag=np.array([np.nan if m is None else m for m in mag], np.float64))

    def alert_history_stats(self) -> tuple[int, float | None]:
        """(number of stored alerts, newest alert time MJD TAI or None when empty)."""
        t = AlertHistoryRow.__table__
        with self._transaction("reading alert history stats") as s:
            count, newest = s.execute(select(func.count(), func.max(t.c.mjd_tai))).one()
        return int(count or 0), None if newest is None else float(newest)

    def prune_alert_history(self, before_mjd_tai: float) -> int:
        """Delete stored alerts older than ``before_mjd_tai`` (MJD TAI); returns how many."""
        with self._transaction("pruning alert history") as s:
            result = s.execute(delete(AlertHistoryRow)
                               .where(AlertHistoryRow.mjd_tai < float(before_mjd_tai)))
            return int(result.rowcount or 0)

    # -- coincidences ------------------------------------------------------------------

    def save_coincidences(self, records: Sequence[Coincidence]) -> None:
        """Store coincidence records (new, recomputed, revoked), idempotent on (id, revision,
        retracted)."""
        rows = []
        for r in records:
            record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in r.to_record().items()}
            rows.append(dict(coincidence_id=r.coincidence_id, revision=r.revision,
                             gw_event_id=r.gw_event_id, ext_event_id=r.ext_event_id,
                             time_difference=r.time_difference,
                             temporal_far=record["temporal_far"],
                             spacetime_far=record["spacetime_far"],
                             publishable=r.publishable, retracted=r.retracted, record=record))
        if not rows:
            return
        with self._transaction(f"saving {len(rows)} coincidences") as s:
            known = {tuple(k) for k in s.execute(
                select(CoincidenceRow.coincidence_id, CoincidenceRow.revision,
                       CoincidenceRow.retracted)
                .where(CoincidenceRow.coincidence_id.in_({r["coincidence_id"] for r in rows})))}
            new = [r for r in rows
                   if (r["coincidence_id"], r["revision"], r["retracted"]) not in known]
            if new:
                s.execute(insert(CoincidenceRow.__table__), new)

    def coincidences(self, include_revoked: bool = False) -> list[Coincidence]:
        """The latest record of each stored coincidence (revoked ones only if
        ``include_revoked``), in the order they were first stored."""
        with self._transaction("reading coincidences") as s:
            rows = list(s.scalars(select(CoincidenceRow).order_by(CoincidenceRow.id)))
        latest: dict[str, Coincidence] = {}
        for row in rows:
            latest[row.coincidence_id] = Coincidence.from_record(row.record)
        return [c for c in latest.values() if include_revoked or not c.retracted]

"""ORM tables of the mmcross catalog (SQLAlchemy 2 typed declarative mapping).

Units and conventions of the columns:

* ``*_utc``: ISO 8601 strings in UTC (``YYYY-MM-DDTHH:MM:SS.fffffffff``, no zone suffix),
  exact to the nanosecond, used to rebuild astropy ``Time`` objects.
* ``*_mjd_tai``: Modified Julian Date in the TAI scale (days), for queries and ordering.
* ``ra``, ``dec``, ``error_radius``: degrees, ICRS.
* ``searched_area``: deg^2; ``prob_density``: per deg^2; ``time_offset``: days;
  ``distance_*``: Mpc.
* ``*_at``: wall-clock time the row was written (UTC, timezone-aware).

Tables: ``events`` (one row per event id, summary of its latest revision),
``event_revisions`` (one row per accepted notice), ``matches`` (one row per
(event, revision, alert)), ``pending_writes`` (store writes of a live service's transaction
not yet known committed) and ``alert_history`` (compact recent alerts for retro-matching after
a restart). Stores written by older versions may also hold a ``deliveries`` table; it is no
longer read or written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: JSON column type: JSONB on PostgreSQL, JSON (text) elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every mmcross table."""


def _now_column() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class EventRow(Base):
    """One astrophysical event (stable ``event_id``), summarising its latest revision."""

    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    instrument: Mapped[str] = mapped_column(String(100), nullable=False)
    #: Trigger time of the latest revision, ISO UTC / MJD TAI (days).
    trigger_time_utc: Mapped[str] = mapped_column(String(40), nullable=False)
    trigger_mjd_tai: Mapped[float] = mapped_column(Double, nullable=False, index=True)
    latest_revision: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Sticky: True once any revision of the event is a retraction.
    retracted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, index=True)
    #: Issue time of the earliest / latest notice (else trigger time), ISO UTC and MJD TAI.
    first_notice_time_utc: Mapped[str] = mapped_column(String(40), nullable=False)
    first_notice_mjd_tai: Mapped[float] = mapped_column(Double, nullable=False)
    last_notice_time_utc: Mapped[str] = mapped_column(String(40), nullable=False)
    last_notice_mjd_tai: Mapped[float] = mapped_column(Double, nullable=False)
    created_at: Mapped[dt.datetime] = _now_column()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False)

    revisions: Mapped[list[EventRevisionRow]] = relationship(
        back_populates="event", cascade="all, delete-orphan", passive_deletes=True)


class EventRevisionRow(Base):
    """One accepted notice (revision) of an event, with its raw bytes and sky map."""

    __tablename__ = "event_revisions"
    __table_args__ = (
        UniqueConstraint("event_id", "revision", name="uq_event_revisions_event_revision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("events.event_id", ondelete="CASCADE"), nullable=False, index=True)
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)  # "add" / "retract"
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    instrument: Mapped[str] = mapped_column(String(100), nullable=False)
    trigger_time_utc: Mapped[str] = mapped_column(String(40), nullable=False)
    trigger_mjd_tai: Mapped[float] = mapped_column(Double, nullable=False)
    notice_type: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    notice_time_utc: Mapped[str | None] = mapped_column(String(40))
    notice_mjd_tai: Mapped[float | None] = mapped_column(Double)
    #: Notice issue time, else trigger time (MJD TAI): when the revision became known.
    arrival_mjd_tai: Mapped[float] = mapped_column(Double, nullable=False, index=True)
    serial: Mapped[int | None] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(32), nullable=False, default="observation")
    significance: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    ra: Mapped[float | None] = mapped_column(Double)  # deg ICRS
    dec: Mapped[float | None] = mapped_column(Double)  # deg ICRS
    error_radius: Mapped[float | None] = mapped_column(Double)  # deg
    containment: Mapped[float | None] = mapped_column(Double)  # probability 0..1
    raw: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    notice_format: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    source: Mapped[str] = mapped_column(Text, nullable=False, default="")
    ivorn: Mapped[str | None] = mapped_column(Text)  # the notice's VOEvent IVORN, if any
    #: Multi-order HEALPix FITS (Localization.to_fits_bytes()) of a pixel map; NULL for
    #: retractions and analytic regions.
    localization: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: Analytic region parameters (mmcross.model.regions ``to_dict()``: shape, ra/dec deg
    #: ICRS, extents deg, containment); NULL for pixel maps and retractions. Added to older
    #: stores when they are opened (Store.__init__).
    region: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"))
    created_at: Mapped[dt.datetime] = _now_column()

    event: Mapped[EventRow] = relationship(back_populates="revisions")


class MatchRow(Base):
    """One (event revision, alert) match report; ``retracted`` once revoked."""

    __tablename__ = "matches"
    __table_args__ = (
        UniqueConstraint("event_id", "event_revision", "alert_id",
                         name="uq_matches_event_revision_alert"),
        Index("ix_matches_event_retracted", "event_id", "retracted"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), nullable=False)
    event_revision: Mapped[int] = mapped_column(Integer, nullable=False)
    event_kind: Mapped[str] = mapped_column(String(32), nullable=False)
    instrument: Mapped[str] = mapped_column(String(100), nullable=False)
    event_time: Mapped[str] = mapped_column(String(40), nullable=False)  # ISO UTC "...Z"
    alert_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    object_id: Mapped[str] = mapped_column(String(100), nullable=False)
    ra: Mapped[float] = mapped_column(Double, nullable=False)  # deg ICRS
    dec: Mapped[float] = mapped_column(Double, nullable=False)  # deg ICRS
    alert_time: Mapped[str] = mapped_column(String(40), nullable=False)  # ISO UTC "...Z"
    time_offset: Mapped[float] = mapped_column(Double, nullable=False)  # days
    credible_level: Mapped[float] = mapped_column(Double, nullable=False)  # 0..1
    searched_area: Mapped[float] = mapped_column(Double, nullable=False)  # deg^2
    prob_density: Mapped[float] = mapped_column(Double, nullable=False)  # per deg^2
    distance_mean: Mapped[float | None] = mapped_column(Double)  # Mpc
    distance_std: Mapped[float | None] = mapped_column(Double)  # Mpc
    p_chance: Mapped[float] = mapped_column(Double, nullable=False)
    retracted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    notice_ivorn: Mapped[str | None] = mapped_column(Text)  # the answered notice's IVORN
    supersedes_revision: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = _now_column()
    retracted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class PendingWriteRow(Base):
    """The store writes of one live-service transaction, saved before its commit.

    ``owner`` is the service instance (its Kafka ``transactional.id``), ``txn`` the
    transaction's id (the value of its commit marker), ``payload`` the pickled writes.
    Applied and deleted after the commit; at start-up, applied or dropped by whether the
    transaction committed.
    """

    __tablename__ = "pending_writes"

    owner: Mapped[str] = mapped_column(String(400), primary_key=True)
    txn: Mapped[str] = mapped_column(String(100), nullable=False)
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[dt.datetime] = _now_column()


class AlertHistoryRow(Base):
    """A compact recent optical alert (no packet), for retro-matching after a restart."""

    __tablename__ = "alert_history"

    alert_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    object_id: Mapped[str] = mapped_column(String(100), nullable=False)
    ra: Mapped[float] = mapped_column(Double, nullable=False)  # deg ICRS
    dec: Mapped[float] = mapped_column(Double, nullable=False)  # deg ICRS
    mjd_tai: Mapped[float] = mapped_column(Double, nullable=False, index=True)  # MJD TAI
    is_new: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    mag: Mapped[float | None] = mapped_column(Double, nullable=True)  # AB mag, NULL = unknown


class CoincidenceRow(Base):
    """One revision of a GW x external-trigger coincidence (``mmcross.model.coincidence``), or
    its revocation (``retracted``). FARs in Hz (NULL for none or infinite), ``record`` the
    whole record as JSON (infinite FARs as null)."""

    __tablename__ = "coincidences"
    __table_args__ = (
        UniqueConstraint("coincidence_id", "revision", "retracted",
                         name="uq_coincidences_id_revision_retracted"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    coincidence_id: Mapped[str] = mapped_column(String(420), nullable=False, index=True)
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    gw_event_id: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    ext_event_id: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    time_difference: Mapped[float] = mapped_column(Double, nullable=False)  # t_GW - t_ext, s
    temporal_far: Mapped[float | None] = mapped_column(Double)  # Hz
    spacetime_far: Mapped[float | None] = mapped_column(Double)  # Hz
    publishable: Mapped[bool] = mapped_column(Boolean, nullable=False)
    retracted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    record: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[dt.datetime] = _now_column()

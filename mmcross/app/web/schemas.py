"""Response models of the JSON API (they make the published OpenAPI schema).

Units: times ISO 8601 UTC and MJD TAI (days); positions degrees ICRS; areas deg^2; densities
per deg^2; distances Mpc; ``time_offset`` days (alert minus trigger); FAR Hz.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mmcross.catalogs.queries import EventStatus, EventSummary, RevisionSummary
from mmcross.model.match import Match


class EventOut(BaseModel):
    """One event: its latest revision, match counts, status and sky-map summary."""

    event_id: str
    kind: str = Field(description="gw, grb, neutrino, gamma, xray, optical or other")
    instrument: str
    trigger_time: str = Field(description="trigger time of the latest revision, ISO UTC")
    trigger_mjd_tai: float = Field(description="trigger time, MJD TAI (days)")
    revision: int = Field(description="latest revision number (1, 2, ...)")
    revisions: int = Field(description="number of stored revisions")
    status: EventStatus
    far: float | None = Field(description="false-alarm rate of the latest notice, Hz")
    significance: dict[str, Any] = Field(description="significance fields of the latest notice")
    first_notice_time: str = Field(description="issue time of the first notice, ISO UTC")
    last_notice_time: str = Field(description="issue time of the latest notice, ISO UTC")
    matches: int = Field(description="counterpart candidates (alerts) whose match holds")
    matches_revoked: int = Field(description="alerts whose match was revoked")
    area90: float | None = Field(description="90% credible area of the latest sky map, deg^2")
    distance_mean: float | None = Field(description="GW maps: distance mean, Mpc")
    distance_std: float | None = Field(description="GW maps: distance standard deviation, Mpc")

    @classmethod
    def of(cls, e: EventSummary) -> EventOut:
        sky = e.sky
        return cls(event_id=e.event_id, kind=e.kind, instrument=e.instrument,
                   trigger_time=e.trigger_time, trigger_mjd_tai=e.trigger_mjd_tai,
                   revision=e.revision, revisions=e.revisions, status=e.status, far=e.far,
                   significance=e.significance, first_notice_time=e.first_notice_time,
                   last_notice_time=e.last_notice_time, matches=e.matches,
                   matches_revoked=e.matches_revoked,
                   area90=None if sky is None else sky.area90,
                   distance_mean=None if sky is None else sky.distance_mean,
                   distance_std=None if sky is None else sky.distance_std)


class RevisionOut(BaseModel):
    """One accepted notice of an event."""

    revision: int
    action: str = Field(description="add (new or updated localization) or retract")
    notice_type: str
    notice_time: str | None = Field(description="issue time, ISO UTC")
    trigger_time: str = Field(description="ISO UTC")
    serial: int | None
    role: str
    notice_format: str = Field(description="voevent, json or avro")
    significance: dict[str, Any]
    ra: float | None = Field(description="point position, degrees ICRS")
    dec: float | None = Field(description="point position, degrees ICRS")
    error_radius: float | None = Field(description="degrees, at `containment`")
    containment: float | None = Field(description="containment probability of error_radius")

    @classmethod
    def of(cls, r: RevisionSummary) -> RevisionOut:
        return cls(**{name: getattr(r, name) for name in cls.model_fields})


class EventDetailOut(EventOut):
    """One event with every stored revision, oldest first."""

    revision_history: list[RevisionOut]


class MatchOut(BaseModel):
    """A match report (the fields of ``Match.to_record()``) and the Rubin object's link."""

    event_id: str
    event_revision: int
    event_kind: str
    instrument: str
    event_time: str = Field(description="event trigger time, ISO UTC")
    alert_id: int = Field(description="Rubin diaSourceId")
    object_id: str = Field(description="Rubin diaObjectId")
    ra: float = Field(description="degrees ICRS")
    dec: float = Field(description="degrees ICRS")
    alert_time: str = Field(description="ISO UTC")
    time_offset: float = Field(description="alert minus trigger, days")
    credible_level: float = Field(description="searched probability at the alert, 0..1")
    searched_area: float = Field(description="deg^2")
    prob_density: float = Field(description="per deg^2")
    distance_mean: float | None = Field(description="Mpc (GW maps)")
    distance_std: float | None = Field(description="Mpc (GW maps)")
    p_chance: float
    retracted: bool
    object_url: str = Field(description="page of the Rubin object ([web] object_url)")

    @classmethod
    def of(cls, m: Match, object_url: str) -> MatchOut:
        return cls(**m.to_record(), object_url=object_url)

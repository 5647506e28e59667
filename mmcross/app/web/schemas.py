"""Response models of the JSON API (they make the published OpenAPI schema).

Units: times ISO 8601 UTC and MJD TAI (days); positions degrees ICRS; areas deg^2; densities
per deg^2; distances Mpc; ``time_offset`` days (alert minus trigger); FAR Hz.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, get_type_hints

from pydantic import BaseModel, Field, create_model

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


#: Descriptions of the match report fields in the schema (units, frames).
MATCH_FIELDS_HELP = {
    "event_time": "event trigger time, ISO UTC", "alert_id": "Rubin diaSourceId",
    "object_id": "Rubin diaObjectId", "ra": "degrees ICRS", "dec": "degrees ICRS",
    "alert_time": "ISO UTC", "time_offset": "alert minus trigger, days",
    "credible_level": "searched probability at the alert, 0..1", "searched_area": "deg^2",
    "prob_density": "per deg^2", "distance_mean": "Mpc (GW maps)",
    "distance_std": "Mpc (GW maps)", "retracted": "true once the match is revoked",
}


def _match_model() -> type[BaseModel]:
    """A model with every field of :class:`~mmcross.model.match.Match` (so the API follows
    the match report as it grows) and ``object_url``."""
    hints = get_type_hints(Match)
    columns: dict[str, Any] = {
        f.name: (hints[f.name], Field(description=MATCH_FIELDS_HELP.get(f.name, f.name)))
        for f in fields(Match)}
    columns["object_url"] = (str, Field(description="page of the Rubin object ([web] "
                                                    "object_url)"))
    return create_model("MatchOut", __doc__="A match report (the fields of "
                        "``Match.to_record()``) and the Rubin object's link.", **columns)


MatchOut = _match_model()


def match_out(m: Match, object_url: str) -> BaseModel:
    """The API record of ``m`` with the link of its Rubin object."""
    return MatchOut(**m.to_record(), object_url=object_url)

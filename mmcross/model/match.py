"""A match: one optical alert inside one event revision's localization and time window.

The fields are the match report schema (``config/match_report.avsc``); the same record is
written as JSON Lines, Avro and stored in the catalog.
:class:`~mmcross.model.match_batch.MatchBatch` holds many of them as columns (what the engine
and the sinks pass around).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Match:
    """One (event revision, alert) match report.

    Attributes:
        event_id, event_revision, event_kind, instrument: the event this alert matched.
        event_time: event trigger time, ISO 8601 UTC (``YYYY-MM-DDTHH:MM:SS.sssZ``).
        alert_id: Rubin ``diaSourceId`` (ZTF ``candid``).
        object_id: Rubin ``diaObjectId`` (ZTF ``objectId``), as text.
        ra, dec: alert position, degrees ICRS.
        alert_time: alert detection time, ISO 8601 UTC.
        time_offset: alert time minus event time, days.
        credible_level: searched probability at the alert position (ligo.skymap's
            ``searched_prob``), 0..1: the smallest credible region containing the alert.
        searched_area: area of that credible region, deg^2.
        prob_density: localization probability density at the alert, per deg^2.
        distance_mean, distance_std: conditional luminosity distance at the alert position
            (Mpc) for GW maps with distance layers, else ``None``.
        p_chance: probability that an unrelated new transient falls this close in sky and time.
        retracted: True on the record that revokes an earlier match.
        notice_ivorn: IVORN of the GCN notice of this event revision when it came as a
            VOEvent, else ``""`` (JSON and Avro notices have none): the notice this report
            answers, cited by the counterpart VOEvent.
        supersedes_revision: the earlier revision of the same event whose live match of the
            same alert this report replaces (its counterpart VOEvent is cited with
            ``supersedes``), or ``None``.
    """

    event_id: str
    event_revision: int
    event_kind: str
    instrument: str
    event_time: str
    alert_id: int
    object_id: str
    ra: float
    dec: float
    alert_time: str
    time_offset: float
    credible_level: float
    searched_area: float
    prob_density: float
    distance_mean: float | None
    distance_std: float | None
    p_chance: float
    retracted: bool = False
    notice_ivorn: str = ""
    supersedes_revision: int | None = None

    @property
    def key(self) -> str:
        """De-duplication key: event id + alert id (Kafka message key, store key)."""
        return f"{self.event_id}|{self.alert_id}"

    def to_record(self) -> dict[str, Any]:
        return asdict(self)



MATCH_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Match))

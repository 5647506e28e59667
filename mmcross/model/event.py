"""The event model: one astrophysical trigger (GW, GRB, neutrino, ...) and its revisions.

An :class:`Event` is what every listener produces, whatever the notice format. Its
``event_id`` is stable across revisions (e.g. ``"lvk:S230518h"``, ``"fermi-gbm:726773850"``,
``"swift:1208389"``, ``"icecube:136889_25590129"``) so that a later notice about the same
trigger *updates* the event rather than adding a new one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # astropy only for annotations: importing the model stays light
    from astropy.time import Time

    from mmcross.model.localization import Localization


class EventKind(enum.StrEnum):
    """What kind of messenger/phenomenon announced the event."""

    GW = "gw"
    GRB = "grb"
    NEUTRINO = "neutrino"
    GAMMA = "gamma"
    XRAY = "xray"
    OPTICAL = "optical"
    OTHER = "other"
    # The combined localization of a GW x external-trigger coincidence found by mmcross;
    # ``significance["parents"]`` holds the two parent event ids.
    COINCIDENCE = "coincidence"


class NoticeAction(enum.StrEnum):
    """What a notice asks the index to do with its event."""

    ADD = "add"  # first notice or a new revision: add or replace
    RETRACT = "retract"  # retraction: remove the event and revoke its matches


@dataclass
class Event:
    """One revision of an astrophysical event with its sky localization.

    Attributes:
        event_id: stable id across revisions, ``"<source>:<trigger id>"``.
        revision: 1, 2, 3... in the order the index accepted this event's notices; assigned
            by :class:`mmcross.model.index.SkyIndex` (listeners leave it 0). A notice issued before
            the live revision's ``notice_time`` is stale and ignored.
        kind: the messenger kind.
        instrument: mission/instrument name, e.g. ``"Fermi-GBM"``, ``"Swift-BAT"``, ``"LVK"``.
        trigger_time: trigger time (astropy Time, scale UTC).
        localization: multi-order HEALPix probability map, ``None`` only for retractions.
        serial: the mission's own packet serial number (VOEvent ``Pkt_Ser_Num``), if any.
        action: add/update or retract.
        notice_type: the mission's notice type, e.g. ``"GBM_FLT_POS"``, ``"PRELIMINARY"``.
        notice_time: when the notice was issued (UTC), used as its arrival time in replays.
        role: VOEvent role or ``"observation"`` for JSON notices; ``"test"`` events are dropped
            by listeners unless configured otherwise.
        significance: mission significance fields kept as they come (``far`` in Hz,
            ``p_astro``/``classification``, ``signalness``, ``snr``, ``reliability``...).
        ra, dec, error_radius: the point position and radius in degrees (ICRS) when the
            notice gave one (``error_radius`` at the containment in ``containment``).
        containment: containment probability of ``error_radius`` (e.g. 0.9), or ``None``.
        ivorn: the notice's own VOEvent IVORN (``ivo://authority/stream#local_id``) when it
            came as a VOEvent, else ``""`` (GCN Kafka JSON and IGWN Avro notices have none).
        raw: the notice exactly as received (bytes).
        notice_format: ``"voevent"``, ``"json"`` or ``"avro"``.
        source: where the notice came from (file path, topic/partition/offset, peer).
    """

    event_id: str
    kind: EventKind
    instrument: str
    trigger_time: Time
    localization: Localization | None
    revision: int = 0
    serial: int | None = None
    action: NoticeAction = NoticeAction.ADD
    notice_type: str = ""
    notice_time: Time | None = None
    role: str = "observation"
    significance: dict[str, Any] = field(default_factory=dict)
    ra: float | None = None
    dec: float | None = None
    error_radius: float | None = None
    containment: float | None = None
    ivorn: str = ""
    raw: bytes = b""
    notice_format: str = ""
    source: str = ""

    @property
    def trigger_mjd_tai(self) -> float:
        """Trigger time as MJD in the TAI scale (the time axis of Rubin alerts)."""
        return float(self.trigger_time.tai.mjd)

    @property
    def arrival_mjd_tai(self) -> float:
        """When the notice became known (its issue time, else the trigger time), MJD TAI."""
        t = self.notice_time if self.notice_time is not None else self.trigger_time
        return float(t.tai.mjd)

    @property
    def retracted(self) -> bool:
        return self.action is NoticeAction.RETRACT

"""A coincidence: a GW event and an external trigger (GRB, neutrino, X-ray, FRB, SNEWS) close
in time, with the joint false-alarm rates ligo-raven computes for the pair.

The fields are the coincidence record schema (``config/coincidence.avsc``); the same record
goes to Kafka (key ``gw_event_id|ext_event_id``), JSON Lines, VOEvents and the store. The
combined localization is indexed as an event of kind ``coincidence`` whose id is
``coincidence_id``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def coincidence_id(gw_event_id: str, ext_event_id: str) -> str:
    """The stable id of the pair (also the event id of its combined localization)."""
    return f"coinc:{gw_event_id}+{ext_event_id}"


@dataclass
class Coincidence:
    """One GW x external-trigger coincidence, as computed for given parent revisions.

    Attributes:
        coincidence_id: ``coinc:<gw_event_id>+<ext_event_id>``.
        revision: 1, 2, ... each recomputation (a parent's new revision) adds one.
        gw_event_id, gw_revision, ext_event_id, ext_revision: the parents.
        gw_ivorn, ext_ivorn: the parents' notice IVORNs ("" for JSON/Avro notices).
        gw_group, gw_search: LVK group (``CBC``/``Burst``) and search (``AllSky``, ``BBH``...).
        ext_instrument, ext_pipeline, ext_search: mmcross instrument and RAVEN pipeline/search
            (``GRB``, ``SubGRB``, ``SubGRBTargeted``, ``HEN``, ``FRB``, ``Supernova``).
        time_difference: t_GW - t_ext, seconds (negative: the external trigger came later).
        window_lo, window_hi: the window bounding t_GW - t_ext, seconds.
        gw_far, ext_far: the parents' FARs, Hz (``None`` when not given).
        temporal_far: ligo-raven temporal coincidence FAR, Hz (``None`` for SNEWS).
        spacetime_far: ligo-raven space-time coincidence FAR, Hz (``None`` without sky maps).
        overlap: ligo-raven's sky-map overlap integral (nearest pixel centre), dimensionless.
        overlap_exact: exact overlap integral of the two multi-order maps, dimensionless.
        trials_factor: gwcelery's trials factor of the GW group/search.
        weighted_far: the joint FAR times ``trials * (trials - 1)`` gwcelery compares with
            the threshold, Hz (for SNEWS: the GW FAR times the trials factor).
        far_threshold: the publication threshold, Hz.
        publishable: whether gwcelery 3.0's ``trigger_raven_alert`` conditions hold.
        combined_area90: 90 % credible area of the combined map, deg^2 (``None`` if none).
        lvk_temporal_far, lvk_spacetime_far: the FARs the LVK notice's ``external_coinc``
            reports for the same pair (RAVEN's own result), Hz, else ``None``.
        lvk_time_difference: the LVK's ``time_difference`` for the pair, t_ext - t_GW, s
            (gwcelery's sign: the opposite of ``time_difference``).
        lvk_combined_area90: 90 % credible area of RAVEN's combined map in that notice, deg^2.
        gw_time, ext_time: trigger times, ISO 8601 UTC.
        retracted: True on the record revoking the coincidence.
    """

    coincidence_id: str
    revision: int
    gw_event_id: str
    gw_revision: int
    ext_event_id: str
    ext_revision: int
    gw_ivorn: str
    ext_ivorn: str
    gw_group: str
    gw_search: str
    ext_instrument: str
    ext_pipeline: str
    ext_search: str
    gw_time: str
    ext_time: str
    time_difference: float
    window_lo: float
    window_hi: float
    gw_far: float | None
    ext_far: float | None
    temporal_far: float | None
    spacetime_far: float | None
    overlap: float | None
    overlap_exact: float | None
    trials_factor: float
    weighted_far: float | None
    far_threshold: float
    publishable: bool
    combined_area90: float | None = None
    lvk_temporal_far: float | None = None
    lvk_spacetime_far: float | None = None
    lvk_time_difference: float | None = None
    lvk_combined_area90: float | None = None
    retracted: bool = False

    @property
    def key(self) -> str:
        """Kafka message key and store key: the two parent event ids."""
        return f"{self.gw_event_id}|{self.ext_event_id}"

    @property
    def parents(self) -> tuple[str, str]:
        return self.gw_event_id, self.ext_event_id

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Coincidence:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

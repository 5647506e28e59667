"""Notice x notice coincidences: a GW event against live external triggers and back.

:class:`CoincidenceSearch` keeps the live GW events and external triggers (their trigger
times, and the external sky maps gwcelery would build for them) and, for a new or revised
event, returns the coincidences it forms with the other side: the pair is coincident when
``window_lo <= t_GW - t_ext <= window_hi`` (seconds; the window per GW group and external
search as gwcelery 3.0's ``raven._time_window`` chooses it, from ``[coincidence.windows]``).
Each coincidence carries ligo-raven's temporal and space-time FARs, RAVEN's overlap integral
and the exact one, gwcelery's publication decision, and the combined localization (the
normalised product of the two maps with the GW distance layers).

Pure computation: the engine applies the results (indexing, reports, revocations).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmcross.matchers import raven
from mmcross.matchers.external_skymaps import MMCROSS_FERMI_NOTICE_TYPES, external_skymap
from mmcross.model.coincidence import Coincidence, coincidence_id
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError
from mmcross.model.event import Event, EventKind
from mmcross.model.localization import Localization

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400.0
_FERMI_CONVENTIONS = {"fermi-gbm-flt": "FERMI_GBM_FLIGHT_POSITION",
                      "fermi-gbm-gnd": "FERMI_GBM_GROUND_POSITION",
                      "fermi-gbm-fin": "FERMI_GBM_FINAL_POSITION",
                      "fermi-gbm-fin-2019": "FERMI_GBM_FINAL_POSITION"}


@dataclass(frozen=True)
class ExternalSpec:
    """How RAVEN sees an external trigger: its pipeline and search names."""

    pipeline: str
    search: str


@dataclass
class Found:
    """A coincidence (``revision`` 0: the engine numbers them), its parents and their maps
    (``None`` when a parent has none), from which :meth:`CoincidenceSearch.combined` builds
    the combined localization."""

    record: Coincidence
    gw: Event
    ext: Event
    gw_map: raven.MocMap | None
    ext_map: raven.MocMap | None


@dataclass
class _Live:
    event: Event
    t_tai_s: float  # trigger time, TAI seconds since MJD 0
    spec: ExternalSpec | None  # None for GW events


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


class CoincidenceSearch:
    """Live GW events and external triggers, and the coincidences a new event forms.

    Args:
        config: merged configuration (``[coincidence]``).
    """

    def __init__(self, config: Config) -> None:
        c = config.get("coincidence", {})
        try:
            self.windows = {k: (float(v[0]), float(v[1])) for k, v in c["windows"].items()}
            self.rates = {k: float(v) / raven.SECONDS_PER_YEAR
                          for k, v in c["ext_rates_per_year"].items()}
            self.trials = {g: {s: float(t) for s, t in v.items()}
                           for g, v in c["trials_factor"].items()}
            self.thresholds = {g: {s: 1.0 / (float(d) * SECONDS_PER_DAY) for s, d in v.items()}
                               for g, v in c["far_threshold_days"].items()}
            self.targeted = {k: {p: float(x) for p, x in v.items()}
                             for k, v in c["targeted_far_thresholds"].items()}
            self.snews_threshold = float(c["snews_gw_far_threshold"])
            self.externals = [dict(e) for e in c["external"]]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"[coincidence] configuration incomplete or malformed: {exc!r}") \
                from exc
        bad = [k for k, (lo, hi) in self.windows.items() if lo >= hi]
        if bad:
            raise ConfigError(f"coincidence.windows {bad}: lower bound must be below upper")
        self.combined_map = bool(c.get("combined_map", True))
        self.widest = max(max(abs(lo), abs(hi)) for lo, hi in self.windows.values())
        self._live: dict[str, _Live] = {}
        self._maps: dict[tuple[str, int], raven.MocMap | None] = {}

    # ------------------------------------------------------------------ live set
    def external_spec(self, event: Event) -> ExternalSpec | None:
        """The RAVEN pipeline/search of an external trigger, ``None`` for GW events, combined
        maps and instruments without an entry in ``[[coincidence.external]]``."""
        if event.kind in (EventKind.GW, EventKind.COINCIDENCE):
            return None
        name = event.instrument.lower()
        for entry in self.externals:
            if not name.startswith(str(entry["prefix"]).lower()):
                continue
            if "notice_type" in entry and entry["notice_type"] != event.notice_type:
                continue
            return ExternalSpec(str(entry["pipeline"]), str(entry["search"]))
        return None

    def observe(self, event: Event) -> bool:
        """Keep ``event`` (latest revision) as a coincidence candidate; False if it takes no
        part in coincidences."""
        spec = self.external_spec(event)
        if event.kind is not EventKind.GW and spec is None:
            return False
        self.forget(event.event_id)
        self._live[event.event_id] = _Live(event, event.trigger_mjd_tai * SECONDS_PER_DAY, spec)
        return True

    def forget(self, event_id: str) -> None:
        """Drop an event (retracted, expired) and its cached sky map."""
        gone = self._live.pop(event_id, None)
        if gone is not None:
            self._maps.pop((event_id, gone.event.revision), None)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._live

    # ------------------------------------------------------------------ windows
    def time_window(self, gw: Event, spec: ExternalSpec) -> tuple[float, float]:
        """Bounds (s) on t_GW - t_ext for this GW event and external search, as gwcelery's
        ``raven._time_window`` chooses them (cWB BBH takes the CBC windows). As gwcelery's
        ``external_triggers`` launches them, Burst candidates of other searches than AllSky
        and BBH (IMBH) are not searched, and SNEWS only against Burst AllSky candidates.

        Raises:
            ConfigError: no window for this combination (e.g. a GW without a group).
        """
        group = str(gw.significance.get("group", "")).upper()
        gw_search = str(gw.significance.get("search", "")).upper()
        cbc = group == "CBC" or gw_search == "BBH"
        burst = group == "BURST"
        w = self.windows
        if burst and gw_search not in ("ALLSKY", "BBH"):
            raise ConfigError(f"{gw.event_id}: Burst {gw_search} candidates are not searched")
        if spec.pipeline == "SNEWS":
            if burst and gw_search == "ALLSKY":
                return w["SNEWS"]
            raise ConfigError(f"{gw.event_id}: SNEWS is searched against Burst AllSky only")
        if spec.search == "HEN" or spec.pipeline == "IceCube":
            if cbc or burst:
                return w["IceCube_CBC"] if cbc else w["IceCube_burst"]
        elif spec.search in ("SubGRB", "SubGRBTargeted"):
            if spec.pipeline in ("Fermi", "Swift"):
                return w["GRB_CBC_SubFermi" if spec.pipeline == "Fermi" else "GRB_CBC_SubSwift"]
        elif spec.search == "FRB" or spec.pipeline == "CHIME":
            if cbc or burst:
                return w["FRB_CBC"] if cbc else w["FRB_Burst"]
        elif cbc or burst:
            return w["GRB_CBC"] if cbc else w["GRB_Burst"]
        raise ConfigError(f"no coincidence window for GW group {group!r} x "
                          f"{spec.pipeline} {spec.search} ({gw.event_id})")

    # ------------------------------------------------------------------ search
    def search(self, event: Event) -> list[Found]:
        """The coincidences ``event`` (already :meth:`observe`-d) forms with the live events of
        the other side, best first (lowest joint FAR)."""
        me = self._live.get(event.event_id)
        if me is None:
            return []
        found = []
        for other in list(self._live.values()):
            if (other.spec is None) == (me.spec is None):
                continue
            gw, ext = (me, other) if me.spec is None else (other, me)
            dt = gw.t_tai_s - ext.t_tai_s
            if abs(dt) > self.widest:
                continue
            assert ext.spec is not None
            try:
                lo, hi = self.time_window(gw.event, ext.spec)
            except ConfigError as exc:
                log.info("no coincidence search: %s", exc)
                continue
            if lo <= dt <= hi:
                found.append(self.evaluate(gw.event, ext.event, ext.spec, (lo, hi)))
        return sorted(found, key=lambda f: _rank(f.record))

    def evaluate(self, gw: Event, ext: Event, spec: ExternalSpec,
                 window: tuple[float, float]) -> Found:
        """The coincidence record and combined map of one pair inside its window."""
        lo, hi = window
        sig = gw.significance
        gw_far = _float(sig.get("far"))
        ext_far = _float(ext.significance.get("far"))
        group = str(sig.get("group", "")).lower()
        gw_search = str(sig.get("search", "")).lower()
        temporal = self._temporal(gw_far, ext_far, spec, lo, hi)
        gw_map = self._gw_map(gw)
        ext_map = self._external_map(ext)
        overlap = exact = spacetime = None
        if gw_map is not None and ext_map is not None and spec.pipeline != "SNEWS":
            overlap = raven.overlap_moc_moc(gw_map, ext_map)
            exact = raven.overlap_exact(gw_map, ext_map)
            if temporal is not None:
                spacetime = raven.spacetime_far(temporal, overlap)
        else:
            gw_map = ext_map = None
        trials = self.trials.get(group, {}).get(gw_search, 1.0)
        if spec.pipeline == "SNEWS":
            threshold = self.snews_threshold
            weighted = gw_far * trials if gw_far is not None else None
            publishable = weighted is not None and 0 <= weighted < threshold
        else:
            threshold = self.thresholds.get(group, {}).get(gw_search, -math.inf)
            joint = spacetime if spacetime is not None else temporal
            weighted = raven.trials_weighted_far(joint, trials) if joint is not None else None
            likely_real = (ext.kind is not EventKind.GAMMA
                           and not ext.significance.get("def_not_a_grb"))
            publishable = (weighted is not None and 0 <= weighted <= threshold
                           and spec.search != "SubGRB" and likely_real
                           and spacetime is not None
                           and "test" not in (gw.role, ext.role, group))
        lvk = sig.get("external_coinc") if isinstance(sig.get("external_coinc"), dict) else {}
        same = bool(lvk) and _same_trigger(lvk, ext)
        record = Coincidence(
            coincidence_id=coincidence_id(gw.event_id, ext.event_id), revision=0,
            gw_event_id=gw.event_id, gw_revision=gw.revision, ext_event_id=ext.event_id,
            ext_revision=ext.revision, gw_ivorn=gw.ivorn, ext_ivorn=ext.ivorn,
            gw_group=str(sig.get("group", "")), gw_search=str(sig.get("search", "")),
            ext_instrument=ext.instrument, ext_pipeline=spec.pipeline, ext_search=spec.search,
            gw_time=_iso(gw), ext_time=_iso(ext),
            time_difference=float((gw.trigger_time - ext.trigger_time).to_value("s")),
            window_lo=lo, window_hi=hi, gw_far=gw_far, ext_far=ext_far,
            temporal_far=temporal, spacetime_far=spacetime, overlap=overlap,
            overlap_exact=exact, trials_factor=trials, weighted_far=weighted,
            far_threshold=threshold, publishable=bool(publishable),
            lvk_temporal_far=_float(lvk.get("time_coincidence_far")) if same else None,
            lvk_spacetime_far=_float(lvk.get("time_sky_position_coincidence_far"))
            if same else None,
            lvk_time_difference=_float(lvk.get("time_difference")) if same else None,
            lvk_combined_area90=_float(lvk.get("combined_skymap_area90")) if same else None)
        return Found(record, gw, ext, gw_map, ext_map)

    # ------------------------------------------------------------------ pieces
    def _temporal(self, gw_far: float | None, ext_far: float | None, spec: ExternalSpec,
                  lo: float, hi: float) -> float | None:
        """gwcelery ``calculate_coincidence_far`` -> ligo-raven ``coinc_far`` (Hz)."""
        if gw_far is None or spec.pipeline == "SNEWS":
            return None
        if spec.search == "SubGRBTargeted":
            if ext_far is None:
                return None
            return raven.temporal_far(
                gw_far, lo, hi, spec.search, ext_far=ext_far, pipeline=spec.pipeline,
                far_gw_thresh=self.targeted.get("gw", {}).get(spec.pipeline),
                far_grb_thresh=self.targeted.get("grb", {}).get(spec.pipeline))
        search = "GRB" if spec.search in ("FRB", "HEN") else spec.search
        return raven.temporal_far(gw_far, lo, hi, search, em_rate=self.rates.get(spec.search))

    def _gw_map(self, gw: Event) -> raven.MocMap | None:
        """The GW map as a :class:`~mmcross.matchers.raven.MocMap` (cached per revision)."""
        key = (gw.event_id, gw.revision)
        if key not in self._maps:
            loc = gw.localization
            self._maps[key] = (raven.MocMap(loc.uniq, loc.probdensity)
                               if loc is not None else None)
        return self._maps[key]

    def _external_map(self, ext: Event) -> raven.MocMap | None:
        """The external sky map: gwcelery's model of the notice's point + radius when it has
        one, else the event's own localization (cached per revision)."""
        key = (ext.event_id, ext.revision)
        if key not in self._maps:
            m: raven.MocMap | None = None
            if ext.ra is not None and ext.dec is not None and ext.error_radius is not None:
                fermi = None
                if ext.instrument.lower().startswith("fermi-gbm"):
                    conv = str(ext.significance.get("radius_convention", ""))
                    fermi = _FERMI_CONVENTIONS.get(conv) or MMCROSS_FERMI_NOTICE_TYPES.get(
                        ext.notice_type)
                sky = external_skymap(ext.ra, ext.dec, ext.error_radius, ext.containment,
                                      fermi_notice_type=fermi)
                m = raven.MocMap(sky.uniq, sky.density)
            elif ext.localization is not None:
                m = raven.MocMap(ext.localization.uniq, ext.localization.probdensity)
            self._maps[key] = m
        return self._maps[key]

    def combined(self, found: Found) -> Localization | None:
        """The combined localization of a coincidence: the normalised product of the two
        maps on their common refinement, with the GW distance layers (``None`` when a map is
        missing, the maps do not overlap, or ``[coincidence] combined_map`` is off)."""
        if not self.combined_map or found.gw_map is None or found.ext_map is None:
            return None
        gw, ext = found.gw, found.ext
        ref, density = raven.combined_density(found.gw_map, found.ext_map)
        if not np.any(density > 0):
            return None
        loc = gw.localization
        assert loc is not None
        layers = ((loc.distmu[ref.first], loc.distsigma[ref.first], loc.distnorm[ref.first])
                  if loc.has_distance else (None, None, None))
        meta = {"OBJECT": coincidence_id(gw.event_id, ext.event_id),
                "INSTRUME": f"{loc.meta.get('INSTRUME', 'LVK')},{ext.instrument}",
                "CREATOR": "mmcross", "SHAPE": "GW x external product (RAVEN combined map)"}
        return Localization(ref.uniq, density, *layers, meta=meta)


def _rank(record: Coincidence) -> tuple[bool, float, float]:
    """Publishable first, then lowest space-time then temporal FAR (gwcelery ``keyfunc``)."""
    inf = math.inf
    return (not record.publishable,
            record.spacetime_far if record.spacetime_far is not None else inf,
            record.temporal_far if record.temporal_far is not None else inf)


def _iso(event: Event) -> str:
    return event.trigger_time.utc.isot + "Z"


def _same_trigger(lvk: dict[str, Any], ext: Event) -> bool:
    """Whether the LVK notice's ``external_coinc`` names this external trigger (by IVORN, else
    by GCN trigger number in the event id)."""
    ivorn = str(lvk.get("ivorn") or "")
    if ivorn and ext.ivorn:
        return ivorn == ext.ivorn
    notice_id = lvk.get("gcn_notice_id")
    return notice_id is not None and ext.event_id.rsplit(":", 1)[-1] == str(notice_id)

"""Live matching of partner detection streams with Rubin alerts, both ways round.

:class:`PartnerStreamMatcher` keeps each partner's recent detections. A new detection is
matched against the recent Rubin alerts the caller passes (the engine's alert history), and
each new Rubin alert batch is matched against the kept detections, with the partner's
:class:`~mmcross.matchers.partner_streams.StreamRule` (radius or n-sigma, time window
``before <= t_alert - t_detection <= after`` days, property constraints).

A detection is kept while an alert could still match it: it is dropped once the newest
alert seen (MJD TAI) is later than ``t_detection + after``. Each (partner, detection,
alert) pair is reported at most once while the detection is kept, so a re-delivered alert
batch reports nothing new; a detection id already kept is ignored when re-submitted.

Wiring (the caller holds one lock around both calls)::

    m = PartnerStreamMatcher(config, registry)
    # detections accepted by mmcross.listeners.partner_detections.accept_detections:
    t0, t1 = m.history_window(d.partner, d)
    found = m.on_detections(d.partner, d, engine.history.between(t0, t1))
    # each alert batch, after engine.on_alerts(batch):
    found = m.on_alerts(batch)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmcross.matchers.partner_streams import (
    Detections,
    StreamMatch,
    match_stream,
    rules_from_config,
)
from mmcross.model.alert import AlertBatch
from mmcross.model.errors import ConfigError

log = logging.getLogger(__name__)

PartnerMatch = StreamMatch
"""One (partner detection, Rubin alert) match; ``to_json()`` gives its JSON form."""

DEFAULT_MAX_KEPT = 100_000


def _concat(parts: list[Detections]) -> Detections:
    names = {k for p in parts for k in p.properties}
    props = {k: np.concatenate([p.properties.get(k, np.full(len(p), np.nan)) for p in parts])
             for k in names}
    return Detections(np.concatenate([p.detection_id for p in parts]),
                      np.concatenate([p.ra for p in parts]),
                      np.concatenate([p.dec for p in parts]),
                      np.concatenate([p.err_deg for p in parts]),
                      np.concatenate([p.mjd_tai for p in parts]), props,
                      partner=parts[0].partner if parts else "")


def _take(d: Detections, mask: np.ndarray) -> Detections:
    return Detections(d.detection_id[mask], d.ra[mask], d.dec[mask], d.err_deg[mask],
                      d.mjd_tai[mask], {k: v[mask] for k, v in d.properties.items()},
                      partner=d.partner)


class PartnerStreamMatcher:
    """Recent detections per partner, matched against Rubin alerts (not thread-safe).

    Args:
        config: the merged configuration (a :class:`mmcross.model.config.Config` or a mapping);
            rules come from ``[partners.<name>.stream]`` and the cap on kept detections per
            partner from ``partner_streams.max_kept`` (default 100000, oldest dropped).
        registry: optional partner registry (``mmcross.listeners.partners.PartnerRegistry``); when
            given, rules come from its partners' ``stream`` tables instead.
    """

    def __init__(self, config: Any, registry: Any = None) -> None:
        if registry is not None:
            tables = {name: {"stream": p.stream} for name, p in registry.partners.items()}
        else:
            tables = config.get("partners", {}) or {}
        if not isinstance(tables, Mapping):
            raise ConfigError("[partners] must be a table of [partners.<name>] tables")
        self.rules = rules_from_config(tables)
        getter = getattr(config, "get", None)
        self.max_kept = int(getter("partner_streams.max_kept", DEFAULT_MAX_KEPT)
                            if getter is not None else DEFAULT_MAX_KEPT)
        self.newest_alert_mjd_tai = -np.inf
        self.stats: Counter[str] = Counter()
        self._kept: dict[str, Detections] = {}
        self._reported: dict[str, dict[str, set[int]]] = {}

    def kept(self, partner: str) -> int:
        """How many detections of ``partner`` are kept."""
        d = self._kept.get(partner)
        return 0 if d is None else len(d)

    def history_window(self, partner: str, detections: Any) -> tuple[float, float]:
        """``(start, end)`` MJD TAI of the alerts that could match ``detections``."""
        rule = self._rule(partner)
        t = np.asarray(detections.mjd_tai, dtype=np.float64)
        return float(t.min()) + rule.before, float(t.max()) + rule.after

    def on_detections(self, partner: str, detections: Any, alert_history: AlertBatch,
                      alert_properties: Mapping[str, np.ndarray] | None = None
                      ) -> list[PartnerMatch]:
        """Keep new detections of ``partner`` and match them against ``alert_history``.

        Args:
            partner: a partner with a stream rule.
            detections: :class:`mmcross.model.detections.Detections` (degrees ICRS, MJD TAI).
            alert_history: recent Rubin alerts (e.g. ``engine.history.between(
                *self.history_window(partner, detections))``).
            alert_properties: per-alert values aligned with ``alert_history`` for property
                constraints (e.g. ``{"mag": history.mag}``, AB magnitudes).

        Returns:
            The new matches, ordered by detection id then alert id.
        """
        rule = self._rule(partner)
        det = detections
        reported = self._reported.setdefault(partner, {})
        fresh = np.array([str(i) not in reported for i in det.detection_id], dtype=bool)
        if len(fresh) and len(set(det.detection_id.tolist())) != len(det):
            raise ValueError(f"duplicate detection ids from partner {partner!r}")
        self.stats["detections_duplicate"] += int((~fresh).sum())
        det = _take(det, fresh)
        if len(det) == 0:
            return []
        self.stats["detections"] += len(det)
        found = self._new(match_stream(partner, det, alert_history, rule, alert_properties))
        if len(alert_history):
            self.newest_alert_mjd_tai = max(self.newest_alert_mjd_tai,
                                            float(alert_history.mjd_tai.max()))
        for i in det.detection_id:
            reported.setdefault(str(i), set())
        found_ids = {m.detection_id for m in found}
        for m in found:
            reported[m.detection_id].add(m.alert_id)
        kept = self._kept.get(partner)
        self._kept[partner] = det if kept is None else _concat([kept, det])
        self._prune(partner)
        log.debug("partner %s: %d new detections, %d matched in history", partner, len(det),
                  len(found_ids))
        return found

    def on_alerts(self, batch: AlertBatch,
                  alert_properties: Mapping[str, np.ndarray] | None = None
                  ) -> list[PartnerMatch]:
        """Match a Rubin alert batch against every partner's kept detections.

        Returns the new matches (pairs not reported before), ordered by partner, detection
        id, alert id; then drops detections no later alert can match.
        """
        if len(batch) == 0:
            return []
        out: list[PartnerMatch] = []
        for partner in sorted(self._kept):
            found = self._new(match_stream(partner, self._kept[partner], batch,
                                           self.rules[partner], alert_properties))
            reported = self._reported[partner]
            for m in found:
                reported[m.detection_id].add(m.alert_id)
            out.extend(found)
        self.newest_alert_mjd_tai = max(self.newest_alert_mjd_tai, float(batch.mjd_tai.max()))
        for partner in list(self._kept):
            self._prune(partner)
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _rule(self, partner: str):  # noqa: ANN202 - StreamRule
        rule = self.rules.get(partner)
        if rule is None:
            raise ConfigError(f"partner {partner!r} has no [partners.{partner}.stream] rule")
        return rule

    def _new(self, found: list[StreamMatch]) -> list[StreamMatch]:
        new = [m for m in found
               if m.alert_id not in self._reported[m.partner].get(m.detection_id, ())]
        self.stats["matches"] += len(new)
        return new

    def _prune(self, partner: str) -> None:
        det = self._kept[partner]
        keep = det.mjd_tai + self.rules[partner].after >= self.newest_alert_mjd_tai
        if keep.sum() > self.max_kept:
            # Drop the earliest detections beyond the cap.
            order = np.argsort(det.mjd_tai, kind="stable")
            keep[order[:len(det) - self.max_kept]] = False
        if keep.all():
            return
        reported = self._reported[partner]
        for i in det.detection_id[~keep]:
            reported.pop(str(i), None)
        self.stats["detections_dropped"] += int((~keep).sum())
        if keep.any():
            self._kept[partner] = _take(det, keep)
        else:
            del self._kept[partner]

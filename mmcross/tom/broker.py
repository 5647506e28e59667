"""The TOM Toolkit broker module: mmcross counterparts as TOM alerts and targets.

:class:`MMCrossBroker` (``tom_alerts.alerts.GenericBroker``) queries an ``mmcross serve`` for
the Rubin counterparts of one event (or all), within a credible level and a chance
probability, through :mod:`mmcross.tom.api`. Each counterpart is a TOM alert with id
``event_id|alert_id``; its target is the Rubin object (name = diaObjectId, position degrees
ICRS). Where mmcross runs: ``settings.BROKERS["mmcross"]["url"]`` (default
``http://127.0.0.1:8080``, `mmcross serve`'s default).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from crispy_forms.layout import Column, Fieldset, Layout, Row
from django import forms
from django.conf import settings
from tom_alerts.alerts import GenericAlert, GenericBroker, GenericQueryForm
from tom_targets.models import Target

from mmcross.tom.api import MatchQuery, MMCrossAPI, MMCrossAPIError, alert_key

DEFAULT_URL = "http://127.0.0.1:8080"


def _api() -> MMCrossAPI:
    conf = (getattr(settings, "BROKERS", {}) or {}).get("mmcross", {}) or {}
    return MMCrossAPI(conf.get("url", DEFAULT_URL), float(conf.get("timeout", 30.0)))


class MMCrossQueryForm(GenericQueryForm):
    """Event id (empty: every event), largest credible level, largest chance probability."""

    event_id = forms.CharField(required=False, label="Event",
                               help_text="mmcross event id, e.g. lvk:S230518h (empty: all)")
    max_credible_level = forms.FloatField(
        required=False, min_value=0.0, max_value=1.0, initial=0.9,
        label="Max credible level", help_text="keep alerts inside this credible region (0-1)")
    max_p_chance = forms.FloatField(
        required=False, min_value=0.0, max_value=1.0, label="Max p_chance",
        help_text="keep matches at most this likely to be chance coincidences (0-1)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper.layout = Layout(
            self.common_layout,
            Fieldset("Counterparts", "event_id",
                     Row(Column("max_credible_level"), Column("max_p_chance"))))


def _time(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


class MMCrossBroker(GenericBroker):
    """Rubin counterparts of GW/GRB/neutrino events found by mmcross.

    ``score`` is the match's ``p_chance`` (lower is better).
    """

    name = "mmcross"
    form = MMCrossQueryForm
    score_description = ("p_chance: probability that an unrelated new transient falls this "
                         "close in sky and time (lower is better)")

    def fetch_alerts(self, parameters: dict[str, Any]) -> tuple[Iterator[dict[str, Any]], str]:
        """The counterparts the form's ``parameters`` select, newest first, and a feedback
        line: empty, or why there is nothing (mmcross unreachable, an event it does not
        know, from ``/api/events``)."""
        query = MatchQuery(event_id=(parameters.get("event_id") or "").strip(),
                           max_credible_level=parameters.get("max_credible_level"),
                           max_p_chance=parameters.get("max_p_chance"))
        api = _api()
        try:
            records = api.matches(query)
            if query.event_id and not records and query.event_id not in {
                    e.get("event_id") for e in api.events()}:
                return iter([]), f"mmcross knows no event {query.event_id}"
        except MMCrossAPIError as exc:
            return iter([]), f"mmcross: {exc}"
        return iter(records), ""

    def fetch_alert(self, alert_id: str) -> dict[str, Any]:
        """One counterpart by its id ``event_id|alert_id``."""
        return _api().match(alert_id)

    def to_generic_alert(self, alert: dict[str, Any]) -> GenericAlert:
        return GenericAlert(timestamp=_time(alert["alert_time"]), id=alert_key(alert),
                            name=str(alert["object_id"]), ra=float(alert["ra"]),
                            dec=float(alert["dec"]), mag=None, score=float(alert["p_chance"]),
                            url=alert["object_url"])

    def to_target(self, alert: dict[str, Any]) -> Target:
        """The Rubin object of a counterpart as a sidereal target (created once per object)."""
        target, _created = Target.objects.get_or_create(
            name=str(alert["object_id"]),
            defaults={"type": Target.SIDEREAL, "ra": float(alert["ra"]),
                      "dec": float(alert["dec"]), "epoch": 2000.0})
        return target

    def process_reduced_data(self, target: Target, alert: Any = None) -> None:
        """mmcross has no photometry series to attach."""

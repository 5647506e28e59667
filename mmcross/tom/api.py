"""Client of mmcross's read-only JSON API (``mmcross serve``), standard library only.

``GET /api/matches?event_id=&max_credible_level=&max_p_chance=&limit=`` answers a list of match
records: the fields of :meth:`mmcross.model.match.Match.to_record` (positions degrees ICRS,
times ISO 8601 UTC, ``time_offset`` days, ``searched_area`` deg^2) plus ``object_url``, the
Rubin object's page. ``GET /api/events`` lists the events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib import error as urlerror
from urllib import parse as urlparse
from urllib import request as urlrequest

from mmcross.model.errors import MmcrossError

#: Fields every match record of ``/api/matches`` has (``Match.to_record()`` + ``object_url``).
MATCH_FIELDS = ("event_id", "event_revision", "event_kind", "instrument", "event_time",
                "alert_id", "object_id", "ra", "dec", "alert_time", "time_offset",
                "credible_level", "searched_area", "prob_density", "distance_mean",
                "distance_std", "p_chance", "retracted", "object_url")


class MMCrossAPIError(MmcrossError):
    """mmcross's API could not be read, or answered something else than documented.

    Attributes:
        source: the URL asked.
        status: the HTTP status when the server answered, else ``None``.
    """

    def __init__(self, source: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.status = status


@dataclass(frozen=True)
class MatchQuery:
    """What to ask ``/api/matches`` for: one event (or all), credible level and chance caps."""

    event_id: str = ""
    max_credible_level: float | None = None
    max_p_chance: float | None = None
    limit: int = 1000

    def params(self) -> dict[str, str]:
        """The query string parameters (unset ones left out)."""
        out = {"limit": str(self.limit)}
        if self.event_id:
            out["event_id"] = self.event_id
        if self.max_credible_level is not None:
            out["max_credible_level"] = repr(float(self.max_credible_level))
        if self.max_p_chance is not None:
            out["max_p_chance"] = repr(float(self.max_p_chance))
        return out


def alert_key(record: dict[str, Any]) -> str:
    """The id of one counterpart in the TOM: ``event_id|alert_id`` (mmcross's report key)."""
    return f"{record['event_id']}|{record['alert_id']}"


def split_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`alert_key`."""
    event_id, _, alert_id = key.rpartition("|")
    if not event_id or not alert_id.isdigit():
        raise MMCrossAPIError(key, "not an event_id|alert_id counterpart id")
    return event_id, int(alert_id)


class MMCrossAPI:
    """Reads ``/api/matches`` and ``/api/events`` of an ``mmcross serve``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urlparse.urlencode(params)
        req = urlrequest.Request(url, headers={"Accept": "application/json"})
        try:
            with urlrequest.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urlerror.HTTPError as exc:
            raise MMCrossAPIError(url, f"HTTP {exc.code}: {exc.read()[:300]!r}",
                                  exc.code) from exc
        except (urlerror.URLError, OSError) as exc:
            raise MMCrossAPIError(url, f"cannot reach mmcross: {exc}") from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise MMCrossAPIError(url, f"not JSON: {exc}") from exc

    def matches(self, query: MatchQuery) -> list[dict[str, Any]]:
        """The live counterparts ``query`` selects, as the API orders them (newest first).

        Raises:
            MMCrossAPIError: unreachable, an HTTP error, or records without the documented
                fields.
        """
        records = self._get("/api/matches", query.params())
        if not isinstance(records, list):
            raise MMCrossAPIError(f"{self.base_url}/api/matches", "not a list of matches")
        for r in records:
            missing = [f for f in MATCH_FIELDS if not isinstance(r, dict) or f not in r]
            if missing:
                raise MMCrossAPIError(f"{self.base_url}/api/matches",
                                      f"a match record lacks {', '.join(missing)}")
        return records

    def match(self, key: str) -> dict[str, Any]:
        """One counterpart by its :func:`alert_key`.

        Raises:
            MMCrossAPIError: no live match with that key.
        """
        event_id, alert_id = split_key(key)
        for r in self.matches(MatchQuery(event_id=event_id, limit=10000)):
            if int(r["alert_id"]) == alert_id:
                return r
        raise MMCrossAPIError(f"{self.base_url}/api/matches", f"no live match {key}", 404)

    def events(self) -> list[dict[str, Any]]:
        """``/api/events``: the events, newest first."""
        events = self._get("/api/events")
        if not isinstance(events, list):
            raise MMCrossAPIError(f"{self.base_url}/api/events", "not a list of events")
        return events

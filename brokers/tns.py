"""Transient Name Server (TNS) AT reports of Rubin counterparts, and the bulk-report client.

:func:`build_at_report` is a pure function from model objects (the event, the match, the
object's detections kept in the alert history) to the JSON document of TNS's bulk-report API::

    {"at_report": {"0": {"ra": {...}, "dec": {...}, "reporting_group_id": ..., ...}}}

:class:`TNSClient` sends it as TNS documents it: ``POST <api>/set/bulk-report`` with the
multipart form fields ``api_key`` and ``data`` (the JSON text) and the User-Agent
``tns_marker{"tns_id": BOT_ID, "type": "bot", "name": "BOT_NAME"}``; the answer carries a
``report_id``, and ``POST <api>/get/bulk-report-reply`` (fields ``api_key``, ``report_id``)
is polled until it stops answering 404 ("not processed yet") and gives the feedback, whose
entries carry the TNS ``objname`` of each accepted report.

What mmcross keeps of an alert is its id, object id, position (degrees ICRS), time (MJD TAI)
and AB magnitude: no band, no flux error and no non-detection limit. The report says so in its
remarks instead of inventing values; the band, when the operator knows it, is a parameter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib import error as urlerror
from urllib import request as urlrequest

import numpy as np
from astropy.time import Time

from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.model.errors import MmcrossError
from mmcross.model.event import Event
from mmcross.model.match import Match

log = logging.getLogger(__name__)

#: TNS archive ids of the ``non_detection`` block (TNS bulk-report documentation).
ARCHIVE_OTHER = "0"
#: TNS flux unit id of AB magnitudes.
FLUX_UNITS_AB_MAG = "1"
#: TNS AT type id of a "PSN" (possible supernova / unclassified transient).
AT_TYPE_PSN = "1"


class TNSError(MmcrossError):
    """A TNS report that cannot be built or sent.

    Attributes:
        source: what was being done (``"tns-report lvk:S230518h/123"``, an endpoint URL).
        reason: what was wrong, in words.
        status: the HTTP status or TNS ``id_code`` when the server answered, else ``None``.
    """

    def __init__(self, source: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{source}: {reason}" + (f" (HTTP/TNS code {status})"
                                                  if status is not None else ""))
        self.source = source
        self.reason = reason
        self.status = status


@dataclass
class TNSSettings:
    """The ``[tns]`` table: TNS ids of the report and the bot that sends it.

    Ids are TNS's own (strings, as the API takes them). An empty id is a placeholder: the
    report is still written, and :meth:`placeholders` names it so that sending refuses.

    Attributes:
        api_url: base of the API, e.g. ``https://sandbox.wis-tns.org/api``.
        reporting_group_id, discovery_data_source_id, instrument_id: TNS ids.
        filter_ids: TNS filter id per Rubin band (``u g r i z y``).
        reporter: the reporter line (names, "on behalf of ...").
        exptime: exposure of one visit, seconds.
        position_error_arcsec: 1-sigma error of the reported position, arcsec.
        bot_id, bot_name, api_key: the TNS bot (``MMCROSS_TNS_BOT_ID``,
            ``MMCROSS_TNS_BOT_NAME``, ``MMCROSS_TNS_API_KEY`` win over the file).
        reply_attempts, reply_interval: polls of the reply endpoint and seconds between them.
        timeout: seconds per HTTP request.
    """

    api_url: str = "https://sandbox.wis-tns.org/api"
    reporting_group_id: str = ""
    discovery_data_source_id: str = ""
    instrument_id: str = ""
    filter_ids: dict[str, str] = field(default_factory=dict)
    reporter: str = ""
    at_type: str = AT_TYPE_PSN
    exptime: float = 30.0
    position_error_arcsec: float = 1.0
    bot_id: str = ""
    bot_name: str = ""
    api_key: str = ""
    reply_attempts: int = 30
    reply_interval: float = 2.0
    timeout: float = 60.0

    @classmethod
    def from_config(cls, config: Config,
                    env: Mapping[str, str] | None = None) -> TNSSettings:
        """Read ``[tns]`` and the ``MMCROSS_TNS_*`` environment variables."""
        env = os.environ if env is None else env
        t = dict(config.get("tns", {}) or {})
        s = cls(
            api_url=str(t.get("api_url", cls.api_url)).rstrip("/"),
            reporting_group_id=str(t.get("reporting_group_id", "")),
            discovery_data_source_id=str(t.get("discovery_data_source_id", "")),
            instrument_id=str(t.get("instrument_id", "")),
            filter_ids={str(k): str(v) for k, v in (t.get("filter_ids") or {}).items()},
            reporter=str(t.get("reporter", "")),
            at_type=str(t.get("at_type", AT_TYPE_PSN)),
            exptime=float(t.get("exptime", 30.0)),
            position_error_arcsec=float(t.get("position_error_arcsec", 1.0)),
            bot_id=str(t.get("bot_id", "")), bot_name=str(t.get("bot_name", "")),
            api_key=str(t.get("api_key", "")),
            reply_attempts=int(t.get("reply_attempts", 30)),
            reply_interval=float(t.get("reply_interval", 2.0)),
            timeout=float(t.get("timeout", 60.0)))
        s.api_key = env.get("MMCROSS_TNS_API_KEY", s.api_key)
        s.bot_id = env.get("MMCROSS_TNS_BOT_ID", s.bot_id)
        s.bot_name = env.get("MMCROSS_TNS_BOT_NAME", s.bot_name)
        return s

    def placeholders(self, band: str | None) -> list[str]:
        """The report fields still placeholders (empty) for a report in ``band``."""
        missing = [name for name in ("reporting_group_id", "discovery_data_source_id",
                                     "instrument_id", "reporter") if not getattr(self, name)]
        if band is None:
            missing.append("filter (the store keeps no band: pass the alert's band)")
        elif not self.filter_ids.get(band):
            missing.append(f"filter_ids.{band}")
        return missing

    def marker(self) -> str:
        """The ``User-Agent`` TNS requires of a bot: ``tns_marker{"tns_id": ..., ...}``."""
        try:
            bot_id: int | str = int(self.bot_id)
        except ValueError:
            bot_id = self.bot_id
        return "tns_marker" + json.dumps({"tns_id": bot_id, "type": "bot",
                                          "name": self.bot_name})


def _utc(mjd_tai: float) -> str:
    """MJD TAI -> ``YYYY-MM-DD HH:MM:SS.sss`` UTC (TNS date-time format)."""
    t = Time(mjd_tai, format="mjd", scale="tai", precision=3).utc
    return str(t.iso)


def object_detections(history: AlertBatch, match: Match) -> AlertBatch:
    """The detections of ``match``'s object in ``history`` up to and including the matched
    alert (MJD TAI order); the matched alert itself must be there.

    Raises:
        TNSError: the alert is not in the history (pruned, or never stored).
    """
    source = f"tns-report {match.event_id}/{match.alert_id}"
    here = np.flatnonzero(history.alert_id == match.alert_id)
    if here.size == 0:
        raise TNSError(source, "the alert is not in the stored alert history (pruned, or "
                               "the store never saw it): no photometry to report")
    t_alert = float(history.mjd_tai[here[0]])
    mine = (history.object_id == str(match.object_id)) & (history.mjd_tai <= t_alert)
    batch = history.take(mine)
    return batch.take(np.argsort(batch.mjd_tai, kind="stable"))


def _photometry(detections: AlertBatch, settings: TNSSettings, band: str | None
                ) -> dict[str, dict[str, str]]:
    filter_id = settings.filter_ids.get(band, "") if band else ""
    out: dict[str, dict[str, str]] = {}
    for i in range(len(detections)):
        mag = float(detections.mag[i])
        out[str(i)] = {
            "obsdate": _utc(float(detections.mjd_tai[i])),
            "flux": "" if not math.isfinite(mag) else f"{mag:.3f}",
            "flux_error": "",
            "limiting_flux": "",
            "flux_units": FLUX_UNITS_AB_MAG,
            "filter_value": filter_id,
            "instrument_value": settings.instrument_id,
            "exptime": f"{settings.exptime:g}",
            "observer": "Robot",
            "comments": (f"Rubin diaSourceId {int(detections.alert_id[i])}; AB magnitude "
                         f"of the difference-image PSF flux"
                         + ("" if math.isfinite(mag) else " not available")),
        }
    return out


def _remarks(event: Event, match: Match, band: str | None, n_detections: int) -> str:
    parts = [
        f"Candidate optical counterpart of {event.kind.value} event {event.event_id} "
        f"({event.instrument}, trigger {match.event_time}, revision {match.event_revision}) "
        f"found by mmcross in the Rubin alert stream: Rubin diaObjectId {match.object_id}, "
        f"diaSourceId {match.alert_id}, credible level {match.credible_level:.4f} "
        f"(searched area {match.searched_area:.4g} deg2), time offset "
        f"{match.time_offset:.4f} d, p_chance {match.p_chance:.3g}.",
    ]
    if match.distance_mean is not None and match.distance_std is not None:
        parts.append(f"GW distance at this position {match.distance_mean:.0f} +/- "
                     f"{match.distance_std:.0f} Mpc.")
    if event.ivorn:
        parts.append(f"Notice: {event.ivorn}.")
    parts.append(f"Photometry: the {n_detections} detection(s) of this object kept by "
                 "mmcross up to this alert; flux errors are not stored"
                 + (" and neither is the band." if band is None else "."))
    parts.append("No Rubin non-detection or limiting magnitude is stored, so none is "
                 "reported.")
    return " ".join(parts)


def build_at_report(event: Event, match: Match, detections: AlertBatch,
                    settings: TNSSettings, *, band: str | None = None) -> dict[str, Any]:
    """The TNS bulk-report JSON of one Rubin counterpart.

    Args:
        event: the GCN event (its latest stored revision).
        match: the (event, alert) match to report; ``ra``/``dec`` in degrees ICRS.
        detections: the object's detections up to the alert (:func:`object_detections`),
            MJD TAI order; the first is the discovery.
        settings: ``[tns]`` ids.
        band: the Rubin band of the detections (``u g r i z y``) if known.

    Returns:
        ``{"at_report": {"0": {...}}}``: position (value in degrees ICRS, error in arcsec),
        discovery date-time (UTC) of the first detection, internal name = Rubin object id,
        photometry, the non-detection block (archive "Other" with the reason none is given)
        and remarks citing the event.

    Raises:
        TNSError: the match is retracted or ``detections`` is empty.
    """
    source = f"tns-report {match.event_id}/{match.alert_id}"
    if match.retracted:
        raise TNSError(source, "this match was revoked: it is no counterpart to report")
    if len(detections) == 0:
        raise TNSError(source, "no detection of the object to report")
    first = _utc(float(detections.mjd_tai[0]))
    error = f"{settings.position_error_arcsec:g}"
    report = {
        "ra": {"value": f"{match.ra:.7f}", "error": error, "units": "arcsec"},
        "dec": {"value": f"{match.dec:.7f}", "error": error, "units": "arcsec"},
        "reporting_group_id": settings.reporting_group_id,
        "discovery_data_source_id": settings.discovery_data_source_id,
        "reporter": settings.reporter,
        "discovery_datetime": first,
        "at_type": settings.at_type,
        "internal_name": str(match.object_id),
        "remarks": _remarks(event, match, band, len(detections)),
        "non_detection": {
            "archiveid": ARCHIVE_OTHER,
            "archival_remarks": (f"mmcross keeps no Rubin non-detections or limiting "
                                 f"magnitudes; first stored detection {first} UTC"),
        },
        "photometry": {"photometry_group": _photometry(detections, settings, band)},
    }
    return {"at_report": {"0": report}}


# -- HTTP --------------------------------------------------------------------------------

@dataclass
class TNSReply:
    """What TNS answered about one bulk report.

    Attributes:
        report_id: TNS's id of the bulk report.
        feedback: ``data.feedback.at_report`` of the reply (one entry per report).
        objnames: TNS names given to the reported objects (empty when none was accepted).
    """

    report_id: str
    feedback: list[Any]
    objnames: list[str]


def _multipart(fields: Mapping[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
        + value.encode() + b"\r\n" for name, value in fields.items())
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _objnames(feedback: Any) -> list[str]:
    """Every ``objname`` anywhere in the feedback (TNS nests them under message codes)."""
    if isinstance(feedback, Mapping):
        own = [str(feedback["objname"])] if feedback.get("objname") else []
        return own + [n for v in feedback.values() for n in _objnames(v)]
    if isinstance(feedback, list):
        return [n for v in feedback for n in _objnames(v)]
    return []


class TNSClient:
    """Sends bulk AT reports to TNS and polls their replies (bounded retries).

    Args:
        settings: API URL, bot id/name and API key.
        sleep: waits between reply polls (``time.sleep``; tests may pass their own).

    Raises:
        TNSError: no API key or bot id/name.
    """

    def __init__(self, settings: TNSSettings,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        missing = [n for n in ("api_key", "bot_id", "bot_name") if not getattr(settings, n)]
        if missing:
            raise TNSError(settings.api_url, "no TNS bot credentials: set " + ", ".join(
                f"MMCROSS_TNS_{n.upper()} or [tns] {n}" for n in missing))
        self.settings = settings
        self._sleep = sleep

    def _post(self, endpoint: str, fields: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        url = f"{self.settings.api_url}/{endpoint}"
        body, content_type = _multipart({"api_key": self.settings.api_key, **fields})
        req = urlrequest.Request(url, data=body, method="POST", headers={
            "User-Agent": self.settings.marker(), "Content-Type": content_type})
        try:
            with urlrequest.urlopen(req, timeout=self.settings.timeout) as resp:
                status, text = resp.status, resp.read()
        except urlerror.HTTPError as exc:
            status, text = exc.code, exc.read()
        except (urlerror.URLError, OSError) as exc:
            raise TNSError(url, f"cannot reach TNS: {exc}") from exc
        try:
            answer = json.loads(text) if text else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        return status, answer

    def send(self, report: Mapping[str, Any]) -> str:
        """POST ``report`` to ``set/bulk-report``; returns TNS's report id.

        Raises:
            TNSError: TNS refused it (with its status and message) or gave no report id.
        """
        url = f"{self.settings.api_url}/set/bulk-report"
        status, answer = self._post("set/bulk-report", {"data": json.dumps(report)})
        code = answer.get("id_code", status)
        if status != 200 or code != 200:
            raise TNSError(url, f"report refused: {answer.get('id_message', 'no message')}; "
                                f"{json.dumps(answer.get('data', {}))}", int(code))
        report_id = (answer.get("data") or {}).get("report_id")
        if not report_id:
            raise TNSError(url, f"no report_id in the answer: {json.dumps(answer)}")
        log.info("TNS accepted bulk report %s for processing", report_id)
        return str(report_id)

    def reply(self, report_id: str) -> TNSReply:
        """Poll ``get/bulk-report-reply`` until it answers (at most ``reply_attempts`` times,
        ``reply_interval`` s apart); 404 (not processed yet) and 429 (rate limit) are retried.

        Raises:
            TNSError: still unprocessed after the last attempt, or refused.
        """
        url = f"{self.settings.api_url}/get/bulk-report-reply"
        attempts = max(1, self.settings.reply_attempts)
        for attempt in range(1, attempts + 1):
            status, answer = self._post("get/bulk-report-reply", {"report_id": report_id})
            code = answer.get("id_code", status)
            if status == 200 and code == 200:
                data = answer.get("data") or {}
                feedback = (data.get("feedback") or {}).get("at_report") or []
                return TNSReply(report_id, feedback, _objnames(feedback))
            if not {404, 429} & {status, code}:
                raise TNSError(url, f"report {report_id}: {answer.get('id_message', '')} "
                                    f"{json.dumps(answer.get('data', {}))}", int(code))
            log.info("TNS report %s not processed yet (%d/%d)", report_id, attempt, attempts)
            if attempt < attempts:
                self._sleep(self.settings.reply_interval)
        raise TNSError(url, f"report {report_id} still not processed after {attempts} "
                            f"polls, {self.settings.reply_interval:g} s apart", 404)

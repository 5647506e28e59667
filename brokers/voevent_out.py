"""Match reports as VOEvent 2.0 packets (built with voevent-parse).

A *counterpart* VOEvent (role ``observation``) announces an optical alert matching an event:
WhereWhen is the alert's position (degrees ICRS) and detection time (UTC), What holds every
match field as a Param. Identity follows the VOEvent 2.0 standard (IVOA REC, section 2.8):

* every counterpart packet has its own IVORN, one per event revision and alert
  (``ivo://<stream>#<event_id>_<alert_id>_r<revision>``), so sending the same report again
  repeats the same IVORN while a later revision's report is a new packet;
* it cites the GCN notice it answers (``followup``) when that notice was a VOEvent
  (``Match.notice_ivorn``; JSON and Avro notices have no IVORN and are named in the
  description and the ``event_id``/``event_revision`` Params instead);
* a later revision's packet for an alert matched before cites the earlier packet
  (``supersedes``, ``Match.supersedes_revision``);
* a *retraction* packet has its own IVORN and cites the revoked counterpart packet
  (``retraction``).

Kafka keys stay ``event_id|alert_id`` (compaction keeps the latest state of a pair).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import fields
from urllib.parse import quote

import voeventparse as vp
from lxml import etree

from mmcross.model.match import Match

log = logging.getLogger(__name__)

DEFAULT_AUTHOR_IVORN = "ivo://mmcross"
COUNTERPART_STREAM = "mmcross/counterpart"
RETRACTION_STREAM = "mmcross/retraction"
# Rubin's astrometric uncertainty is far below an arcsecond; the match report carries none,
# so WhereWhen states this conservative radius (degrees).
POSITION_ERROR_DEG = 1.0 / 3600.0

_UNITS = {"ra": "deg", "dec": "deg", "time_offset": "d", "searched_area": "deg2",
          "prob_density": "deg-2", "distance_mean": "Mpc", "distance_std": "Mpc"}
_UCDS = {"ra": "pos.eq.ra", "dec": "pos.eq.dec", "alert_time": "time.epoch",
         "event_time": "time.epoch", "distance_mean": "pos.distance",
         "distance_std": "stat.stdev;pos.distance", "p_chance": "stat.probability",
         "credible_level": "stat.probability", "alert_id": "meta.id",
         "object_id": "meta.id", "event_id": "meta.id"}


def _stream_id(match: Match, revision: int | None = None) -> str:
    rev = match.event_revision if revision is None else revision
    return quote(f"{match.event_id}_{match.alert_id}_r{rev}", safe=":-._")


def counterpart_ivorn(match: Match, *, stream: str = COUNTERPART_STREAM,
                      revision: int | None = None) -> str:
    """The IVORN of the counterpart VOEvent of ``match`` (event id, alert id and the event
    revision, by default the match's own)."""
    return f"ivo://{stream}#{_stream_id(match, revision)}"


def _utc(iso: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def voevent_param(name: str, value: object, *, unit: str | None = None,
                  ucd: str | None = None) -> vp.Param | None:
    """A ``What/Param`` holding ``value`` with its VOEvent ``dataType`` (``None`` for None):
    booleans as ``"true"``/``"false"``, floats written with full precision (``repr``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        data_type, text = "string", "true" if value else "false"
    elif isinstance(value, int):
        data_type, text = "int", str(value)
    elif isinstance(value, float):
        data_type, text = "float", repr(value)
    else:
        data_type, text = "string", str(value)
    return vp.Param(name, value=text, unit=unit, ucd=ucd, dataType=data_type, ac=False)


def _param(name: str, value: object) -> vp.Param | None:
    return voevent_param(name, value, unit=_UNITS.get(name), ucd=_UCDS.get(name))


def _cite(v: vp.Voevent, ivorn: str, cite_type: str) -> None:
    # vp.add_why/add_citations fail on Python >= 3.10 (collections.Iterable), hence lxml.
    citations = v.Citations if v.xpath("Citations") else etree.SubElement(v, "Citations")
    citations.append(vp.EventIvorn(ivorn, cite_type))


def _base(match: Match, *, ivorn_stream: str, stream_id: str, author_ivorn: str,
          date: dt.datetime | None) -> vp.Voevent:
    v = vp.Voevent(stream=ivorn_stream, stream_id=stream_id, role=vp.definitions.roles.observation)
    vp.set_who(v, date=date or dt.datetime.now(dt.UTC).replace(microsecond=0),
               author_ivorn=author_ivorn.removeprefix("ivo://"))
    vp.set_author(v, shortName="mmcross", title="mmcross multi-messenger crossmatch")
    vp.add_where_when(
        v,
        coords=vp.Position2D(ra=match.ra, dec=match.dec, err=POSITION_ERROR_DEG,
                             units=vp.definitions.units.degrees,
                             system=vp.definitions.sky_coord_system.utc_icrs_geo),
        obs_time=_utc(match.alert_time),
        observatory_location=vp.definitions.observatory_location.geosurface,
    )
    params = [_param(f.name, getattr(match, f.name)) for f in fields(Match)]
    v.What.extend([p for p in params if p is not None])
    return v


def counterpart_voevent(match: Match, *, author_ivorn: str = DEFAULT_AUTHOR_IVORN,
                        stream: str = COUNTERPART_STREAM, event_ivorn: str | None = None,
                        date: dt.datetime | None = None) -> bytes:
    """VOEvent 2.0 (UTF-8 XML) announcing the alert of ``match`` as a possible counterpart.

    Args:
        match: the match; position degrees ICRS, times ISO 8601 UTC.
        author_ivorn: the author's IVORN (``Who/AuthorIVORN``).
        stream: IVORN authority/path of counterpart packets.
        event_ivorn: IVORN of the GCN notice of the event, cited as ``followup``; by default
            the match's own ``notice_ivorn``.
        date: packet creation time (``Who/Date``, UTC), by default now.
    """
    v = _base(match, ivorn_stream=stream, stream_id=_stream_id(match),
              author_ivorn=author_ivorn, date=date)
    how = etree.SubElement(v, "How")
    notice = event_ivorn if event_ivorn is not None else match.notice_ivorn
    how.Description = (f"Optical alert {match.alert_id} inside the credible region of "
                       f"{match.event_id} revision {match.event_revision} "
                       f"(searched probability {match.credible_level:.3f}), answering "
                       f"{notice or 'its GCN notice (no IVORN: a JSON or Avro notice)'}")
    etree.SubElement(v, "Why").append(vp.Inference(
        probability=max(0.0, min(1.0, 1.0 - match.p_chance)), relation="associated",
        name=match.event_id, concept="optical counterpart candidate"))
    if notice:
        _cite(v, notice, vp.definitions.cite_types.followup)
    if match.supersedes_revision is not None:
        _cite(v, counterpart_ivorn(match, stream=stream, revision=match.supersedes_revision),
              vp.definitions.cite_types.supersedes)
    return vp.dumps(v)


def retraction_voevent(match: Match, *, author_ivorn: str = DEFAULT_AUTHOR_IVORN,
                       stream: str = RETRACTION_STREAM,
                       counterpart_stream: str = COUNTERPART_STREAM,
                       date: dt.datetime | None = None) -> bytes:
    """VOEvent 2.0 retracting the counterpart VOEvent of ``match`` (``cite="retraction"``)."""
    v = _base(match, ivorn_stream=stream, stream_id=_stream_id(match),
              author_ivorn=author_ivorn, date=date)
    _cite(v, counterpart_ivorn(match, stream=counterpart_stream),
          vp.definitions.cite_types.retraction)
    v.Citations.Description = (f"Match of alert {match.alert_id} with {match.event_id} "
                               "retracted")
    return vp.dumps(v)

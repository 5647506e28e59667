"""A partner's own transient detections: parsing, validation and authenticated acceptance.

A detection record is a JSON object (a payload is one record or a JSON list of them)::

    {"partner": "goto", "detection_id": "GOTO-2026-0042",
     "ra": 150.1, "dec": -20.3,          # degrees ICRS
     "error": 0.0003,                     # 1-sigma position error, degrees (>= 0)
     "time": "2026-11-24T01:02:03Z",      # ISO UTC ... or "mjd_tai": 61003.04
     "properties": {"mag": 18.2}}         # optional numbers (null = unknown)

Unknown keys are refused, as are non-numeric values, coordinates outside RA [0, 360] /
Dec [-90, 90] deg, errors beyond ``max_error_deg``, times outside the survey era
(:mod:`mmcross.model.plausibility`), duplicate ids and more than ``max_records`` records.

Over Kafka (:mod:`mmcross.listeners.partner_kafka`), a message with header ``mmcross-kind:
detections`` carries such a payload under the same signature scheme as event submissions
(:func:`mmcross.listeners.partners.sign_submission`); :func:`accept_detections` performs the checks.
The result is a :class:`Detections` (plain columns, same fields as
``mmcross.matchers.partner_streams.Detections``, which the stream matcher converts it to).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from astropy.time import Time

from mmcross.listeners.partners import PartnerRegistry, SubmissionRefusedError
from mmcross.model.alert import check_coordinates
from mmcross.model.detections import Detections
from mmcross.model.errors import BadCoordinatesError
from mmcross.model.plausibility import implausible_mjd

log = logging.getLogger(__name__)

KIND_HEADER = "mmcross-kind"
KIND_DETECTIONS = "detections"
MAX_RECORDS = 10_000
MAX_ID_CHARS = 128
MAX_PROPERTIES = 16
MAX_PROPERTY_NAME_CHARS = 32
MAX_ERROR_DEG = 1.0
RECORD_KEYS = frozenset({"partner", "detection_id", "ra", "dec", "error", "time", "mjd_tai",
                         "properties"})




def _refuse(where: str, message: str) -> SubmissionRefusedError:
    return SubmissionRefusedError("bad_detection", f"{where}: {message}")


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(where, f"{what} must be a number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise _refuse(where, f"{what} must be finite, got {value!r}")
    return x


def _time_mjd_tai(rec: dict[str, Any], where: str) -> float:
    if ("time" in rec) == ("mjd_tai" in rec):
        raise _refuse(where, "needs exactly one of 'time' (ISO UTC) and 'mjd_tai'")
    if "mjd_tai" in rec:
        mjd = _number(rec["mjd_tai"], where, "mjd_tai")
    else:
        text = rec["time"]
        if not isinstance(text, str) or len(text) > 64:
            raise _refuse(where, f"time must be an ISO UTC string, got {text!r:.80}")
        try:
            mjd = float(Time(text.rstrip("Zz"), format="isot", scale="utc").tai.mjd)
        except ValueError as exc:
            raise _refuse(where, f"time {text!r} is not ISO 8601 UTC: {exc}") from exc
    if (why := implausible_mjd(mjd, "time")) is not None:
        raise _refuse(where, why)
    return mjd


def parse_detections(payload: bytes | str, partner: str | None = None, *,
                     max_records: int = MAX_RECORDS, max_error_deg: float = MAX_ERROR_DEG,
                     where: str = "detections") -> Detections:
    """Parse and validate a detection payload (one JSON record or a list of them).

    Args:
        payload: UTF-8 JSON.
        partner: the (authenticated) partner; every record's ``partner`` must equal it.
            When None, all records must name the same partner.
        max_records: most records accepted in one payload.
        max_error_deg: largest accepted 1-sigma position error, degrees.
        where: where the payload came from, for messages.

    Raises:
        SubmissionRefusedError: reason ``bad_detection`` (not JSON, wrong types or keys,
            sizes, partner mismatch, duplicate ids) or ``bad_coordinates``.
    """
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(where, f"not JSON: {exc}") from exc
    records = data if isinstance(data, list) else [data]
    if not records:
        raise _refuse(where, "no detection records")
    if len(records) > max_records:
        raise _refuse(where, f"{len(records)} records exceed the limit of {max_records}")
    ids: list[str] = []
    cols = np.empty((len(records), 4), dtype=np.float64)  # ra, dec, err, mjd_tai
    props: dict[str, np.ndarray] = {}
    for i, rec in enumerate(records):
        at = f"{where} record {i}"
        if not isinstance(rec, dict):
            raise _refuse(at, f"must be a JSON object, got {type(rec).__name__}")
        unknown = set(rec) - RECORD_KEYS
        if unknown:
            raise _refuse(at, f"unknown keys {sorted(unknown)[:5]} (known: {sorted(RECORD_KEYS)})")
        name = rec.get("partner")
        if not isinstance(name, str) or not name:
            raise _refuse(at, "'partner' must be a non-empty string")
        if partner is None:
            partner = name
        if name != partner:
            raise _refuse(at, f"partner {name!r:.80} is not the submitting partner {partner!r}")
        det_id = rec.get("detection_id")
        if isinstance(det_id, int) and not isinstance(det_id, bool):
            det_id = str(det_id)
        if not isinstance(det_id, str) or not 0 < len(det_id) <= MAX_ID_CHARS:
            raise _refuse(at, f"detection_id must be a string of 1..{MAX_ID_CHARS} characters")
        ids.append(det_id)
        for j, key in enumerate(("ra", "dec", "error")):
            if key not in rec:
                raise _refuse(at, f"missing {key!r} (degrees)")
            cols[i, j] = _number(rec[key], at, key)
        if not 0.0 <= cols[i, 2] <= max_error_deg:
            raise _refuse(at, f"error {cols[i, 2]} deg is outside [0, {max_error_deg}]")
        cols[i, 3] = _time_mjd_tai(rec, at)
        extra = rec.get("properties", {})
        if extra is None:
            extra = {}
        if not isinstance(extra, dict) or len(extra) > MAX_PROPERTIES:
            raise _refuse(at, f"properties must be an object of at most {MAX_PROPERTIES} numbers")
        for key, value in extra.items():
            if not 0 < len(key) <= MAX_PROPERTY_NAME_CHARS:
                raise _refuse(at, f"property name {key!r:.40} must have 1..."
                              f"{MAX_PROPERTY_NAME_CHARS} characters")
            column = props.get(key)
            if column is None:
                if len(props) >= MAX_PROPERTIES:
                    raise _refuse(where, f"more than {MAX_PROPERTIES} distinct properties")
                column = props[key] = np.full(len(records), np.nan)
            column[i] = math.nan if value is None else _number(value, at, f"properties.{key}")
    if len(set(ids)) != len(ids):
        raise _refuse(where, "duplicate detection_id in one payload")
    try:
        check_coordinates(cols[:, 0], cols[:, 1], what=f"{where} record")
    except BadCoordinatesError as exc:
        raise SubmissionRefusedError("bad_coordinates", str(exc)) from exc
    assert partner is not None
    return Detections(detection_id=np.asarray(ids, dtype=object), ra=cols[:, 0].copy(),
                      dec=cols[:, 1].copy(), err_deg=cols[:, 2].copy(),
                      mjd_tai=cols[:, 3].copy(), properties=props, partner=partner)


def accept_detections(registry: PartnerRegistry, partner: str, payload: bytes,
                      signature: str | bytes | None, *, peer_host: str = "",
                      where: str = "detections") -> Detections:
    """Authenticate, size-check, rate-limit and parse a partner's detection payload.

    The checks of a Kafka event submission: the signature is the partner's
    ``HMAC-SHA256(sha256(token), name + "\\n" + payload)`` (hex), the payload is within the
    partner's ``max_bytes``, the partner declared a ``stream`` rule (else nothing would
    match), its token bucket has a token; then :func:`parse_detections`.

    Raises:
        SubmissionRefusedError: with ``reason`` ``unknown_partner``, ``bad_credential``,
            ``host_not_allowed``, ``oversized``, ``no_stream_rule``, ``rate_limited``,
            ``bad_detection`` or ``bad_coordinates``.
    """
    p = registry.authenticate_signature(partner, payload, signature, peer_host)
    if len(payload) > p.max_bytes:
        raise SubmissionRefusedError("oversized", f"{where}: detections of {len(payload)} bytes "
                                     f"from partner {p.name!r} exceed its {p.max_bytes}")
    if not p.stream:
        raise SubmissionRefusedError("no_stream_rule", f"{where}: partner {p.name!r} has no "
                                     f"[partners.{p.name}.stream] rule")
    if not p.bucket.take():
        raise SubmissionRefusedError("rate_limited",
                                     f"{where}: rate limit of partner {p.name!r} exceeded")
    detections = parse_detections(payload, p.name, where=where)
    log.debug("accepted %d detections from partner %s at %s", len(detections), p.name, where)
    return detections

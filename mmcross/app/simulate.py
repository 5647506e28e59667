"""A simulated night of Rubin alerts, with injected counterparts of known events.

:func:`simulate_night` plans the night up front as numpy arrays (the ground truth): visits of
``alerts_per_visit`` alerts sharing one midpoint time, each in a field of radius
:data:`FIELD_RADIUS_DEG` centred uniformly on the sky below Dec +30 deg, plus the injected
alerts drawn from each given localization (:meth:`Localization.sample`) uniformly within a
time range. Packets are then built lazily, one visit at a time, filling every field of the
chosen lsst-alert-packet schema with plausible values: ``n_previous`` previous detections
for alerts of known objects (``None`` for first detections), three cutouts of
``cutout_bytes`` random bytes. Within a visit the history and forced photometry arrays are
one shared template (their values do not follow each object), which keeps packets realistic
in size and structure while making :meth:`SimulatedNight.messages` fast: it encodes the
per-alert parts (head with ``diaSource``, ``diaObject``, cutouts) and splices in the
visit's pre-encoded history bytes. :meth:`SimulatedNight.records` yields the same alerts
as full dicts (``encode_wire(record)`` gives the same bytes).

Times are MJD TAI, positions degrees ICRS.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import fastavro.schema
import numpy as np

from mmcross.brokers.alert_decoding import wire_header
from mmcross.brokers.alert_files import write_wire_directory, write_wire_stream
from mmcross.brokers.rubin_schemas import RubinSchema, get_schema, latest_schema_id
from mmcross.model.alert import AlertBatch

if TYPE_CHECKING:
    from mmcross.model.localization import Localization

FIELD_RADIUS_DEG = 1.75
MAX_DEC_DEG = 30.0
_SOURCE_ID_BASE = 170_000_000_000_000_000
_HISTORY_ID_BASE = 100_000_000_000_000_000
_VISIT_BASE = 2025_10_01_00000
_BANDS = "ugrizy"

Injection = tuple["Localization", int, float, float]
"""(localization, number of counterparts, start, end MJD TAI)."""


def _uniform_cap(n: int, rng: np.random.Generator, max_dec: float) -> tuple[np.ndarray, ...]:
    """``n`` positions uniform on the sphere below ``max_dec`` degrees (ra, dec degrees)."""
    z = rng.uniform(-1.0, math.sin(math.radians(max_dec)), n)
    return rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(z))


def _in_field(ra0: float, dec0: float, n: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform in a cap of FIELD_RADIUS_DEG around (ra0, dec0), degrees."""
    rho = np.radians(FIELD_RADIUS_DEG) * np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    d0, a0 = np.radians(dec0), np.radians(ra0)
    sin_d = np.sin(d0) * np.cos(rho) + np.cos(d0) * np.sin(rho) * np.cos(phi)
    dec = np.arcsin(np.clip(sin_d, -1, 1))
    ra = a0 + np.arctan2(np.sin(phi) * np.sin(rho) * np.cos(d0),
                         np.cos(rho) - np.sin(d0) * sin_d)
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _base_type(avro_type: Any) -> tuple[Any, bool]:
    """(non-null branch, nullable) of a field type."""
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        return rest[0], len(rest) < len(avro_type)
    return avro_type, False


def _plausible(name: str, avro_type: Any, rng: np.random.Generator, mjd: float) -> Any:
    """A plausible value for a primitive (or nullable primitive) field of a Rubin record."""
    base, nullable = _base_type(avro_type)
    if isinstance(base, dict):
        if base.get("logicalType", "").startswith("timestamp"):
            return int((mjd - 40587.0) * 86400e6)
        if base.get("type") == "record":
            return None
        base = base.get("type")
    lname = name.lower()
    if nullable and lname.endswith("id"):
        return None
    if base == "boolean":
        return False
    if base == "string":
        return str(rng.choice(list(_BANDS))) if lname in ("band", "filtername") else "wfd"
    if base in ("int", "long"):
        if lname == "detector":
            return int(rng.integers(0, 189))
        return int(rng.integers(0, 100 if base == "int" else 1 << 40))
    if base in ("float", "double"):
        if "mjd" in lname or "tai" in lname:
            return float(mjd)
        if "err" in lname:
            return float(abs(rng.normal(0.0, 0.05)) + 1e-3)
        if "flux" in lname:
            return float(rng.normal(5000.0, 2000.0))
        return float(rng.normal(0.0, 1.0))
    raise ValueError(f"no plausible value for field {name!r} of type {avro_type!r}")


def _template(record_type: dict[str, Any], rng: np.random.Generator, mjd: float
              ) -> dict[str, Any]:
    return {f["name"]: _plausible(f["name"], f["type"], rng, mjd) for f in record_type["fields"]}


def _record_type(fields: list[dict[str, Any]], name: str) -> dict[str, Any]:
    t, _ = _base_type(next(f for f in fields if f["name"] == name)["type"])
    return t["items"] if t.get("type") == "array" else t


@dataclass
class _Parts:
    """The alert schema split in consecutive top-level field groups, each encodable alone."""

    head: dict[str, Any]
    history: dict[str, Any]
    obj: dict[str, Any]
    tail: dict[str, Any]
    names: tuple[tuple[str, ...], ...]


def _split(schema: RubinSchema) -> _Parts:
    expanded = fastavro.schema.expand_schema(schema.definition)
    fields = expanded["fields"]
    names = [f["name"] for f in fields]
    i_ds, i_obj = names.index("diaSource"), names.index("diaObject")
    groups = (fields[:i_ds + 1], fields[i_ds + 1:i_obj], fields[i_obj:i_obj + 1],
              fields[i_obj + 1:])
    parsed = [fastavro.parse_schema({"type": "record", "name": f"part{k}", "fields": g})
              for k, g in enumerate(groups)]
    return _Parts(*parsed, names=tuple(tuple(f["name"] for f in g) for g in groups))


def _encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


@dataclass
class SimulatedNight:
    """The plan (ground truth) of a simulated night; packets are built on iteration.

    Attributes:
        schema_id: Rubin schema id of the packets (``major * 100 + minor``).
        alert_id, object_id: ``diaSourceId`` / ``diaObjectId`` (int64) per alert, time order.
        ra, dec: degrees ICRS; mjd_tai: midpoint times, MJD TAI.
        is_new: first detections (no ``prvDiaSources``).
        visit: visit id per alert (injected alerts have visits of their own).
        injected: per injection, the alert ids of its counterparts.
    """

    schema_id: int
    alert_id: np.ndarray
    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mjd_tai: np.ndarray
    is_new: np.ndarray
    visit: np.ndarray
    injected: list[np.ndarray]
    seed: int
    n_previous: int = 30
    cutout_bytes: int = 20_000
    _parts: _Parts | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.alert_id)

    @property
    def schema(self) -> RubinSchema:
        return get_schema(self.schema_id)

    def truth(self) -> AlertBatch:
        """The planned alerts as a batch (no packets)."""
        return AlertBatch(self.alert_id, self.object_id.astype(str).astype(object), self.ra,
                          self.dec, self.mjd_tai, is_new=self.is_new)

    # ------------------------------------------------------------------ building
    def _visits(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """(alert rows, per-visit templates) for each visit, in time order."""
        schema = self.schema
        fields = fastavro.schema.expand_schema(schema.definition)["fields"]
        ds_type = _record_type(fields, "diaSource")
        obj_type = _record_type(fields, "diaObject")
        forced_type = (_record_type(fields, "prvDiaForcedSources")
                       if any(f["name"] == "prvDiaForcedSources" for f in fields) else None)
        change = np.flatnonzero(np.diff(self.visit)) + 1
        for rows in np.split(np.arange(len(self)), change):
            if len(rows) == 0:
                continue
            v = int(self.visit[rows[0]])
            rng = np.random.default_rng([self.seed, v])
            mjd = float(self.mjd_tai[rows[0]])
            ds = _template(ds_type, rng, mjd)
            for key in ("visit", "ccdVisitId"):
                if key in ds:
                    ds[key] = v
            history = []
            for k in range(self.n_previous):
                h = dict(ds)
                h["diaSourceId"] = _HISTORY_ID_BASE + v * 1000 + k
                h[schema.time_field] = mjd - 3.0 * (k + 1)
                h[schema.ra_field] = float(rng.uniform(0, 360))
                h[schema.dec_field] = float(rng.uniform(-90, MAX_DEC_DEG))
                history.append(h)
            forced = None
            if forced_type is not None:
                forced = [_template(forced_type, rng, mjd - 3.0 * (k + 1))
                          for k in range(self.n_previous)]
            yield rows, {"rng": rng, "diaSource": ds, "history": history, "forced": forced,
                         "diaObject": _template(obj_type, rng, mjd)}

    def _alert_values(self, i: int, tpl: dict[str, Any]) -> dict[str, Any]:
        """Every top-level field of alert ``i`` (history left to the caller)."""
        schema = self.schema
        sid, oid = int(self.alert_id[i]), int(self.object_id[i])
        ds = dict(tpl["diaSource"])
        ds.update({"diaSourceId": sid, "diaObjectId": oid, schema.ra_field: float(self.ra[i]),
                   schema.dec_field: float(self.dec[i]),
                   schema.time_field: float(self.mjd_tai[i])})
        obj = dict(tpl["diaObject"])
        obj["diaObjectId"] = oid
        for key, val in (("ra", self.ra[i]), ("dec", self.dec[i]), ("decl", self.dec[i])):
            if key in obj:
                obj[key] = float(val)
        rng = tpl["rng"]
        values: dict[str, Any] = {}
        for name in schema.top_fields:
            if name in ("alertId", "diaSourceId"):
                values[name] = sid
            elif name == "diaSource":
                values[name] = ds
            elif name == "diaObject":
                values[name] = obj
            elif name.startswith("cutout"):
                values[name] = rng.bytes(self.cutout_bytes)
            elif name == "observation_reason":
                values[name] = "wfd"
            elif name == "target_name":
                values[name] = None
            else:
                values[name] = None
        return values

    def records(self) -> Iterator[dict[str, Any]]:
        """The alerts as full schema records (dicts), in time order."""
        for rows, tpl in self._visits():
            for i in rows:
                rec = self._alert_values(int(i), tpl)
                if not self.is_new[i]:
                    rec["prvDiaSources"] = tpl["history"]
                    if "prvDiaForcedSources" in rec:
                        rec["prvDiaForcedSources"] = tpl["forced"]
                yield rec

    def messages(self) -> Iterator[bytes]:
        """The alerts as Confluent wire-format messages (fast path), in time order."""
        if self._parts is None:
            self._parts = _split(self.schema)
        parts = self._parts
        header = wire_header(self.schema_id)
        for rows, tpl in self._visits():
            hist_names = parts.names[1]
            old = {n: None for n in hist_names}
            old["prvDiaSources"] = tpl["history"]
            if "prvDiaForcedSources" in old:
                old["prvDiaForcedSources"] = tpl["forced"]
            history = {False: _encode(parts.history, old),
                       True: _encode(parts.history, dict.fromkeys(hist_names))}
            for i in rows:
                values = self._alert_values(int(i), tpl)
                yield b"".join((
                    header,
                    _encode(parts.head, {n: values[n] for n in parts.names[0]}),
                    history[bool(self.is_new[i])],
                    _encode(parts.obj, {n: values[n] for n in parts.names[2]}),
                    _encode(parts.tail, {n: values[n] for n in parts.names[3]}),
                ))

    # ------------------------------------------------------------------ writers
    def write_container(self, path: str | Path, codec: str = "null") -> int:
        """Write the night as one Avro container file (embedded schema); returns the count."""
        with open(path, "wb") as f:
            fastavro.writer(f, self.schema.definition, self.records(), codec=codec)
        return len(self)

    def write_wire_stream(self, path: str | Path) -> int:
        """Write the night as a wire stream file (see :mod:`mmcross.brokers.alert_files`)."""
        return write_wire_stream(path, self.messages())

    def write_wire_directory(self, directory: str | Path) -> int:
        """Write one wire-format message per file, ``<diaSourceId>.avro``."""
        return write_wire_directory(directory, self.messages(),
                                    (str(a) for a in self.alert_id))


def simulate_night(n_alerts: int, *, start_mjd_tai: float, rng: np.random.Generator,
                   duration_days: float = 0.4, schema_id: int | None = None,
                   n_previous: int = 30, cutout_bytes: int = 20_000,
                   inject: Sequence[Injection] = (), alerts_per_visit: int = 10_000,
                   new_fraction: float = 0.3, first_id: int = 0) -> SimulatedNight:
    """Plan a night of ``n_alerts`` background Rubin alerts plus injected counterparts.

    Args:
        n_alerts: background alerts (the injected ones come on top).
        start_mjd_tai: start of the night, MJD TAI; visits are spread over ``duration_days``.
        rng: random generator (the night is reproducible from it).
        schema_id: lsst-alert-packet schema id, by default the latest shipped.
        n_previous: previous detections in the packets of already known objects.
        cutout_bytes: size of each of the three cutouts, bytes.
        inject: (localization, n, start, end MJD TAI): ``n`` first-detection alerts drawn
            from the localization, uniformly in time within [start, end].
        alerts_per_visit: alerts per visit (one field, one midpoint time).
        new_fraction: fraction of background alerts that are first detections.
        first_id: offset of this night's ``diaSourceId`` numbering, so that several
            simulated nights replayed together keep their ids unique.

    Returns:
        The :class:`SimulatedNight` (ground truth; iterate ``messages()`` or write it).
    """
    schema_id = latest_schema_id() if schema_id is None else schema_id
    get_schema(schema_id)
    n_visits = max(1, math.ceil(n_alerts / alerts_per_visit))
    visit_times = np.sort(start_mjd_tai + rng.uniform(0.0, duration_days, n_visits))
    centres = _uniform_cap(n_visits, rng, MAX_DEC_DEG - FIELD_RADIUS_DEG)
    per_visit = np.diff(np.linspace(0, n_alerts, n_visits + 1).round().astype(int))
    ra_l, dec_l, t_l, v_l, new_l = [], [], [], [], []
    for k in range(n_visits):
        ra, dec = _in_field(centres[0][k], centres[1][k], per_visit[k], rng)
        ra_l.append(ra)
        dec_l.append(dec)
        t_l.append(np.full(per_visit[k], visit_times[k]))
        v_l.append(np.full(per_visit[k], _VISIT_BASE + k, np.int64))
        new_l.append(rng.random(per_visit[k]) < new_fraction)
    inj_rows: list[np.ndarray] = []
    offset = n_alerts
    for j, (loc, n, t0, t1) in enumerate(inject):
        ra, dec = loc.sample(int(n), rng)
        ra_l.append(ra)
        dec_l.append(dec)
        t_l.append(rng.uniform(t0, t1, int(n)))
        v_l.append(_VISIT_BASE + n_visits + j * 1_000_000 + np.arange(int(n), dtype=np.int64))
        new_l.append(np.ones(int(n), bool))
        inj_rows.append(np.arange(offset, offset + int(n)))
        offset += int(n)
    ra, dec = np.concatenate(ra_l), np.concatenate(dec_l)
    mjd, visit, is_new = np.concatenate(t_l), np.concatenate(v_l), np.concatenate(new_l)
    order = np.lexsort((visit, mjd))
    alert_id = np.empty(len(ra), np.int64)
    alert_id[order] = _SOURCE_ID_BASE + first_id + np.arange(len(ra), dtype=np.int64)
    # A new object's id is its first source's id; known objects get ids of their own.
    object_id = np.where(is_new, alert_id, alert_id - _SOURCE_ID_BASE + _HISTORY_ID_BASE // 2)
    injected = [alert_id[r] for r in inj_rows]
    return SimulatedNight(
        schema_id=schema_id, alert_id=alert_id[order], object_id=object_id[order],
        ra=ra[order], dec=dec[order], mjd_tai=mjd[order], is_new=is_new[order],
        visit=visit[order], injected=injected, seed=int(rng.integers(0, 1 << 62)),
        n_previous=n_previous, cutout_bytes=cutout_bytes)

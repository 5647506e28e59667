"""The Rubin alert schemas shipped by ``lsst-alert-packet``, looked up by schema id.

The schema id is the one of the Confluent wire format and of
:meth:`lsst.alert.packet.Schema.get_schema_id`: ``major * 100 + minor`` (v9.0 -> 900,
v11.1 -> 1101). Each :class:`RubinSchema` also carries a *prefix* writer schema, the alert
record cut after its ``diaSource`` field: Avro encodes a record's fields one after the
other, so decoding that prefix of a packet and ignoring the remaining bytes is valid and
skips the history, the object and the cutouts (most of a packet's bytes).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from lsst.alert.packet.schema import Schema, get_latest_schema_version, get_schema_root

from mmcross.model.errors import BadAlertError

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^lsst\.v(\d+)_(\d+)\.alert$")


@dataclass(frozen=True)
class RubinSchema:
    """One Rubin alert schema version and the field names matching needs.

    Attributes:
        schema_id: ``major * 100 + minor``.
        version: ``"major.minor"``.
        definition: the full alert schema (parsed by fastavro), to encode or fully decode.
        prefix: writer schema of the alert record cut after ``diaSource`` (parsed).
        prefix_reader: reader schema of that prefix keeping only the ``diaSource`` fields
            matching needs (ids, position, time): fastavro skips the others without building
            them, about 3x faster than materialising the whole ``diaSource``.
        prefix_fields: names of the top-level fields in ``prefix``.
        ra_field, dec_field: ``diaSource`` position fields, degrees ICRS (``dec`` or, before
            v5, ``decl``).
        time_field: ``diaSource`` midpoint time field, MJD TAI (``midpointMjdTai`` or, before
            v5, ``midPointTai``).
        top_fields: names of all the top-level alert fields, in order.
        flux_field: ``diaSource`` difference-image PSF flux field, nJy (``psfFlux`` or,
            before v5, ``psFlux``); ``""`` when the schema has none.
    """

    schema_id: int
    version: str
    definition: dict[str, Any]
    prefix: dict[str, Any]
    prefix_reader: dict[str, Any]
    prefix_fields: tuple[str, ...]
    ra_field: str
    dec_field: str
    time_field: str
    top_fields: tuple[str, ...]
    flux_field: str = ""

    @property
    def name(self) -> str:
        """The alert record's full name, e.g. ``"lsst.v9_0.alert"``."""
        return str(self.definition["name"])


def schema_id_from_name(name: str) -> int | None:
    """``"lsst.v9_0.alert"`` -> 900; ``None`` for a name that is not a Rubin alert record."""
    m = _NAME_RE.match(name or "")
    return None if m is None else int(m.group(1)) * 100 + int(m.group(2))


def _strip(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if not k.startswith("__")}


def build_schema(schema_id: int, version: str, definition: dict[str, Any]) -> RubinSchema:
    """A :class:`RubinSchema` from an alert schema definition (e.g. from a Schema Registry)."""
    top = [f["name"] for f in definition["fields"]]
    if "diaSource" not in top:
        raise ValueError(f"Rubin schema {version} has no diaSource field")
    cut = top.index("diaSource") + 1
    prefix_def = _strip(copy.deepcopy(definition))
    prefix_def["fields"] = prefix_def["fields"][:cut]
    ds_type = prefix_def["fields"][cut - 1]["type"]
    ds_fields = {f["name"] for f in ds_type["fields"]}
    dec_field = "dec" if "dec" in ds_fields else "decl"
    time_field = "midpointMjdTai" if "midpointMjdTai" in ds_fields else "midPointTai"
    flux_field = next((f for f in ("psfFlux", "psFlux") if f in ds_fields), "")
    needed = {"diaSourceId", "ra", dec_field, time_field, "diaObjectId", "ssObjectId",
              flux_field}
    reader_def = {k: v for k, v in prefix_def.items() if k != "fields"}
    reader_def["fields"] = [{**prefix_def["fields"][cut - 1], "type": {
        **ds_type, "fields": [f for f in ds_type["fields"] if f["name"] in needed]}}]
    return RubinSchema(
        schema_id=schema_id,
        version=version,
        definition=fastavro.parse_schema(_strip(definition)),
        prefix=fastavro.parse_schema(prefix_def),
        prefix_reader=fastavro.parse_schema(reader_def),
        prefix_fields=tuple(top[:cut]),
        ra_field="ra",
        dec_field=dec_field,
        time_field=time_field,
        top_fields=tuple(top),
        flux_field=flux_field,
    )


@functools.cache
def _schema_files() -> dict[int, tuple[str, Path]]:
    """schema id -> (version, file) of every alert schema lsst-alert-packet ships, from its
    folder names (``<major>/<minor>/lsst.v<major>_<minor>.alert.avsc``): nothing is parsed
    here, so a process that reads one schema does not pay for the other fifteen."""
    out: dict[int, tuple[str, Path]] = {}
    root = Path(get_schema_root())
    for path in sorted(root.glob("*/*/*alert.avsc")):
        major, minor = path.parent.parent.name, path.parent.name
        if major.isdigit() and minor.isdigit():
            out[int(major) * 100 + int(minor)] = (f"{major}.{minor}", path)
    return out


@functools.cache
def _load(schema_id: int) -> RubinSchema:
    """Parse and prepare one shipped schema (once per process)."""
    version, path = _schema_files()[schema_id]
    schema = Schema.from_file(str(path))
    if schema.get_schema_id() != schema_id:
        raise ValueError(f"{path}: schema id {schema.get_schema_id()}, its folder says "
                         f"{schema_id}")
    log.debug("loaded Rubin alert schema %s (%d)", version, schema_id)
    return build_schema(schema_id, version, schema.definition)


def known_schema_ids() -> list[int]:
    """Every schema id shipped by the installed lsst-alert-packet, ascending."""
    return sorted(_schema_files())


def latest_schema_id() -> int:
    """The schema id of lsst-alert-packet's latest schema (``schema/latest.txt``)."""
    major, minor = get_latest_schema_version()
    return major * 100 + minor


def get_schema(schema_id: int, *, source: str = "") -> RubinSchema:
    """The schema registered under ``schema_id``.

    Raises:
        BadAlertError: no such schema in lsst-alert-packet (``source`` says where from).
    """
    if schema_id not in _schema_files():
        raise BadAlertError(
            f"unknown Rubin alert schema id {schema_id} "
            f"(known: {', '.join(map(str, known_schema_ids()))})", source=source or "alert")
    return _load(schema_id)

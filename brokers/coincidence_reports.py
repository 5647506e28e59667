"""Coincidence records out: Avro (``config/coincidence.avsc``), JSON Lines, VOEvent 2.0, Kafka.

Every sink takes what the engine emits (:class:`mmcross.model.coincidence.Coincidence`: new,
recomputed, revoked). The Kafka key is ``gw_event_id|ext_event_id``. The VOEvent cites both
parent notices by IVORN (``followup``) when they came as VOEvents; a JSON or Avro notice has
no IVORN and is cited by its event id in a ``parent_event_ids`` Param. A revocation is a
VOEvent citing the coincidence's own IVORN with ``cite="retraction"``.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import fastavro
import voeventparse as vp
from lxml import etree

from mmcross.brokers.voevent_out import voevent_param
from mmcross.config import CONFIG_DIR
from mmcross.model.coincidence import Coincidence

COINCIDENCE_SCHEMA_PATH = CONFIG_DIR / "coincidence.avsc"
COINCIDENCE_STREAM = "mmcross/coincidence"
DEFAULT_AUTHOR_IVORN = "ivo://mmcross"

_UNITS = {"time_difference": "s", "window_lo": "s", "window_hi": "s", "gw_far": "Hz",
          "ext_far": "Hz", "temporal_far": "Hz", "spacetime_far": "Hz", "weighted_far": "Hz",
          "far_threshold": "Hz", "combined_area90": "deg2", "lvk_temporal_far": "Hz",
          "lvk_spacetime_far": "Hz", "lvk_time_difference": "s", "lvk_combined_area90": "deg2"}


@functools.cache
def coincidence_schema() -> dict[str, Any]:
    """The parsed Avro schema ``mmcross.coincidence``."""
    with open(COINCIDENCE_SCHEMA_PATH) as f:
        return fastavro.parse_schema(json.load(f))


def coincidence_to_avro(record: Coincidence) -> bytes:
    """A coincidence -> schemaless Avro bytes of ``mmcross.coincidence``."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, coincidence_schema(), record.to_record())
    return out.getvalue()


def coincidence_from_avro(data: bytes) -> Coincidence:
    """Schemaless Avro bytes of ``mmcross.coincidence`` -> :class:`Coincidence`."""
    return Coincidence.from_record(
        fastavro.schemaless_reader(io.BytesIO(data), coincidence_schema(), None))


def coincidence_to_json(record: Coincidence) -> str:
    """One record as a one-line JSON object (infinite FARs written as ``null``: JSON has no
    infinity; Avro keeps them)."""
    values = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in record.to_record().items()}
    return json.dumps(values, allow_nan=False, separators=(",", ":"))


class CoincidenceJsonLines:
    """Appends coincidence records to a JSON Lines file (flush + fsync per batch)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def write_coincidences(self, records: Sequence[Coincidence]) -> None:
        text = "".join(coincidence_to_json(r) + "\n" for r in records)
        if text:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def coincidence_ivorn(record: Coincidence, *, stream: str = COINCIDENCE_STREAM) -> str:
    """IVORN of the coincidence VOEvent of this pair and revision."""
    return f"ivo://{stream}#{quote(record.coincidence_id, safe=':-._+')}_r{record.revision}"


def _param(name: str, value: object) -> vp.Param | None:
    return voevent_param(name, value, unit=_UNITS.get(name))


def coincidence_voevent(record: Coincidence, *, author_ivorn: str = DEFAULT_AUTHOR_IVORN,
                        stream: str = COINCIDENCE_STREAM,
                        date: dt.datetime | None = None) -> bytes:
    """VOEvent 2.0 (UTF-8 XML) of a coincidence record, or of its revocation.

    What holds every record field as a Param (FARs in Hz, times in s); Citations cite the
    parents' notice IVORNs (``followup``), or for a revocation the coincidence's own IVORN
    (``retraction``). Parents without an IVORN are named in the ``parent_event_ids`` Param.
    """
    v = vp.Voevent(stream=stream, stream_id=coincidence_ivorn(record, stream=stream).split("#")[1]
                   + ("_retraction" if record.retracted else ""),
                   role=vp.definitions.roles.observation)
    vp.set_who(v, date=date or dt.datetime.now(dt.UTC).replace(microsecond=0),
               author_ivorn=author_ivorn.removeprefix("ivo://"))
    vp.set_author(v, shortName="mmcross", title="mmcross multi-messenger crossmatch")
    params = [_param(k, val) for k, val in record.to_record().items()]
    params.append(_param("parent_event_ids", f"{record.gw_event_id} {record.ext_event_id}"))
    v.What.extend([p for p in params if p is not None])
    how = etree.SubElement(v, "How")
    how.Description = (f"{record.gw_event_id} and {record.ext_event_id}: t_GW - t_ext = "
                       f"{record.time_difference:.3f} s within [{record.window_lo:g}, "
                       f"{record.window_hi:g}] s; joint FARs computed as ligo-raven does")
    citations = etree.SubElement(v, "Citations")
    if record.retracted:
        citations.append(vp.EventIvorn(coincidence_ivorn(record, stream=stream),
                                       vp.definitions.cite_types.retraction))
    else:
        for ivorn in (record.gw_ivorn, record.ext_ivorn):
            if ivorn:
                citations.append(vp.EventIvorn(ivorn, vp.definitions.cite_types.followup))
    if len(citations) == 0:
        v.remove(citations)
    else:
        citations.Description = ("Coincidence revoked" if record.retracted
                                 else "Parent notices of the coincidence")
    return vp.dumps(v)


class CoincidenceVOEventDirectory:
    """Writes ``DIR/<coincidence>_r<revision>.xml`` per record (``...retraction.xml`` for a
    revocation), atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, record: Coincidence) -> Path:
        stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in record.coincidence_id)
        suffix = "retraction.xml" if record.retracted else "xml"
        return self.directory / f"{stem}_r{record.revision}.{suffix}"

    def write_coincidences(self, records: Sequence[Coincidence]) -> None:
        for record in records:
            path = self.path_for(record)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(coincidence_voevent(record))
            os.replace(tmp, path)

    def close(self) -> None:
        pass


class Producing(Protocol):
    """What the Kafka sink needs of the service's output (``TransactionalOutput``)."""

    def produce(self, topic: str, key: bytes, value: bytes, headers: Any) -> None: ...


class KafkaCoincidenceSink:
    """One Avro ``mmcross.coincidence`` record per coincidence (key ``gw_id|ext_id``), added to
    the service's open Kafka transaction (``output``), header ``mmcross-kind: coincidence``."""

    def __init__(self, output: Producing, topic: str) -> None:
        self.output = output
        self.topic = topic
        self.sent = 0

    def write_coincidences(self, records: Sequence[Coincidence]) -> None:
        for r in records:
            headers = [("mmcross-kind", b"coincidence"),
                       ("mmcross-retracted", b"true" if r.retracted else b"false")]
            self.output.produce(self.topic, r.key.encode(), coincidence_to_avro(r), headers)
        self.sent += len(records)

    def close(self) -> None:
        """Nothing to flush: the service commits or aborts the transaction."""

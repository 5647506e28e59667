"""Match reports on disk and on the wire: Avro (``config/match_report.avsc``) and JSON Lines.

The Avro record ``mmcross.match_report`` has exactly the fields of
:class:`mmcross.model.match.Match` (the distance fields nullable); :func:`match_to_avro` writes it
schemaless (the Kafka message value), :func:`match_from_avro` reads it back.
:class:`JsonLinesWriter` appends one JSON object per match and line, and flushes and fsyncs
after every batch, so a crash loses at most the batch being written.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import fastavro

from mmcross.config import CONFIG_DIR
from mmcross.model.match import MATCH_FIELDS, Match
from mmcross.model.match_batch import MatchBatch

log = logging.getLogger(__name__)

MATCH_REPORT_SCHEMA_PATH = CONFIG_DIR / "match_report.avsc"


@functools.cache
def match_report_schema() -> dict[str, Any]:
    """The parsed Avro schema ``mmcross.match_report``."""
    with open(MATCH_REPORT_SCHEMA_PATH) as f:
        return fastavro.parse_schema(json.load(f))


def match_records(matches: Iterable[Match]) -> list[dict[str, Any]]:
    """The report records (``Match.to_record()`` dicts) of a :class:`MatchBatch` (made from
    its columns, no :class:`Match` objects) or of any iterable of matches."""
    if isinstance(matches, MatchBatch):
        return matches.records()
    return [m.to_record() for m in matches]


def record_to_avro(record: dict[str, Any]) -> bytes:
    """A report record (:func:`match_records`) -> schemaless Avro bytes of
    ``mmcross.match_report``."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, match_report_schema(), record)
    return out.getvalue()


def match_to_avro(match: Match) -> bytes:
    """A match -> schemaless Avro bytes of ``mmcross.match_report``."""
    return record_to_avro(match.to_record())


def match_from_avro(data: bytes) -> Match:
    """Schemaless Avro bytes of ``mmcross.match_report`` -> :class:`Match`."""
    record = fastavro.schemaless_reader(io.BytesIO(data), match_report_schema(), None)
    return Match(**record)


def record_to_json(record: dict[str, Any]) -> str:
    """A report record as a one-line JSON object (NaN/inf refused: they are not JSON)."""
    return json.dumps(record, allow_nan=False, separators=(",", ":"))


def match_to_json(match: Match) -> str:
    """One match as a one-line JSON object (NaN/inf refused: they are not JSON)."""
    return record_to_json(match.to_record())


def json_lines(matches: Sequence[Match]) -> str:
    """The JSON Lines text of a batch of matches (one object per line, each line ended)."""
    return "".join(record_to_json(r) + "\n" for r in match_records(matches))


def match_from_json(line: str) -> Match:
    """A JSON object (one line of a report file) -> :class:`Match`."""
    record = json.loads(line)
    return Match(**{k: record[k] for k in MATCH_FIELDS if k in record})


class JsonLinesWriter:
    """Append matches to a JSON Lines file, durably (flush + fsync per :meth:`write` call).

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self.count = 0

    def write(self, matches: Iterable[Match]) -> int:
        """Append a batch of matches; returns how many were written."""
        text = json_lines(matches if isinstance(matches, Sequence) else list(matches))
        if not text:
            return 0
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())
        n = text.count("\n")
        self.count += n
        log.debug("appended %d match reports to %s", n, self.path)
        return n

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def iter_json_lines(path: str | Path) -> Iterator[Match]:
    """The matches of a JSON Lines report file, in order (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield match_from_json(line)


def read_json_lines(path: str | Path) -> list[Match]:
    """All the matches of a JSON Lines report file."""
    return list(iter_json_lines(path))

"""Match reports: the Avro schema mirrors Match, Avro and JSON Lines round trips."""

from __future__ import annotations

import dataclasses
import io
import json

import fastavro
import pytest

from mmcross.brokers.reports import (
    MATCH_REPORT_SCHEMA_PATH,
    JsonLinesWriter,
    match_from_avro,
    match_to_avro,
    read_json_lines,
)
from mmcross.model.match import Match
from tests.helpers import make_match


def test_avsc_has_exactly_the_match_fields():
    schema = json.loads(MATCH_REPORT_SCHEMA_PATH.read_text())
    assert schema["namespace"] + "." + schema["name"] == "mmcross.match_report"
    assert [f["name"] for f in schema["fields"]] == [f.name for f in dataclasses.fields(Match)]
    nullable = {f["name"] for f in schema["fields"] if isinstance(f["type"], list)}
    assert nullable == {"distance_mean", "distance_std", "supersedes_revision"}


@pytest.mark.parametrize("match", [make_match(), make_match(distance_mean=None,
                                                             distance_std=None, retracted=True),
                                   make_match(notice_ivorn="ivo://nasa.gsfc.gcn/Fermi#x",
                                              supersedes_revision=1)])
def test_avro_round_trip(match):
    data = match_to_avro(match)
    assert match_from_avro(data) == match
    # an independent reader with the schema file decodes the same record
    schema = fastavro.schema.load_schema(str(MATCH_REPORT_SCHEMA_PATH))
    assert fastavro.schemaless_reader(io.BytesIO(data), schema, None) == match.to_record()


def test_json_lines_append_and_read_back(tmp_path):
    path = tmp_path / "out" / "matches.jsonl"
    first = [make_match(i) for i in range(3)]
    with JsonLinesWriter(path) as w:
        assert w.write(first) == 3
        assert w.write([]) == 0
    with JsonLinesWriter(path) as w:  # appends, never truncates
        w.write([make_match(9, distance_mean=None, distance_std=None)])
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["event_id"] == "lvk:S230518h"
                                   for line in lines)
    assert read_json_lines(path) == first + [make_match(9, distance_mean=None, distance_std=None)]


def test_json_lines_refuses_nan(tmp_path):
    with JsonLinesWriter(tmp_path / "m.jsonl") as w, pytest.raises(ValueError):
        w.write([make_match(p_chance=float("nan"))])

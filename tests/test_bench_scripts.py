"""Smoke tests of the benchmark scripts (tiny inputs; numbers are not checked, answers are)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from astropy.time import Time

from mmcross.listeners import read_notice_file

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_replay():
    return _load("bench_replay")


def test_shifted_grb_notice_moves_trigger_and_issue_time_by_whole_days(
        bench_replay, shared_file, tmp_path):
    src = shared_file("gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml")
    dst = tmp_path / "shifted.xml"
    dst.write_text(bench_replay.shift_voevent_dates(src.read_text(), -bench_replay.DAY_SHIFT))
    before, after = read_notice_file(src), read_notice_file(dst)
    assert after.event_id == before.event_id
    days = bench_replay.DAY_SHIFT
    assert abs((before.trigger_time - after.trigger_time).to_value("day") - days) < 1e-9
    assert abs((before.notice_time - after.notice_time).to_value("day") - days) < 1e-9
    # now 0.19 d after the S230518h trigger (2023-05-18T12:59:45 UTC), inside the GW night
    gw = Time("2023-05-18T12:59:45", scale="utc")
    assert 0.15 < (after.trigger_time - gw).to_value("day") < 0.25


@pytest.mark.slow
def test_bench_replay_tiny_run_agrees_with_the_peer(bench_replay, shared_file, tmp_path,
                                                     capsys):
    shared_file("gcn/json/fink-mm/S230518h-initial.json")
    # main() raises AssertionError when mmcross and the fastavro + ligo peer disagree.
    assert bench_replay.main(["--n", "150", "--inject", "6", "--n-previous", "2",
                              "--cutout-bytes", "200", "--repeat", "0",
                              "--variant-tolerance", "0.05", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| default")
            or line.startswith("| tolerance 0.05")]
    assert len(rows) == 2
    found = re.findall(r"windows: (\d+), found by both: (\d+)", out)
    assert len(found) == 2 and all(a == b and int(a) > 0 for a, b in found)

"""Smoke test of scripts/bench_coincidence.py on a few events (numbers are not checked; the
script itself asserts that its overlaps agree with ligo-raven's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_coincidence.py"


@pytest.mark.slow
def test_bench_coincidence_runs_and_prints_its_table(shared_data):
    done = subprocess.run([sys.executable, str(SCRIPT), "--events", "20", "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| search, one pair (map + overlaps + FARs) |" in done.stdout
    assert "space-time FARs of the pairs (Hz): " in done.stdout

"""The soak of ``scripts/soak.py``, small: three kill -9 and one broker SIGKILL + restart.

Real GCN notices (a GW with two updates and a retraction, a neutrino, two GRBs) and 10,000
simulated Rubin alerts go through ``mmcross listen`` while it is killed three times at random
moments and the broker is killed and restarted once; a ``read_committed`` reader then finds
every record the offline engine expects (reports, revocations, VOEvents, dead letters) exactly
once on each output topic and nothing else. The full run (200,000 alerts, 20 kills, two broker
restarts, a second listener) is ``python scripts/soak.py`` (README).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _soak_module():
    if "soak" in sys.modules:
        return sys.modules["soak"]
    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.kafka
def test_three_kills_and_a_broker_kill_lose_and_repeat_nothing(local_kafka, shared_file,
                                                               tmp_path: Path) -> None:
    shared_file("gcn/json/userguide/MS181101ab-retraction.json")  # skips without the data
    soak = _soak_module()
    result = soak.run_soak(local_kafka, n_alerts=10_000, kills=3, broker_restarts=1,
                           second_listener=False, seed=3, workdir=tmp_path)
    assert result["kills"] == 3
    topics = result["topics"]
    assert topics["reports"]["expected"] > 20 and topics["reports (revocations)"]["expected"] > 0
    for name, row in topics.items():
        assert (row["lost"], row["duplicated"], row["unexpected"]) == (0, 0, 0), (name, row)

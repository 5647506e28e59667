"""The TOM Toolkit broker module against a running ``mmcross serve`` over a store holding a real
Swift notice and its counterparts: the API client in this environment, and (marker ``tom``)
the broker inside a real TOM Toolkit Django project built in its own venv
(``scripts/tom_env.sh``), from query form to ``Target``."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time

from mmcross.app.engine import Engine
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from mmcross.tom.api import MatchQuery, MMCrossAPI, MMCrossAPIError, alert_key, split_key
from tests.helpers import BAT, DEADLINE, REPO, JSONServer

EVENT = "swift:1208389"
# Two Rubin objects at growing distances from the BAT position (RA 270.6441, Dec 24.4866 deg,
# 90% radius 0.05 deg), after the burst; the last one is outside the 90% region.
OFFSETS_DEG = [0.0, 0.02, 0.035, 0.06]
OBJECTS = ["313853923578413057", "313853923578413057", "313853923578413099",
           "313853923578413123"]


@pytest.fixture(scope="module")
def served(shared_file, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``mmcross serve`` on a SQLite store after the engine saw the BAT notice and alerts."""
    url = f"sqlite:///{tmp_path_factory.mktemp('tom')}/store.sqlite"
    engine = Engine(Config.load(), store=Store(url))
    engine.on_notice(read_notice_file(shared_file(BAT)))
    n = len(OFFSETS_DEG)
    t = Time("2024-01-12T19:00:00", scale="utc").tai.mjd + 0.01 * np.arange(n)
    engine.on_alerts(AlertBatch(np.arange(n) + 8_000_000_000_001, np.array(OBJECTS, object),
                                np.full(n, 270.6441), 24.4866 + np.array(OFFSETS_DEG), t))
    engine.close()
    with Store(url) as store:
        matches = [m.to_record() for m in store.matches(EVENT, include_retracted=False)]
    proc = subprocess.Popen([sys.executable, "-m", "mmcross", "serve", "--db", url, "--port",
                             "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    try:
        base = ""
        while not base:
            try:
                line = lines.get(timeout=DEADLINE)
            except queue.Empty:
                pytest.fail("mmcross serve printed no address")
            if line.startswith("mmcross serve: http://"):
                base = line.split()[2]
        yield {"url": base, "store": url, "matches": matches}
    finally:
        proc.terminate()
        proc.wait(DEADLINE)


def test_the_api_client_returns_the_stored_counterparts(served) -> None:
    records = MMCrossAPI(served["url"]).matches(MatchQuery(event_id=EVENT))
    by_key = {alert_key(r): r for r in records}
    assert sorted(by_key) == sorted(alert_key(m) for m in served["matches"])
    assert len(served["matches"]) == 3  # the 0.06 deg alert is outside the 90% region
    for m in served["matches"]:
        record = by_key[alert_key(m)]
        for name, value in m.items():
            assert record[name] == value, name
        assert m["object_id"] in record["object_url"]


def test_the_query_caps_credible_level_and_p_chance(served) -> None:
    api = MMCrossAPI(served["url"])
    levels = sorted(m["credible_level"] for m in served["matches"])
    cap = (levels[0] + levels[1]) / 2
    kept = api.matches(MatchQuery(event_id=EVENT, max_credible_level=cap))
    assert [r["credible_level"] for r in kept] == [levels[0]]
    chances = sorted(m["p_chance"] for m in served["matches"])
    kept = api.matches(MatchQuery(event_id=EVENT, max_p_chance=chances[1]))
    assert sorted(r["p_chance"] for r in kept) == chances[:2]
    assert api.matches(MatchQuery(event_id="lvk:S000000xx")) == []


def test_one_counterpart_by_its_key(served) -> None:
    m = served["matches"][0]
    record = MMCrossAPI(served["url"]).match(alert_key(m))
    assert (record["alert_id"], record["ra"], record["dec"]) == (m["alert_id"], m["ra"],
                                                                 m["dec"])
    with pytest.raises(MMCrossAPIError) as err:
        MMCrossAPI(served["url"]).match(f"{EVENT}|1")
    assert err.value.status == 404


def test_the_events_are_listed(served) -> None:
    events = MMCrossAPI(served["url"]).events()
    assert [e["event_id"] for e in events] == [EVENT]
    assert events[0]["matches"] == len(served["matches"])


def test_keys_split_back() -> None:
    assert split_key("lvk:S230518h|7912941781254298") == ("lvk:S230518h", 7912941781254298)
    with pytest.raises(MMCrossAPIError):
        split_key("lvk:S230518h")


def test_records_without_the_documented_fields_are_refused() -> None:
    recorded = [{"event_id": EVENT, "alert_id": 1, "ra": 1.0, "dec": 2.0}]
    with _answering(200, recorded) as server, pytest.raises(MMCrossAPIError, match="lacks"):
        MMCrossAPI(server.url).matches(MatchQuery())
    with _answering(500, {"detail": "boom"}) as server, pytest.raises(MMCrossAPIError) as err:
        MMCrossAPI(server.url).events()
    assert err.value.status == 500


def test_an_unreachable_server_is_a_typed_error() -> None:
    with _answering(200, []) as server:
        pass  # closed again: nothing listens there now
    with pytest.raises(MMCrossAPIError, match="cannot reach"):
        MMCrossAPI(server.url, timeout=5.0).events()


# -- inside a real TOM -------------------------------------------------------------------

# Run by the TOM's own Django (`manage.py shell -c`): the query form, a saved BrokerQuery, the
# broker's fetch, generic alerts, and one counterpart made a Target.
QUERY = """\
import json
from tom_alerts.alerts import get_service_class
from tom_targets.models import Target

broker = get_service_class("mmcross")()
form = broker.form(data={"query_name": "counterparts", "broker": "mmcross",
                         "event_id": %(event)r, "max_credible_level": 0.9})
assert form.is_valid(), form.errors
query = form.save()
alerts, feedback = broker.fetch_alerts(query.parameters)
generic = [broker.to_generic_alert(a) for a in alerts]
target = broker.to_target(broker.fetch_alert(generic[0].id))
_none, unknown = broker.fetch_alerts({"event_id": "lvk:S000000xx"})
print("RESULT " + json.dumps({
    "feedback": feedback, "unknown_feedback": unknown,
    "alerts": [{"id": g.id, "name": g.name, "ra": g.ra, "dec": g.dec, "score": g.score,
                "url": g.url} for g in generic],
    "target": {"id": generic[0].id, "name": target.name, "ra": target.ra, "dec": target.dec,
               "type": target.type},
    "targets_in_db": Target.objects.count()}))
"""


def _tom_python() -> str:
    """The TOM venv's python: ``$MMCROSS_TOM_PYTHON`` (scripts/test.sh) or built now."""
    if os.environ.get("MMCROSS_TOM_PYTHON"):
        return os.environ["MMCROSS_TOM_PYTHON"]
    out = subprocess.run(["bash", str(REPO / "scripts" / "tom_env.sh")], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        message = f"TOM Toolkit venv could not be built: {out.stderr[-2000:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.tom
def test_a_tom_queries_mmcross_and_makes_a_target(served, tmp_path: Path) -> None:
    python = _tom_python()
    project = tmp_path / "tom"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}

    def manage(*args: str) -> str:
        out = subprocess.run([python, "manage.py", *args], cwd=project, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    made = subprocess.run([python, str(REPO / "scripts" / "tom_project.py"), served["url"],
                           str(project)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert made.returncode == 0, made.stderr[-3000:]
    manage("migrate", "--noinput")
    printed = manage("shell", "-c", QUERY % {"event": EVENT})
    result = json.loads(next(line for line in printed.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    assert result["feedback"] == ""
    assert result["unknown_feedback"] == "mmcross knows no event lvk:S000000xx"
    stored = {alert_key(m): m for m in served["matches"]}
    assert sorted(a["id"] for a in result["alerts"]) == sorted(stored)
    for alert in result["alerts"]:
        m = stored[alert["id"]]
        assert (alert["name"], alert["ra"], alert["dec"], alert["score"]) == (
            m["object_id"], m["ra"], m["dec"], m["p_chance"])
        assert m["object_id"] in alert["url"]
    target, m = result["target"], stored[result["target"]["id"]]
    assert (target["name"], target["type"]) == (m["object_id"], "SIDEREAL")
    assert target["ra"] == pytest.approx(m["ra"], abs=1e-9)
    assert target["dec"] == pytest.approx(m["dec"], abs=1e-9)
    assert result["targets_in_db"] == 1


def _answering(status: int, body: object) -> JSONServer:
    """A local server answering every request with ``status`` and ``body`` (recorded JSON)."""
    return JSONServer(lambda *_request: (status, body))

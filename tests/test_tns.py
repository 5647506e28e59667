"""TNS AT reports: built from a store holding a real Swift notice and Rubin-like detections,
and sent to a local stand-in of TNS's bulk-report API (127.0.0.1) that checks the form fields
and the bot's User-Agent as TNS documents them and answers as TNS does."""

from __future__ import annotations

import email.parser
import email.policy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time

from mmcross.app.cli import main
from mmcross.app.engine import Engine
from mmcross.brokers.tns import TNSClient, TNSError, TNSSettings, build_at_report
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.alert import AlertBatch
from mmcross.model.config import Config
from tests.helpers import BAT, JSONServer

EVENT = "swift:1208389"
OBJECT = "313853923578413057"
API_KEY = "0123456789abcdef0123456789abcdef01234567"
MARKER = 'tns_marker{"tns_id": 12345, "type": "bot", "name": "mmcross_bot"}'
# One object near the BAT position (RA 270.6441, Dec 24.4866 deg): seen a day before the
# burst (outside its time window, so not a match), then three times after it.
DETECTIONS = [("2024-01-11T18:00:00", 22.41), ("2024-01-12T19:00:00", 21.30),
              ("2024-01-12T20:30:00", 20.90), ("2024-01-12T23:00:00", float("nan"))]


@pytest.fixture(scope="module")
def stored(shared_file, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A SQLite store after the engine saw the BAT notice and the detections."""
    url = f"sqlite:///{tmp_path_factory.mktemp('tns')}/store.sqlite"
    config = Config.load()
    engine = Engine(config, store=Store(url))
    engine.on_notice(read_notice_file(shared_file(BAT)))
    n = len(DETECTIONS)
    mjd = Time([t for t, _ in DETECTIONS], scale="utc").tai.mjd
    batch = AlertBatch(np.arange(n) + 7_000_000_000_001, np.array([OBJECT] * n, object),
                       270.6441 + 0.001 * np.arange(n), np.full(n, 24.4866), mjd,
                       mag=np.array([m for _, m in DETECTIONS]))
    found = engine.on_alerts(batch)
    engine.close()
    with Store(url) as store:
        matches = {m.alert_id: m for m in store.matches(EVENT)}
    assert sorted(m.alert_id for m in found) == sorted(matches) == list(batch.alert_id[1:])
    return {"url": url, "alert_ids": batch.alert_id.tolist(), "matches": matches,
            "ra": batch.ra.tolist()}


def test_report_has_position_discovery_photometry_and_event_remarks(stored, tmp_path) -> None:
    alert = stored["alert_ids"][2]
    out = tmp_path / "report.json"
    assert main(["tns-report", EVENT, str(alert), "--db", stored["url"], "--out", str(out),
                 "--band", "r"]) == 0
    report = json.loads(out.read_text())["at_report"]["0"]
    assert float(report["ra"]["value"]) == pytest.approx(stored["ra"][2], abs=1e-7)
    assert float(report["dec"]["value"]) == pytest.approx(24.4866, abs=1e-7)
    assert report["ra"]["units"] == report["dec"]["units"] == "arcsec"
    assert float(report["ra"]["error"]) == 1.0
    # Discovery: the first stored detection of the object, in UTC (not TAI: 37 s apart).
    assert report["discovery_datetime"] == "2024-01-11 18:00:00.000"
    assert report["internal_name"] == OBJECT
    assert report["discovery_data_source_id"] == "165" and report["at_type"] == "1"
    group = report["photometry"]["photometry_group"]
    assert [p["obsdate"] for p in group.values()] == [
        "2024-01-11 18:00:00.000", "2024-01-12 19:00:00.000", "2024-01-12 20:30:00.000"]
    assert [p["flux"] for p in group.values()] == ["22.410", "21.300", "20.900"]
    assert {p["filter_value"] for p in group.values()} == {"162"}
    assert {p["flux_units"] for p in group.values()} == {"1"}
    assert {p["instrument_value"] for p in group.values()} == {"287"}
    assert report["non_detection"]["archiveid"] == "0"
    assert "limiting magnitude" in report["non_detection"]["archival_remarks"]
    match = stored["matches"][alert]
    remarks = report["remarks"]
    for text in (EVENT, "grb event", "Swift-BAT", f"credible level {match.credible_level:.4f}",
                 f"p_chance {match.p_chance:.3g}", "No Rubin non-detection or limiting "
                 "magnitude is stored"):
        assert text in remarks


def test_without_a_band_the_filter_stays_a_placeholder(stored, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    assert main(["tns-report", EVENT, str(stored["alert_ids"][1]), "--db", stored["url"],
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())["at_report"]["0"]
    assert {p["filter_value"] for p in report["photometry"]["photometry_group"].values()} \
        == {""}
    assert "neither is the band" in report["remarks"]
    assert "filter" in capsys.readouterr().out


def test_an_unmatched_alert_is_refused(stored, tmp_path) -> None:
    assert main(["tns-report", EVENT, str(stored["alert_ids"][0]), "--db", stored["url"],
                 "--out", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_send_refuses_placeholders_before_any_request(stored, tmp_path) -> None:
    with TNSStandIn([]) as server:
        config = _config(tmp_path, server, reporting_group_id="")
        code = main(["tns-report", EVENT, str(stored["alert_ids"][1]), "--db", stored["url"],
                     "--out", str(tmp_path / "r.json"), "--band", "g", "--config", config,
                     "--send"])
        assert code == 2
        assert server.requests == []
    assert (tmp_path / "r.json").exists()  # the dry-run part was still written


def test_send_posts_the_form_as_tns_documents_and_polls_the_reply(
        stored, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MMCROSS_TNS_API_KEY", API_KEY)
    monkeypatch.setenv("MMCROSS_TNS_BOT_ID", "12345")
    monkeypatch.setenv("MMCROSS_TNS_BOT_NAME", "mmcross_bot")
    answers = [(200, {"id_code": 200, "id_message": "OK", "data": {"report_id": "98765"}}),
               (404, {"id_code": 404, "id_message": "Unknown report", "data": {}}),
               (404, {"id_code": 404, "id_message": "Unknown report", "data": {}}),
               (200, {"id_code": 200, "id_message": "OK", "data": {"feedback": {"at_report": [
                   {"100": {"message": "Transient object was inserted.",
                            "objname": "2024abc", "message_id": 100}}]}}})]
    out = tmp_path / "r.json"
    with TNSStandIn(answers) as server:
        config = _config(tmp_path, server)
        assert main(["tns-report", EVENT, str(stored["alert_ids"][3]), "--db", stored["url"],
                     "--out", str(out), "--band", "i", "--config", config, "--send"]) == 0
    assert "2024abc" in capsys.readouterr().out
    paths = [r["path"] for r in server.requests]
    assert paths == ["/api/set/bulk-report"] + ["/api/get/bulk-report-reply"] * 3
    for r in server.requests:
        assert r["user_agent"] == MARKER
        assert r["content_type"].startswith("multipart/form-data")
    sent = server.requests[0]["fields"]
    assert set(sent) == {"api_key", "data"}
    assert sent["api_key"] == API_KEY
    assert json.loads(sent["data"]) == json.loads(out.read_text())
    for r in server.requests[1:]:
        assert r["fields"] == {"api_key": API_KEY, "report_id": "98765"}


def test_reply_polling_is_bounded() -> None:
    answers = [(404, {"id_code": 404, "id_message": "Unknown report"})] * 5
    with TNSStandIn(answers) as server:
        settings = _settings(server, reply_attempts=3)
        with pytest.raises(TNSError) as err:
            TNSClient(settings, sleep=lambda _s: None).reply("1")
    assert err.value.status == 404
    assert len(server.requests) == 3


def test_a_wrong_key_or_bot_is_refused_with_the_tns_code_and_message() -> None:
    for wrong in ({"api_key": "0" * 40}, {"bot_name": "someone_else"}, {"bot_id": "54321"}):
        with TNSStandIn([(200, {"id_code": 200, "data": {"report_id": "1"}})]) as server, \
                pytest.raises(TNSError) as err:
            TNSClient(_settings(server, **wrong)).send({"at_report": {}})
        assert err.value.status == 401 and "Unauthorized" in str(err.value)


def test_a_revoked_match_is_no_counterpart(stored) -> None:
    match = replace(stored["matches"][stored["alert_ids"][1]], retracted=True)
    batch = AlertBatch(np.array([match.alert_id]), np.array([OBJECT], object),
                       np.array([match.ra]), np.array([match.dec]), np.array([60322.8]))
    with pytest.raises(TNSError, match="revoked"):
        build_at_report(None, match, batch, TNSSettings())


def test_no_bot_credentials_no_client() -> None:
    with pytest.raises(TNSError, match="MMCROSS_TNS_API_KEY"):
        TNSClient(TNSSettings(bot_id="1", bot_name="b"))


# -- the stand-in TNS ----------------------------------------------------------------------

class TNSStandIn(JSONServer):
    """Like TNS: 401 "Unauthorized" unless the bot's User-Agent is :data:`MARKER` and the
    form's ``api_key`` is :data:`API_KEY`; else ``answers`` in order (then HTTP 500). Records
    every request's path, multipart fields, User-Agent and Content-Type in :attr:`requests`."""

    def __init__(self, answers: list[tuple[int, dict]]) -> None:
        self.requests: list[dict] = []
        left = list(answers)

        def answer(_method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
            ctype = headers.get("Content-Type", "")
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body)
            fields = {part.get_param("name", header="content-disposition"):
                      part.get_payload(decode=True).decode() for part in message.iter_parts()}
            self.requests.append({"path": path, "fields": fields, "content_type": ctype,
                                  "user_agent": headers.get("User-Agent")})
            if headers.get("User-Agent") != MARKER or fields.get("api_key") != API_KEY:
                return 401, {"id_code": 401, "id_message": "Unauthorized", "data": {}}
            return left.pop(0) if left else (500, {"id_code": 500, "id_message": "no more"})

        super().__init__(answer)
        self.url += "/api"


def _settings(server: TNSStandIn, **kw) -> TNSSettings:
    values = dict(api_url=server.url, api_key=API_KEY, bot_id="12345", bot_name="mmcross_bot",
                  reply_interval=0.0, timeout=30.0)
    values.update(kw)
    return TNSSettings(**values)


def _config(tmp_path: Path, server: TNSStandIn, reporting_group_id: str = "999") -> str:
    path = tmp_path / "tns.toml"
    path.write_text(f'[tns]\napi_url = "{server.url}"\nreporting_group_id = '
                    f'"{reporting_group_id}"\nreporter = "A. Tester on behalf of mmcross"\n'
                    f"reply_interval = 0.0\nreply_attempts = 5\n")
    return str(path)

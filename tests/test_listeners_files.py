"""Every file of ../shared/data/gcn gives the expected Event id or the expected mmcross
error; random bytes and truncated notices only ever raise mmcross errors."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest

from mmcross.listeners import parse_notice, read_notice_file
from mmcross.model.errors import (
    BadNoticeError,
    MmcrossError,
    NotAnEventError,
    UnsupportedMissionError,
)
from mmcross.model.event import EventKind, NoticeAction

U, N = UnsupportedMissionError, NotAnEventError
GS = "gcn/json/gcn-schema/gcn/notices/"
V = "gcn/voevent/"
K = V + "fink-mm-kafka-2024-01/"

# Outcome with the default roles=("observation",). Test-role/mock notices -> NotAnEventError
# (they parse with roles=("observation", "test"), see test_test_role_notices_parse_when_kept).
EXPECTED: dict[str, object] = {
    "gcn/avro/igwn-schema/igwn.alerts.v1_0.Alert.avsc": U,  # Avro schema, not a notice
    "gcn/avro/igwn-schema/igwn.alerts.v1_0.AlertType.avsc": U,
    "gcn/avro/igwn-schema/igwn.alerts.v1_0.EventInfo.avsc": U,
    "gcn/avro/igwn-schema/igwn.alerts.v1_0.ExternalCoincInfo.avsc": U,
    "gcn/avro/userguide/MS181101ab-ext-update.avro": N,  # MS = mock superevent -> test
    "gcn/avro/userguide/MS181101ab-preliminary.avro": N,
    "gcn/json/fink-mm-kafka-2024-01/S240112e-preliminary-a.json": "lvk:S240112e",
    "gcn/json/fink-mm-kafka-2024-01/S240112y-preliminary-a.json": "lvk:S240112y",
    "gcn/json/fink-mm-kafka-2024-01/S240114b-preliminary-a.json": "lvk:S240114b",
    "gcn/json/fink-mm-kafka-2024-01/S240115k-preliminary-a.json": "lvk:S240115k",
    "gcn/json/fink-mm-kafka-2024-01/S240115k-preliminary-b.json": "lvk:S240115k",
    "gcn/json/fink-mm/MS230518e-initial.json": N,
    "gcn/json/fink-mm/S230518h-initial.json": "lvk:S230518h",
    GS + "boom/alert.example.json": U,  # optical alerts cross-matched by BOOM: not an event
    GS + "boom/alert.schema.json": U,
    GS + "burstcube/alert.example.json": "burstcube:240601000",
    GS + "burstcube/alert.schema.json": U,
    GS + "burstcube/test.example.json": "burstcube:240601000",  # alert_tense is "current"
    GS + "burstcube/test.schema.json": U,
    GS + "chime/frb.detection.example.json": "chime:427325191",
    GS + "chime/frb.retraction.example.json": "chime:427325191",
    GS + "chime/frb.schema.json": U,
    GS + "chime/frb.update.example.json": N,  # no position
    GS + "core/AdditionalInfo.schema.json": U,
    GS + "core/Alert.schema.json": U,
    GS + "core/DateTime.schema.json": U,
    GS + "core/DetectorStatus.schema.json": U,
    GS + "core/DispersionMeasure.schema.json": U,
    GS + "core/Distance.schema.json": U,
    GS + "core/Duration.schema.json": U,
    GS + "core/Event.schema.json": U,
    GS + "core/FollowUp.schema.json": U,
    GS + "core/GeoLocBase.schema.json": U,
    GS + "core/HardnessRatio.schema.json": U,
    GS + "core/Localization.example.json": U,  # a schema fragment, no mission
    GS + "core/Localization.schema.json": U,
    GS + "core/Photometry.schema.json": U,
    GS + "core/Pointing.example.json": U,
    GS + "core/Pointing.schema.json": U,
    GS + "core/Redshift.schema.json": U,
    GS + "core/Reporter.example.json": U,
    GS + "core/Reporter.schema.json": U,
    GS + "core/Spectral.example.json": U,
    GS + "core/Spectral.schema.json": U,
    GS + "core/Statistics.example.json": U,
    GS + "core/Statistics.schema.json": U,
    GS + "core/models/Band.schema.json": U,
    GS + "core/models/CutoffPowerLaw.schema.json": U,
    GS + "core/models/PowerLaw.schema.json": U,
    GS + "dsa110/frb.detection.example.json": "dsa110:240918aaaa",
    GS + "dsa110/frb.retraction.example.json": "dsa110:240918aaaa",
    GS + "dsa110/frb.schema.json": U,
    GS + "dsa110/frb.subsequent.example.json": "dsa110:240918aaaa",
    GS + "dsa110/frb.update.example.json": N,
    GS + "einstein_probe/wxt/alert.schema.json": U,
    GS + "fermi/gbm/trigger.alert.example.json": N,  # initial alert: no position yet
    GS + "fermi/gbm/trigger.final.example.json": "fermi-gbm:745121685",
    GS + "fermi/gbm/trigger.flight1.example.json": "fermi-gbm:745121685",
    GS + "fermi/gbm/trigger.flight2.example.json": "fermi-gbm:745121685",
    GS + "fermi/gbm/trigger.flight3.example.json": "fermi-gbm:745121685",
    GS + "fermi/gbm/trigger.ground1.example.json": "fermi-gbm:745121685",
    GS + "fermi/gbm/trigger.schema.json": U,
    GS + "fermi/lat/flare.example.json": N,  # flaring known source, no error region
    GS + "fermi/lat/flare.schema.json": U,
    GS + "glowbug/Alert.example.json": N,
    GS + "glowbug/Alert.schema.json": U,
    GS + "heasarc/archive_alert.example.json": U,
    GS + "heasarc/archive_alert.schema.json": U,
    GS + "icecube/lvk_nu_track_search.schema.json": U,
    GS + "icecube/single_neutrino_alerts.gold_bronze_track_alerts.example.json":
        "icecube:137840_57034692",
    GS + "icecube/single_neutrino_alerts.schema.json": U,
    GS + "km3net/alert.example.json": "km3net:1",
    GS + "km3net/alert.schema.json": U,
    GS + "maxi/gsc.known.example.json": N,  # known source, no error radius
    GS + "maxi/gsc.known.retraction.example.json": "maxi:0858800020",
    GS + "maxi/gsc.known.schema.json": U,
    GS + "maxi/gsc.unknown.circle.example.json": "maxi:9995289617",
    GS + "maxi/gsc.unknown.noerror.example.json": N,
    GS + "maxi/gsc.unknown.rectangle.example.json": "maxi:9995289617",
    GS + "maxi/gsc.unknown.retraction.example.json": "maxi:9995289617",
    GS + "maxi/gsc.unknown.schema.json": U,
    GS + "neutrino/Alert.schema.json": U,
    GS + "superk/sn_alert.real.example.json": "superk:SN.095001.000001",
    GS + "superk/sn_alert.schema.json": U,
    GS + "superk/sn_alert.test.example.json": N,  # alert_tense test
    GS + "svom/eclairs/trigger.catalog.example.json": N,  # alert_tense test
    GS + "svom/eclairs/trigger.not-slewing.example.json": N,
    GS + "svom/eclairs/trigger.wakeup.example.json": N,
    GS + "svom/grm/trigger.example.json": N,
    GS + "svom/trigger.schema.json": U,
    GS + "swift/bat/Guano.Retraction.example.json": "swift-bat-guano:694215995",
    GS + "swift/bat/Guano.example.json": N,  # initial GUANO: no position
    GS + "swift/bat/Guano.schema.json": U,
    GS + "swift/bat/guano.loc_arc_min.example.json": "swift-bat-guano:694215995",
    "gcn/json/igwn-schema/igwn.alerts.v1_0.Alert.schema.json": U,
    "gcn/json/userguide/MS181101ab-earlywarning.json": N,
    "gcn/json/userguide/MS181101ab-initial.json": N,
    "gcn/json/userguide/MS181101ab-preliminary.json": N,
    "gcn/json/userguide/MS181101ab-retraction.json": N,
    "gcn/json/userguide/MS181101ab-update.json": N,
    K + "Fermi_GBM_Fin_Pos_726773850-315.xml": "fermi-gbm:726773850",
    K + "Fermi_GBM_Flt_Pos_726724682-265.xml": "fermi-gbm:726724682",
    K + "Fermi_GBM_Flt_Pos_726773850-264.xml": "fermi-gbm:726773850",
    K + "Fermi_GBM_Flt_Pos_727029942-920.xml": "fermi-gbm:727029942",
    K + "Fermi_GBM_Gnd_Pos_726773850-268.xml": "fermi-gbm:726773850",
    K + "Fermi_GBM_Gnd_Pos_727009399-724.xml": "fermi-gbm:727009399",
    K + "Fermi_GBM_Gnd_Pos_727029942-923.xml": "fermi-gbm:727029942",
    K + "INTEGRAL_Wakeup_Pos_010472-924.xml": "integral:10472",
    K + "Swift_BAT_GRB_Pos_1208389-262.xml": "swift:1208389",
    K + "Swift_BAT_QuickLook_Pos_1208389-261.xml": "swift:1208389",
    K + "Swift_FOM_Obs_1208389-266.xml": N,  # figure of merit, not a position
    K + "Swift_UVOT_Pos_1208389-316.xml": "swift:1208389",
    V + "fink-mm/Fermi_GBM_Fin_Pos_680782656.xml": "fermi-gbm:680782656",
    V + "fink-mm/Fermi_GBM_Fin_Pos_683571622.xml": "fermi-gbm:683571622",
    V + "fink-mm/Fermi_GBM_Flt_Pos_680977982.xml": "fermi-gbm:680977982",
    V + "fink-mm/Fermi_GBM_Gnd_Pos_681547990.xml": "fermi-gbm:681547990",
    V + "fink-mm/INTEGRAL_Refined_Pos_010042.xml": "integral:10042",
    V + "fink-mm/INTEGRAL_Wakeup_Pos_010042.xml": "integral:10042",
    V + "fink-mm/IceCube_BRONZE_136918_45252263.xml": "icecube:136918_45252263",
    V + "fink-mm/IceCube_Cascade_136889_25590129.xml": "icecube:136889_25590129",
    V + "fink-mm/Swift_BAT_GRB_Pos_1118357.xml": "swift:1118357",
    V + "fink-mm/Swift_BAT_Lightcurve_1118357.xml": N,
    V + "fink-mm/Swift_BAT_QuickLook_Pos_1118357.xml": "swift:1118357",
    V + "fink-mm/Swift_BAT_Trans_Pos_1125106.xml": "swift:1125106",
    V + "fink-mm/Swift_FOM_Obs_1118357.xml": N,
    V + "fink-mm/Swift_XRT_Pos_1120270.xml": "swift:1120270",
    V + "gwcelery/Fermi_GBM_Alert_548848711.xml": N,  # GBM_ALERT: no position
    V + "gwcelery/Fermi_GBM_Fin_Pos_548848711.xml": "fermi-gbm:548848711",
    V + "gwcelery/Fermi_GBM_Flt_Pos_598032876_noise.xml": "fermi-gbm:598032876",
    V + "gwcelery/Fermi_GBM_SubThresh_578679123.xml": "fermi-gbm-subthresh:578679123",
    V + "gwcelery/INTEGRAL_Wakeup_Pos_000000.xml": N,  # Test_Notice flag
    V + "gwcelery/LVC_G298048-1-Initial_GW170817.xml": "lvk:G298048",
    V + "gwcelery/Swift_BAT_GRB_Pos_1123129.xml": "swift:1123129",
    V + "pygcn/Fermi_GBM_Flt_Pos_pygcn.xml": "fermi-gbm:336801278",
    V + "pygcn/GCN_kill_socket_packet_type_4.xml": N,
    V + "skyportal/AMON_ICECUBE_BRONZE_136973_28816141.xml": "icecube:136973_28816141",
    V + "skyportal/GRB180116A_Fermi_GBM_Gnd_Pos.xml": "fermi-gbm:537755817",
    V + "skyportal/LVC_S190425z-1-Initial.xml": "lvk:S190425z",
    V + "skyportal/SWIFT_BAT_GRB_Pos_1125809-092.xml": "swift:1125809",
    V + "userguide/MS181101ab-1-EarlyWarning.xml": N,  # role="test"
    V + "userguide/MS181101ab-2-Preliminary.xml": N,
    V + "userguide/MS181101ab-3-Initial.xml": N,
    V + "userguide/MS181101ab-5-Retraction.xml": N,
    V + "userguide/MS181101ab-6-Update.xml": N,
}


def test_every_gcn_file_has_an_expected_outcome(shared_data):
    files = {str(p.relative_to(shared_data)) for p in (shared_data / "gcn").rglob("*")
             if p.is_file()}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_file_outcome(rel, shared_file):
    expected = EXPECTED[rel]
    path = shared_file(rel)
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            read_notice_file(path, tolerance=1e-2)
        assert str(path) in str(info.value)  # messages say where
        return
    event = read_notice_file(path, tolerance=1e-2)
    assert event.event_id == expected
    assert event.source == str(path)
    assert event.raw == path.read_bytes()
    assert event.trigger_time.scale == "utc"
    if event.action is NoticeAction.RETRACT:
        assert event.localization is None
    elif event.kind is EventKind.GW and event.notice_format == "voevent":
        assert event.localization is None and "skymap_url" in event.significance
    else:
        assert event.localization is not None
        assert event.localization.total_probability == pytest.approx(1.0, abs=1e-6)


TEST_ROLE_FILES = [r for r, e in EXPECTED.items() if e is N and "MS181101ab" in r
                   or "MS230518e" in r or "svom/" in r and e is N
                   or "sn_alert.test" in r or "INTEGRAL_Wakeup_Pos_000000" in r]


@pytest.mark.parametrize("rel", TEST_ROLE_FILES)
def test_test_role_notices_parse_when_kept(rel, shared_file):
    event = read_notice_file(shared_file(rel), roles=("observation", "test"), tolerance=1e-2)
    assert event.role == "test"


FUZZ_FILES = [r for r, e in EXPECTED.items() if "schema" not in r.rsplit("/", 1)[-1]]


@pytest.mark.parametrize("rel", FUZZ_FILES)
def test_truncated_notices_raise_only_mmcross_errors(rel, shared_file, caplog):
    data = shared_file(rel).read_bytes()
    caplog.set_level(logging.CRITICAL)
    for frac in (0.0, 0.1, 0.5, 0.9, 0.999):
        cut = data[: int(len(data) * frac)]
        with contextlib.suppress(MmcrossError):
            parse_notice(cut, source=f"{rel}[:{len(cut)}]", roles=("observation", "test"),
                         tolerance=1e-2)


def test_random_bytes_raise_only_mmcross_errors(caplog):
    caplog.set_level(logging.CRITICAL)
    rng = np.random.default_rng(42)
    prefixes = [b"", b"<", b"{", b"[", b"Obj\x01", b"<VOEvent>", b'{"superevent_id": 1']
    for i in range(300):
        body = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        with pytest.raises(MmcrossError):
            parse_notice(prefixes[i % len(prefixes)] + body, source=f"random#{i}")


def test_xml_entities_are_not_expanded_and_doctype_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file://{secret}">]>'
           '<VOEvent ivorn="ivo://nasa.gsfc.gcn/SWIFT#x" role="observation"><What>'
           '<Param name="Packet_Type" value="61"/><Param name="TrigID" value="&x;"/>'
           '</What></VOEvent>').encode()
    with pytest.raises(BadNoticeError, match="DOCTYPE|external entity") as info:
        parse_notice(xxe, source="xxe")
    assert "TOPSECRET" not in str(info.value)
    bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><VOEvent>&b;</VOEvent>')
    with pytest.raises(BadNoticeError):
        parse_notice(bomb, source="bomb")


def test_malformed_json_and_xml_name_the_source():
    with pytest.raises(BadNoticeError, match="malformed JSON.*kafka/3/14"):
        parse_notice(b'{"a": ', source="kafka/3/14")
    with pytest.raises(BadNoticeError, match="malformed VOEvent XML.*peer:1.2.3.4"):
        parse_notice(b"<VOEvent><What>", source="peer:1.2.3.4")


def test_voevent_notices_keep_their_own_ivorn_and_json_ones_have_none(shared_file) -> None:
    from lxml import etree

    path = shared_file("gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml")
    event = read_notice_file(path, tolerance=1e-2)
    assert event.ivorn == etree.fromstring(path.read_bytes()).get("ivorn")
    assert event.ivorn.startswith("ivo://nasa.gsfc.gcn/Fermi#")
    gw = read_notice_file(shared_file("gcn/json/fink-mm/S230518h-initial.json"), tolerance=1e-2)
    assert gw.ivorn == ""

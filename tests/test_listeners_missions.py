"""Hand-checked parses of real notices, one or more per mission.

Each test states the value read by eye from the file and the convention applied
(see listeners/radii.py for the references)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from astropy.time import Time

from mmcross.listeners import parse_notice, read_notice_file
from mmcross.listeners.radii import CONVENTIONS, mixture_radius
from mmcross.model.errors import NotAnEventError
from mmcross.model.event import EventKind, NoticeAction
from mmcross.model.localization import Localization

TOL = 1e-2
K = "gcn/voevent/fink-mm-kafka-2024-01/"
BOTH = ("observation", "test")


def _read(shared_file, rel, **kw):
    kw.setdefault("tolerance", TOL)
    return read_notice_file(shared_file(rel), **kw)


def _same_time(t: Time, iso: str) -> bool:
    return abs((t - Time(iso, scale="utc")).sec) < 1e-3


def test_fermi_gbm_gnd_pos_726773850(shared_file):
    # File: RA 264.0200, Dec 26.4100, Error2Radius 3.0300 (1-sigma stat, 68 %), ISOTime
    # 2024-01-12T17:37:25.12, Who/Date 17:38:12, Pkt_Ser_Num 23. Convention fermi-gbm-gnd:
    # Connaughton 2015 Table 3 row 1 mixture (3.72 deg 80.4 %, 13.7 deg 19.6 %).
    e = _read(shared_file, K + "Fermi_GBM_Gnd_Pos_726773850-268.xml")
    assert (e.event_id, e.kind, e.instrument) == ("fermi-gbm:726773850", EventKind.GRB,
                                                  "Fermi-GBM")
    assert (e.ra, e.dec, e.error_radius, e.containment) == (264.02, 26.41, 3.03, 0.68)
    assert _same_time(e.trigger_time, "2024-01-12T17:37:25.12")
    assert _same_time(e.notice_time, "2024-01-12T17:38:12")
    assert (e.serial, e.notice_type, e.notice_format) == (23, "GBM_GND_POS", "voevent")
    r90 = mixture_radius(3.03, ((0.804, 3.72), (0.196, 13.7)))
    assert 12.0 < r90 < 20.0  # far wider than the naive 3.03 * 2.146 = 6.5 deg
    # the 90 % region is a disc of radius r90: area = 2 pi (1 - cos r90) sr
    area = 2 * np.pi * (1 - np.cos(np.radians(r90))) * (180 / np.pi) ** 2
    assert e.localization.area(0.9) == pytest.approx(area, rel=0.05)
    assert e.localization.credible_level_at([264.02], [26.41])[0] < 0.05


def test_all_gbm_notices_of_726773850_share_the_event_id(shared_file):
    ids = {_read(shared_file, K + f).event_id for f in (
        "Fermi_GBM_Flt_Pos_726773850-264.xml", "Fermi_GBM_Gnd_Pos_726773850-268.xml",
        "Fermi_GBM_Fin_Pos_726773850-315.xml")}
    assert ids == {"fermi-gbm:726773850"}
    # JSON GBM ids match the VOEvent TrigID convention too
    gs = "gcn/json/gcn-schema/gcn/notices/fermi/gbm/"
    assert _read(shared_file, gs + "trigger.ground1.example.json").event_id == \
        "fermi-gbm:745121685"


def test_fermi_gbm_fin_pos_after_2019_uses_roboba_systematic(shared_file):
    # FIN_POS 726773850: Error2Radius 2.34 (1-sigma), 2024 -> GCN Circ 25726 mixture.
    e = _read(shared_file, K + "Fermi_GBM_Fin_Pos_726773850-315.xml")
    assert e.significance["radius_convention"] == "fermi-gbm-fin-2019"
    assert e.significance["localization_radius"] == pytest.approx(
        mixture_radius(2.34, CONVENTIONS["fermi-gbm-fin-2019"].systematic))
    old = _read(shared_file, "gcn/voevent/fink-mm/Fermi_GBM_Fin_Pos_680782656.xml")
    assert old.significance["radius_convention"] == "fermi-gbm-fin-2019"  # 2022 notice
    pre = _read(shared_file, "gcn/voevent/gwcelery/Fermi_GBM_Fin_Pos_548848711.xml")
    assert pre.significance["radius_convention"] == "fermi-gbm-fin"  # 2018 notice


def test_fermi_gbm_json_flight_has_systematic_included(shared_file):
    # flight1 example: ra 136.917, dec -78.117, ra_dec_error 8.32, containment 0.68,
    # systematic_included true -> the circle is used as stated.
    e = _read(shared_file, "gcn/json/gcn-schema/gcn/notices/fermi/gbm/"
                           "trigger.flight1.example.json")
    assert (e.ra, e.dec, e.error_radius, e.containment) == (136.917, -78.117, 8.32, 0.68)
    r68 = np.radians(8.32)
    assert e.localization.area(0.68) == pytest.approx(
        2 * np.pi * (1 - np.cos(r68)) * (180 / np.pi) ** 2, rel=0.05)


def test_swift_bat_grb_pos_1208389(shared_file):
    # File: RA 270.6441 Dec 24.4866 Error2Radius 0.0500 (90 % incl. systematic, 3 arcmin),
    # ISOTime 2024-01-12T17:37:24.97, TrigID 1208389, Pkt_Ser_Num 22.
    e = _read(shared_file, K + "Swift_BAT_GRB_Pos_1208389-262.xml")
    assert (e.event_id, e.kind, e.instrument) == ("swift:1208389", EventKind.GRB, "Swift-BAT")
    assert (e.ra, e.dec, e.error_radius, e.containment) == (270.6441, 24.4866, 0.05, 0.9)
    assert _same_time(e.trigger_time, "2024-01-12T17:37:24.97")
    assert e.serial == 22 and e.significance["rate_snr"] == 74.0
    assert e.localization.area(0.9) == pytest.approx(np.pi * 0.05**2, rel=0.05)


def test_swift_notices_of_1208389_share_the_event_id(shared_file):
    ql = _read(shared_file, K + "Swift_BAT_QuickLook_Pos_1208389-261.xml")
    uvot = _read(shared_file, K + "Swift_UVOT_Pos_1208389-316.xml")
    assert ql.event_id == uvot.event_id == "swift:1208389"
    # UVOT: RA 270.6441 Dec 24.4892 Error2Radius 0.0002 deg (90 %)
    assert (uvot.instrument, uvot.error_radius, uvot.containment) == ("Swift-UVOT", 0.0002, 0.9)
    with pytest.raises(NotAnEventError, match="FOM_OBS"):
        _read(shared_file, K + "Swift_FOM_Obs_1208389-266.xml")


def test_swift_xrt_position(shared_file):
    # File: XRT_Pos 1120270, RA 81.5292 Dec -33.0162, Error2Radius 0.0016 deg (90 %)
    e = _read(shared_file, "gcn/voevent/fink-mm/Swift_XRT_Pos_1120270.xml")
    assert (e.event_id, e.instrument, e.ra, e.dec, e.error_radius, e.containment) == (
        "swift:1120270", "Swift-XRT", 81.5292, -33.0162, 0.0016, 0.9)


def test_integral_wakeup_and_refined_10042(shared_file):
    # Wakeup: TrigID 10042, RA 273.9650 Dec -37.2473, Error2Radius 0.0489 (90 %).
    # Refined: TrigID 75578 = 0x1273A = (sub-number 1 << 16) | 10042, IVORN ..._010042-1-.
    w = _read(shared_file, "gcn/voevent/fink-mm/INTEGRAL_Wakeup_Pos_010042.xml")
    r = _read(shared_file, "gcn/voevent/fink-mm/INTEGRAL_Refined_Pos_010042.xml")
    assert w.event_id == r.event_id == "integral:10042"
    assert (w.ra, w.dec, w.error_radius, w.containment) == (273.965, -37.2473, 0.0489, 0.9)
    assert (r.ra, r.dec, r.error_radius) == (273.9546, -37.2428, 0.0431)
    assert _same_time(w.trigger_time, "2022-09-26T10:38:19.75")
    assert w.kind is EventKind.GRB and w.instrument == "INTEGRAL-IBAS"


def test_icecube_bronze_track(shared_file):
    # File: run 136918 event 45252263; RA 132.3328 Dec -42.7168; Error2Radius 0.6521 ==
    # src_error_90 "statistical only, (90% containment)"; src_error_50 0.2348;
    # signalness 0.3865; FAR 1.8772 /yr; 2022-08-08T07:59:57.26.
    e = _read(shared_file, "gcn/voevent/fink-mm/IceCube_BRONZE_136918_45252263.xml")
    assert (e.event_id, e.kind, e.instrument) == ("icecube:136918_45252263",
                                                  EventKind.NEUTRINO, "IceCube")
    assert (e.ra, e.dec, e.error_radius, e.containment) == (132.3328, -42.7168, 0.6521, 0.9)
    assert e.significance["error_radius_50"] == 0.2348
    assert e.significance["signalness"] == 0.3865
    assert e.significance["far_per_year"] == 1.8772
    assert _same_time(e.trigger_time, "2022-08-08T07:59:57.26")
    assert e.localization.area(0.9) == pytest.approx(
        2 * np.pi * (1 - np.cos(np.radians(0.6521))) * (180 / np.pi) ** 2, rel=0.05)


def test_icecube_cascade(shared_file):
    # File: RA 150.1126 Dec -9.1693; src_error_90 12.8963 "combined statistical and the
    # systematic (90% containment)"; skymap_fits URL kept.
    e = _read(shared_file, "gcn/voevent/fink-mm/IceCube_Cascade_136889_25590129.xml")
    assert e.event_id == "icecube:136889_25590129"
    assert (e.ra, e.dec, e.error_radius, e.containment) == (150.1126, -9.1693, 12.8963, 0.9)
    assert e.significance["skymap_url"].endswith("evt000025590129.fits")
    assert e.localization.area(0.9) == pytest.approx(
        2 * np.pi * (1 - np.cos(np.radians(12.8963))) * (180 / np.pi) ** 2, rel=0.05)


def test_icecube_json_id_matches_voevent_convention(shared_file):
    e = _read(shared_file, "gcn/json/gcn-schema/gcn/notices/icecube/"
                           "single_neutrino_alerts.gold_bronze_track_alerts.example.json")
    # "id": ["137840_57034692"], ra 345.82, dec 9.01, ra_dec_error 0.5 at 0.9
    assert (e.event_id, e.ra, e.dec, e.error_radius, e.containment) == (
        "icecube:137840_57034692", 345.82, 9.01, 0.5, 0.9)


def test_lvk_json_s230518h_embeds_the_skymap(shared_file):
    e = _read(shared_file, "gcn/json/fink-mm/S230518h-initial.json", topic="igwn.gwalert")
    ref = Localization.from_fits(shared_file("skymaps/fink-mm/S230518h_initial.multiorder.fits"))
    assert (e.event_id, e.kind, e.notice_type) == ("lvk:S230518h", EventKind.GW, "INITIAL")
    assert _same_time(e.trigger_time, "2023-05-18T12:59:08.167")
    assert _same_time(e.notice_time, "2023-05-18T16:07:18")
    assert e.significance["far"] == pytest.approx(3.218261352069347e-10)
    assert e.significance["classification"]["NSBH"] == pytest.approx(0.8642645059209272)
    assert e.localization.n_pixels == ref.n_pixels
    assert e.localization.area(0.9) == pytest.approx(ref.area(0.9))


def test_lvk_avro_and_mock_role(shared_file):
    rel = "gcn/avro/userguide/MS181101ab-preliminary.avro"
    with pytest.raises(NotAnEventError, match="test"):
        _read(shared_file, rel)
    e = _read(shared_file, rel, roles=BOTH)
    ref = Localization.from_fits(shared_file(
        "skymaps/userguide/MS181101ab_bayestar.multiorder.fits"))
    assert (e.event_id, e.notice_format, e.role) == ("lvk:MS181101ab", "avro", "test")
    assert e.localization.area(0.9) == pytest.approx(ref.area(0.9))
    ext = _read(shared_file, "gcn/avro/userguide/MS181101ab-ext-update.avro", roles=BOTH)
    assert ext.significance["external_coinc"]["observatory"] == "Fermi"


def test_lvk_retractions(shared_file):
    j = _read(shared_file, "gcn/json/userguide/MS181101ab-retraction.json", roles=BOTH)
    v = _read(shared_file, "gcn/voevent/userguide/MS181101ab-5-Retraction.xml", roles=BOTH)
    for e in (j, v):
        assert e.event_id == "lvk:MS181101ab"
        assert e.action is NoticeAction.RETRACT and e.localization is None


def test_lvk_voevent_has_url_but_no_localization(shared_file):
    # S190425z Initial: FAR 4.53764787126e-13 Hz, BNS 0.999402567114, skymap_fits
    # 'skyportal/tests/data/bayestar.fits.gz' (never fetched).
    e = _read(shared_file, "gcn/voevent/skyportal/LVC_S190425z-1-Initial.xml")
    assert (e.event_id, e.kind, e.localization) == ("lvk:S190425z", EventKind.GW, None)
    assert e.significance["skymap_url"] == "skyportal/tests/data/bayestar.fits.gz"
    assert e.significance["far"] == pytest.approx(4.53764787126e-13)
    assert e.significance["classification"]["BNS"] == pytest.approx(0.999402567114)
    assert e.significance["properties"]["HasNS"] == 1.0


def test_swift_guano(shared_file):
    gs = "gcn/json/gcn-schema/gcn/notices/swift/bat/"
    e = _read(shared_file, gs + "guano.loc_arc_min.example.json",
              topic="gcn.notices.swift.bat.guano")
    # ra 336.26 dec 25.139 ra_dec_error 0.5 containment 0.9 systematic_included true
    assert (e.event_id, e.ra, e.dec, e.error_radius, e.containment) == (
        "swift-bat-guano:694215995", 336.26, 25.139, 0.5, 0.9)
    r = _read(shared_file, gs + "Guano.Retraction.example.json")
    assert r.action is NoticeAction.RETRACT and r.event_id == e.event_id


def test_unified_schema_generic_fields(shared_file):
    gs = "gcn/json/gcn-schema/gcn/notices/"
    k = _read(shared_file, gs + "km3net/alert.example.json")
    # no containment_probability -> schema default 0.9; messenger Neutrino
    assert (k.ra, k.dec, k.error_radius, k.containment, k.kind) == (
        10.82, 20.01, 0.9, 0.9, EventKind.NEUTRINO)
    s = _read(shared_file, gs + "superk/sn_alert.real.example.json")
    assert (s.error_radius, s.containment) == (0.91, 0.68)
    c = _read(shared_file, gs + "chime/frb.detection.example.json")
    assert c.localization is not None and c.significance["ra_dec_error"][1] == \
        pytest.approx(0.598921231135782)
    m = _read(shared_file, gs + "maxi/gsc.unknown.rectangle.example.json")
    # the enclosing circle reaches the farthest corner (345.72, 19.547) etc.
    assert 1.0 < m.error_radius < 1.5


def test_svom_json_examples_with_test_role(shared_file):
    gs = "gcn/json/gcn-schema/gcn/notices/svom/"
    e = _read(shared_file, gs + "eclairs/trigger.wakeup.example.json", roles=BOTH)
    assert (e.event_id, e.instrument, e.ra, e.dec, e.error_radius, e.containment) == (
        "svom:sb24022203", "SVOM-ECLAIRs", 143.2478, -68.0289, 0.1, 0.9)


SVOM_VOE = b"""<?xml version='1.0' encoding='UTF-8'?>
<voe:VOEvent xmlns:voe="http://www.ivoa.net/xml/VOEvent/v2.0" role="observation" version="2.0"
 ivorn="ivo://org.svom/fsc#sb25120806_eclairs-wakeup">
  <Who><AuthorIVORN>ivo://org.svom/fsc</AuthorIVORN><Date>2025-12-08T17:02:15+00:00</Date></Who>
  <What>
    <Param name="Packet_Type" value="%d"/><Param name="Pkt_Ser_Num" value="1"/>
    <Group name="Svom_Identifiers"><Param name="Burst_Id" value="sb25120806"/></Group>
  </What>
  <WhereWhen><ObsDataLocation><ObservatoryLocation id="GEOLEO"/><ObservationLocation>
    <AstroCoordSystem id="UTC-ICRS-GEO"/><AstroCoords coord_system_id="UTC-ICRS-GEO">
      <Time unit="s"><TimeInstant><ISOTime>2025-12-08T16:50:21.314000</ISOTime></TimeInstant></Time>
      <Position2D unit="deg"><Name1>RA</Name1><Name2>Dec</Name2>
        <Value2><C1>337.5347</C1><C2>-0.3918</C2></Value2><Error2Radius>%s</Error2Radius>
      </Position2D></AstroCoords></ObservationLocation></ObsDataLocation></WhereWhen>
</voe:VOEvent>"""


def test_svom_voevents():
    e = parse_notice(SVOM_VOE % (202, b"0.1962"), topic="gcn.notices.svom.voevent.eclairs",
                     tolerance=TOL)
    assert (e.event_id, e.instrument, e.ra, e.dec, e.error_radius, e.containment) == (
        "svom:sb25120806", "SVOM-ECLAIRs", 337.5347, -0.3918, 0.1962, 0.9)
    assert _same_time(e.notice_time, "2025-12-08T17:02:15")
    with pytest.raises(NotAnEventError, match="GRM"):  # GRM on-board error is -1
        parse_notice(SVOM_VOE % (201, b"-1"))
    r = parse_notice(SVOM_VOE % (219, b"-1"))
    assert r.action is NoticeAction.RETRACT and r.event_id == "svom:sb25120806"


def test_einstein_probe_wxt():
    d = {"instrument": "WXT", "trigger_time": "2024-03-01T21:46:05.13Z",
         "id": ["01708973486"], "ra": 120.0, "dec": 40.0, "ra_dec_error": 0.05,
         "image_energy_range": [0.5, 4], "net_count_rate": 1, "image_snr": 10}
    e = parse_notice(json.dumps(d).encode(), topic="gcn.notices.einstein_probe.wxt.alert",
                     tolerance=TOL)
    assert (e.event_id, e.kind, e.instrument) == ("einstein-probe:01708973486",
                                                  EventKind.XRAY, "EP-WXT")
    assert (e.error_radius, e.containment) == (0.05, 0.9)  # default 0.9 when absent
    d["containment_probability"] = 0.68
    e2 = parse_notice(json.dumps(d).encode(), tolerance=TOL)  # sniffed without topic
    assert e2.containment == 0.68 and e2.event_id == e.event_id


def test_icecube_lvk_nu_track_search():
    d = {"ref_ID": "S240112e", "alert_datetime": "2024-01-12T01:20:00Z",
         "alert_type": "initial", "pval_generic": 0.01, "pval_bayesian": 0.02,
         "n_events_coincident": 1,
         "coincident_events": [{"ra": 10.0, "dec": -5.0, "ra_dec_error": 1.2,
                                "containment_probability": 0.9, "event_dt": -100.0,
                                "event_pval_generic": 0.01,
                                "trigger_time": "2024-01-12T01:04:02.398Z"}]}
    e = parse_notice(json.dumps(d).encode(), topic="gcn.notices.icecube.lvk_nu_track_search",
                     tolerance=TOL)
    assert (e.event_id, e.kind, e.ra, e.dec, e.error_radius) == (
        "icecube-lvk:S240112e", EventKind.NEUTRINO, 10.0, -5.0, 1.2)
    d.update(n_events_coincident=0, coincident_events=[])
    with pytest.raises(NotAnEventError, match="no coincident"):
        parse_notice(json.dumps(d).encode(), topic="gcn.notices.icecube.lvk_nu_track_search")


def test_lvk_json_bad_base64_is_a_bad_notice(shared_file):
    d = json.loads(shared_file("gcn/json/fink-mm/S230518h-initial.json").read_bytes())
    d["event"]["skymap"] = "!!!not base64"
    from mmcross.model.errors import BadNoticeError
    with pytest.raises(BadNoticeError, match="base64"):
        parse_notice(json.dumps(d).encode(), source="x")
    d["event"]["skymap"] = base64.b64encode(b"SIMPLE  = T" + b" " * 100).decode()
    from mmcross.model.errors import MmcrossError
    with pytest.raises(MmcrossError):
        parse_notice(json.dumps(d).encode(), source="x")

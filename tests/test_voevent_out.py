"""Counterpart and retraction VOEvents: valid VOEvent 2.0, stable IVORNs, citations."""

from __future__ import annotations

import datetime as dt

import voeventparse as vp
from lxml import etree

from mmcross.brokers.voevent_out import counterpart_ivorn, counterpart_voevent, retraction_voevent
from tests.helpers import make_match

GCN_IVORN = "ivo://gwnet/LVC#S230518h-2-Update"


def test_counterpart_is_valid_and_carries_the_match():
    match = make_match(distance_std=None)
    payload = counterpart_voevent(match, event_ivorn=GCN_IVORN)
    v = vp.loads(payload)
    assert vp.valid_as_v2_0(v)
    assert v.attrib["role"] == "observation"
    assert v.attrib["ivorn"] == counterpart_ivorn(match)
    params = vp.get_toplevel_params(v)
    assert int(params["alert_id"]["value"]) == match.alert_id
    assert params["event_id"]["value"] == match.event_id
    assert float(params["searched_area"]["value"]) == match.searched_area
    assert "distance_std" not in params  # None fields are left out
    pos = vp.get_event_position(v)
    assert abs(pos.ra - match.ra) < 1e-9 and abs(pos.dec - match.dec) < 1e-9
    assert vp.get_event_time_as_utc(v) == dt.datetime(2023, 5, 19, 5, 35, 39, 168000,
                                                      tzinfo=dt.UTC)
    cites = v.Citations.EventIVORN
    assert cites.attrib["cite"] == "followup" and cites.text == GCN_IVORN


def test_each_event_revision_and_alert_has_its_own_ivorn_repeated_by_the_same_report():
    a = counterpart_voevent(make_match(), date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    again = counterpart_voevent(make_match(p_chance=0.5),
                                date=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    later = counterpart_voevent(make_match(event_revision=3))
    other = counterpart_voevent(make_match(1))
    ivorn = [vp.loads(x).attrib["ivorn"] for x in (a, again, later, other)]
    assert ivorn[0] == ivorn[1]  # the same report sent twice is the same packet
    assert len({ivorn[0], ivorn[2], ivorn[3]}) == 3
    assert "Citations" not in a.decode()  # no notice IVORN, nothing superseded: no citation


def test_a_later_revision_cites_the_notice_it_answers_and_supersedes_the_earlier_packet():
    first = make_match(event_revision=1, notice_ivorn="ivo://nasa.gsfc.gcn/Fermi#GBM_Flt_Pos_1")
    second = make_match(event_revision=2, notice_ivorn=GCN_IVORN, supersedes_revision=1)
    v = vp.loads(counterpart_voevent(second))
    assert vp.valid_as_v2_0(v)
    cites = {c.attrib["cite"]: c.text for c in v.Citations.EventIVORN}
    assert cites == {"followup": GCN_IVORN, "supersedes": counterpart_ivorn(first)}
    assert vp.loads(counterpart_voevent(first)).attrib["ivorn"] == cites["supersedes"]
    assert v.attrib["ivorn"] == counterpart_ivorn(second) != counterpart_ivorn(first)


def test_retraction_cites_the_counterpart_and_parses_with_lxml():
    match = make_match(retracted=True)
    payload = retraction_voevent(match)
    assert vp.valid_as_v2_0(vp.loads(payload))
    root = etree.fromstring(payload)  # as pygcn's handlers do
    assert root.attrib["role"] == "observation"
    assert root.attrib["ivorn"] != counterpart_ivorn(match)
    cite = root.find("./Citations/EventIVORN")
    assert cite.attrib["cite"] == "retraction" and cite.text == counterpart_ivorn(match)
    params = {p.attrib["name"]: p.attrib["value"] for p in root.iterfind(".//What/Param")}
    assert params["retracted"] == "true"

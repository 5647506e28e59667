"""Counterpart and retraction VOEvents: valid VOEvent 2.0, stable IVORNs, citations."""

from __future__ import annotations

import datetime as dt

import voeventparse as vp
from hypothesis import given, settings
from hypothesis import strategies as st
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


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)  # controls too


def _outcome(build, *args, **kw):
    """The packet, or the error's type and text (a value XML cannot hold)."""
    try:
        return build(*args, **kw)
    except ValueError as exc:
        return type(exc), str(exc)


@settings(max_examples=200, deadline=None)
@given(event_id=_text, revision=st.integers(1, 10**6), alert_id=st.integers(0, 2**62),
       object_id=_text, ra=st.floats(0, 360, exclude_max=True), dec=st.floats(-90, 90),
       credible_level=st.floats(0, 1), p_chance=st.floats(0, 1),
       distance=st.one_of(st.none(), st.floats(0.1, 1e4)), notice_ivorn=_text,
       supersedes=st.one_of(st.none(), st.integers(1, 10**6)), retracted=st.booleans(),
       millisecond=st.integers(0, 86_400_000 - 1))
def test_template_packets_are_byte_for_byte_the_voevent_parse_packets(
        event_id, revision, alert_id, object_id, ra, dec, credible_level, p_chance, distance,
        notice_ivorn, supersedes, retracted, millisecond):
    """counterpart_voevent/retraction_voevent fill a template; voevent-parse builds afresh:
    the same bytes for any values (XML-special and control characters included), the same
    refusal for characters XML cannot hold, and valid VOEvent 2.0."""
    from mmcross.brokers.voevent_out import build_counterpart_voevent, build_retraction_voevent

    when = dt.datetime(2026, 5, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=millisecond)
    match = make_match(event_id=event_id or "e", event_revision=revision, alert_id=alert_id,
                       object_id=object_id, ra=ra, dec=dec, credible_level=credible_level,
                       p_chance=p_chance, distance_mean=distance, distance_std=distance,
                       notice_ivorn=notice_ivorn, supersedes_revision=supersedes,
                       retracted=retracted,
                       alert_time=when.isoformat(timespec="milliseconds")[:-6] + "Z")
    date = dt.datetime(2026, 12, 3, 17, 0, 1, tzinfo=dt.UTC)
    fast = _outcome(counterpart_voevent, match, date=date)
    assert fast == _outcome(build_counterpart_voevent, match, date=date)
    assert _outcome(retraction_voevent, match, date=date) == \
        _outcome(build_retraction_voevent, match, date=date)
    if isinstance(fast, bytes):
        assert vp.valid_as_v2_0(vp.loads(fast))

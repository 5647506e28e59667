"""The replay's VOEvent folder: files written by a background thread, in order, complete at
``flush``/``close``, and a failed write raised in the caller's thread."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mmcross.brokers.sinks import VOEventDirectorySink
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from tests.helpers import make_match

_DATE = re.compile(rb"<Date>[^<]*</Date>")


def undated(xml: bytes) -> bytes:
    """A packet without its ``Who/Date`` (the wall-clock second it was made)."""
    assert len(_DATE.findall(xml)) == 1
    return _DATE.sub(b"<Date/>", xml)


def test_every_file_is_written_by_close_with_the_packet_of_its_match(tmp_path) -> None:
    sink = VOEventDirectorySink(tmp_path / "voevents")
    batches = [[make_match(i) for i in range(k, k + 50)] for k in range(0, 500, 50)]
    for batch in batches:
        sink.write(batch)
    sink.close()
    written = sorted((tmp_path / "voevents").glob("*"))
    assert len(written) == 500 and all(p.suffix == ".xml" for p in written)
    for match in (batches[0][0], batches[-1][-1]):
        assert undated(sink.path_for(match).read_bytes()) == undated(counterpart_voevent(match))


def test_a_later_packet_for_the_same_match_wins_and_retractions_have_their_own_file(
        tmp_path) -> None:
    sink = VOEventDirectorySink(tmp_path)
    first = make_match(7)
    again = dataclasses.replace(first, event_revision=first.event_revision + 1)
    revoked = dataclasses.replace(again, retracted=True)
    for m in (first, again, revoked):
        sink.write([m])
    sink.flush()
    assert undated(sink.path_for(first).read_bytes()) == undated(counterpart_voevent(again))
    assert undated(sink.path_for(revoked).read_bytes()) == undated(
        retraction_voevent(revoked))
    assert sink.path_for(revoked) != sink.path_for(first)
    sink.close()


def test_a_failed_write_is_raised_by_the_next_call_and_nothing_is_written_after_it(
        tmp_path) -> None:
    sink = VOEventDirectorySink(tmp_path / "voevents")
    blocker = sink.path_for(make_match(0)).with_suffix(".tmp")
    blocker.mkdir()  # the temporary file cannot be created: IsADirectoryError
    sink.write([make_match(0)])
    with pytest.raises(IsADirectoryError):
        sink.flush()
    with pytest.raises(IsADirectoryError):
        sink.write([make_match(1)])
    with pytest.raises(IsADirectoryError):
        sink.close()
    assert not sink.path_for(make_match(1)).exists()


def test_a_sink_never_written_to_starts_no_thread(tmp_path) -> None:
    sink = VOEventDirectorySink(tmp_path)
    sink.flush()
    sink.close()
    assert sink._thread is None

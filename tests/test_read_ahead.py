"""Alert files read ahead by a background thread (:mod:`mmcross.brokers.alert_reader`): the
same items in the same order, the producer's exception at the item where it happened, an
early exit that stops (and closes) the producer, and bad packets counted, not fatal."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mmcross.app.simulate import simulate_night
from mmcross.brokers.alert_files import iter_alert_batches
from mmcross.brokers.alert_reader import AlertReader, ReadAhead


def test_items_come_in_order_whatever_the_depth() -> None:
    for depth in (1, 2, 7):
        assert list(ReadAhead(iter(range(100)), depth=depth)) == list(range(100))


def test_an_exception_of_the_producer_is_raised_after_the_items_before_it() -> None:
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in ReadAhead(items()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_and_closes_the_producer() -> None:
    produced, closed = [], threading.Event()

    def items():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    reader = ReadAhead(items(), depth=2)
    assert next(iter(reader)) == 0
    reader.close()  # stops the producer and joins its thread, which closed items()
    assert closed.is_set()
    assert len(produced) <= 5  # one consumed, at most depth queued, one waiting to be put


def test_the_reader_gives_every_alert_of_the_files_sorted_by_time(tmp_path) -> None:
    path = tmp_path / "night.avro"
    night = simulate_night(3000, start_mjd_tai=60083.5, rng=np.random.default_rng(5),
                   cutout_bytes=300, alerts_per_visit=100)
    night.write_container(path)
    expected = np.concatenate([b.alert_id for b in iter_alert_batches([path], chunk=700)])
    with AlertReader([path], chunk=700) as batches:
        got = list(batches)
    assert [len(b) for b in got][:-1] == [700] * (len(got) - 1)
    assert all(np.all(np.diff(b.mjd_tai) >= 0) for b in got)
    assert sorted(np.concatenate([b.alert_id for b in got])) == sorted(expected)
    assert len(expected) == 3000


def test_a_bad_file_is_counted_and_the_good_one_still_read(tmp_path) -> None:
    good, bad = tmp_path / "a-good.avro", tmp_path / "b-bad.avro"
    simulate_night(500, start_mjd_tai=60083.5, rng=np.random.default_rng(6),
                   cutout_bytes=300, alerts_per_visit=100).write_container(good)
    bad.write_bytes(b"Obj\x01 this is not an Avro container")
    reader = AlertReader([good, bad])
    assert sum(len(b) for b in reader) == 500
    assert reader.errors == 1


def test_a_missing_path_is_refused_before_any_thread_starts(tmp_path) -> None:
    def readers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "read-ahead"}

    before = readers()
    with pytest.raises(FileNotFoundError, match="no-such.avro"):
        AlertReader([tmp_path / "no-such.avro"])
    assert readers() <= before

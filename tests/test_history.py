"""AlertHistory: bounded by time horizon and count, queried by time range."""

from __future__ import annotations

import numpy as np

from mmcross.model.alert import AlertBatch
from mmcross.model.history import AlertHistory


def _batch(t0, n, first_id=0):
    return AlertBatch(np.arange(first_id, first_id + n), np.arange(n).astype(str),
                      np.full(n, 10.0), np.full(n, -20.0), t0 + np.linspace(0, 0.1, n),
                      packets=[b"x"] * n)


def test_between_returns_exactly_the_alerts_in_range_without_packets():
    h = AlertHistory(horizon_days=10, max_alerts=1000)
    h.add(_batch(60000.0, 11))
    got = h.between(60000.03, 60000.07)
    expected = _batch(60000.0, 11).mjd_tai
    assert np.array_equal(got.mjd_tai, expected[(expected >= 60000.03) & (expected <= 60000.07)])
    assert got.packets is None


def test_alerts_older_than_the_horizon_are_dropped():
    h = AlertHistory(horizon_days=1.0, max_alerts=10**6)
    h.add(_batch(60000.0, 5))
    h.add(_batch(60001.05, 5, first_id=100))
    assert len(h) == 5 + int(np.sum(_batch(60000.0, 5).mjd_tai >= 60000.15))
    assert h.all().mjd_tai.min() >= 60001.15 - 1.0


def test_count_bound_drops_oldest_chunks():
    h = AlertHistory(horizon_days=100, max_alerts=10)
    for i in range(5):
        h.add(_batch(60000.0 + i, 4, first_id=10 * i))
    assert len(h) <= 10
    assert h.all().alert_id.max() == 43

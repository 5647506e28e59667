"""The Rubin alert simulator: schema-valid packets, ground truth, injections, writers."""

from __future__ import annotations

import io

import fastavro
import numpy as np
import pytest

from mmcross.app.simulate import simulate_night
from mmcross.brokers.alert_files import iter_alert_batches
from mmcross.brokers.rubin_schemas import get_schema, latest_schema_id
from mmcross.model import shapes


@pytest.fixture(scope="module")
def night():
    loc = shapes.circle(120.0, -40.0, 2.0)
    return simulate_night(40, start_mjd_tai=60900.0, rng=np.random.default_rng(7),
                          alerts_per_visit=15, inject=[(loc, 5, 60900.1, 60900.2)],
                          n_previous=4, cutout_bytes=300), loc


def test_plan_is_consistent(night):
    night, loc = night
    assert len(night) == 45 and night.schema_id == latest_schema_id()
    assert len(np.unique(night.alert_id)) == 45
    assert np.all(np.diff(night.mjd_tai) >= 0)
    assert np.all(night.dec[~np.isin(night.alert_id, night.injected[0])] < 30.0)
    inj = np.isin(night.alert_id, night.injected[0])
    assert inj.sum() == 5 and night.is_new[inj].all()
    assert np.all((night.mjd_tai[inj] >= 60900.1) & (night.mjd_tai[inj] <= 60900.2))
    # independent check of the injected positions: drawn from the circle's density (2 deg
    # holds 90 %, so some may fall outside), inside its 99.99 % circle of 4 deg (astropy)
    from astropy.coordinates import SkyCoord
    sep = SkyCoord(night.ra[inj], night.dec[inj], unit="deg").separation(
        SkyCoord(120.0, -40.0, unit="deg")).deg
    assert np.all(sep < 4.0)
    assert np.all(loc.credible_level_at(night.ra[inj], night.dec[inj]) <= 1.0)


def test_packets_are_schema_valid_and_match_the_truth(night):
    night, _ = night
    schema = get_schema(night.schema_id)
    records = list(night.records())
    assert all(fastavro.validate(r, schema.definition) for r in records[:5])
    messages = list(night.messages())
    for rec, msg in zip(records[:10], messages[:10], strict=True):
        full = fastavro.schemaless_reader(io.BytesIO(msg[5:]), schema.definition, None)
        assert full["diaSource"]["diaSourceId"] == rec["diaSource"]["diaSourceId"]
        assert len(full["cutoutScience"]) == 300
        assert (full["prvDiaSources"] is None) == (len(rec["prvDiaSources"] or []) == 0)
        assert full["prvDiaSources"] is None or len(full["prvDiaSources"]) == 4


@pytest.mark.parametrize("kind", ["container", "stream", "directory"])
def test_writers_read_back_to_the_truth(tmp_path, night, kind):
    night, _ = night
    target = tmp_path / ("night.avro" if kind == "container" else
                         "night.wires" if kind == "stream" else "dir")
    getattr(night, {"container": "write_container", "stream": "write_wire_stream",
                    "directory": "write_wire_directory"}[kind])(target)
    batches = list(iter_alert_batches(target, chunk=16))
    assert all(len(b) <= 16 for b in batches)
    got = np.concatenate([b.alert_id for b in batches])
    order = np.argsort(got)
    truth = night.truth()
    ref = np.argsort(truth.alert_id)
    assert np.array_equal(got[order], truth.alert_id[ref])
    for name in ("ra", "dec", "mjd_tai"):
        values = np.concatenate([getattr(b, name) for b in batches])
        assert np.array_equal(values[order], getattr(truth, name)[ref])
    is_new = np.concatenate([b.is_new for b in batches])
    assert np.array_equal(is_new[order], truth.is_new[ref])


def test_default_packet_is_about_66_kb():
    night = simulate_night(2, start_mjd_tai=60900.0, rng=np.random.default_rng(1),
                           new_fraction=0.0)
    size = len(next(night.messages()))
    assert 60_000 < size < 90_000

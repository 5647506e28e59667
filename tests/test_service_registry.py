"""Rubin schemas from a Confluent Schema Registry (``GET /schemas/ids/{id}``), falling back to
lsst-alert-packet.

A tiny ``http.server`` on 127.0.0.1 serves a real Rubin schema (lsst-alert-packet's) under an id
the package does not know; alerts re-framed with that id decode through the registry only.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from lsst.alert.packet import SchemaRegistry

from mmcross.brokers.alert_decoding import decode_wire_many
from mmcross.brokers.kafka_schemas import SchemaResolver
from mmcross.brokers.rubin_schemas import latest_schema_id
from mmcross.catalogs import Store
from mmcross.listeners import read_notice_file
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import BadAlertError
from tests.helpers import (
    GW_NOTICE,
    create_topics,
    group_offset,
    offline_matches,
    produce_notices,
    produce_values,
    read_topic,
    service_config,
    sim_night,
    unique_names,
    wait_for,
)

REGISTRY_ID = 424242  # not an lsst-alert-packet id


def _reframe(message: bytes, schema_id: int) -> bytes:
    return struct.pack(">bI", 0, schema_id) + message[5:]


class _Registry:
    """``GET /schemas/ids/<id>`` of a Confluent Schema Registry, one schema."""

    def __init__(self, schemas: dict[int, dict]) -> None:
        self.requests: Counter[str] = Counter()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                registry.requests[self.path] += 1
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit() \
                        and int(parts[2]) in schemas:
                    body = json.dumps({"schema": json.dumps(schemas[int(parts[2])])}).encode()
                    self.send_response(200)
                else:
                    body = json.dumps({"error_code": 40403, "message": "Schema not found"}
                                      ).encode()
                    self.send_response(404)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def registry():
    sid = latest_schema_id()
    definition = SchemaRegistry.all_schemas_from_filesystem().get_by_version(
        f"{sid // 100}.{sid % 100}").definition
    served = _Registry({REGISTRY_ID: {k: v for k, v in definition.items()
                                      if not k.startswith("__")}})
    yield served
    served.close()


def _alerts(n: int = 120):
    from mmcross.app.simulate import simulate_night

    return simulate_night(n, start_mjd_tai=61000.1, duration_days=0.1,
                          rng=np.random.default_rng(4), first_id=31 * 10**6,
                          alerts_per_visit=40, cutout_bytes=100, n_previous=1)


def test_registry_schema_decodes_what_the_package_cannot(registry: _Registry) -> None:
    msgs = list(_alerts().messages())
    reframed = [_reframe(m, REGISTRY_ID) for m in msgs]
    reference, errors = decode_wire_many(msgs)  # lsst-alert-packet, original ids
    assert errors == []
    _, errors = decode_wire_many(reframed[:1])
    assert errors and "unknown Rubin alert schema id" in str(errors[0])

    resolver = SchemaResolver(registry.url)
    rows = [resolver.decode_row(m, f"m#{i}") for i, m in enumerate(reframed)]
    assert [r.alert_id for r in rows] == reference.alert_id.tolist()
    np.testing.assert_array_equal([r.ra for r in rows], reference.ra)
    np.testing.assert_array_equal([r.dec for r in rows], reference.dec)
    np.testing.assert_array_equal([r.mjd_tai for r in rows], reference.mjd_tai)
    assert registry.requests[f"/schemas/ids/{REGISTRY_ID}"] == 1  # fetched once, then cached
    assert resolver.fetched == 1
    assert resolver.get(REGISTRY_ID).name == reference_name()

    # An id the registry does not know (404) comes from lsst-alert-packet.
    assert resolver.get(latest_schema_id()).schema_id == latest_schema_id()
    assert registry.requests[f"/schemas/ids/{latest_schema_id()}"] == 1
    with pytest.raises(BadAlertError, match="unknown Rubin alert schema id 999999"):
        resolver.get(999999)
    with pytest.raises(BadAlertError):  # not asked again at once (retry_after)
        resolver.get(999999)
    assert registry.requests["/schemas/ids/999999"] == 1


def reference_name() -> str:
    sid = latest_schema_id()
    return f"lsst.v{sid // 100}_{sid % 100}.alert"


def test_registry_schema_unlike_any_package_schema_decodes_with_fastavro(
        registry: _Registry) -> None:
    sid = latest_schema_id()
    definition = SchemaRegistry.all_schemas_from_filesystem().get_by_version(
        f"{sid // 100}.{sid % 100}").definition
    changed = {**{k: v for k, v in definition.items() if not k.startswith("__")},
               "doc": "served by a registry, not identical to the package's"}
    other = _Registry({7: changed})
    try:
        msgs = list(_alerts(30).messages())
        reference, _ = decode_wire_many(msgs)
        resolver = SchemaResolver(other.url)
        rows = [resolver.decode_row(_reframe(m, 7)) for m in msgs]
        assert resolver.native(7) is False
    finally:
        other.close()
    assert [r.alert_id for r in rows] == reference.alert_id.tolist()
    assert [r.object_id for r in rows] == reference.object_id.tolist()
    np.testing.assert_array_equal([r.is_new for r in rows], reference.is_new)


def test_unreachable_registry_falls_back_to_the_package() -> None:
    resolver = SchemaResolver("http://127.0.0.1:9", timeout=1.0)  # discard port: refused
    msg = next(iter(_alerts(5).messages()))
    assert resolver.decode_row(msg).alert_id == decode_wire_many([msg])[0].alert_id[0]
    with pytest.raises(BadAlertError):
        resolver.decode_row(_reframe(msg, REGISTRY_ID))


@pytest.mark.kafka
def test_listen_decodes_alerts_with_the_registry_schema(
        kafka_broker: str, registry: _Registry, shared_file, tmp_path: Path) -> None:
    from mmcross.app.service import ListenService

    names = unique_names()
    create_topics(kafka_broker, [names["alerts"]], 2)
    create_topics(kafka_broker, [names["reports"], names["voevents"], names["dead"]], 1)
    create_topics(kafka_broker, [names["gw"]], 1)
    path = service_config(tmp_path / "c.toml", kafka_broker, names,
                          notice_topics=[names["gw"]])
    path.write_text(path.read_text().replace(
        "[kafka]\n", f'[kafka]\nschema_registry_url = "{registry.url}"\n', 1))
    config = Config.load(path)
    notice = shared_file(GW_NOTICE)
    gw = read_notice_file(notice, **notice_options(config))
    t0 = gw.trigger_mjd_tai
    sim = sim_night(400, t0 - 0.002, 0.1, gw.localization, 6, t0, t0 + 0.1, 32 * 10**6, 42)
    msgs = list(sim.messages())
    expected = offline_matches(config, [gw, msgs])
    assert len(expected) >= 3
    reframed = [_reframe(m, REGISTRY_ID) for m in msgs]

    service = ListenService(config, Store(f"sqlite:///{tmp_path / 'r.sqlite'}"), env={})
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        produce_notices(kafka_broker, names["gw"], [notice.read_bytes()])
        wait_for(lambda: service.engine is not None and gw.event_id in service.engine.index,
                 "notice applied")
        produce_values(kafka_broker, names["alerts"], reframed)
        wait_for(lambda: group_offset(kafka_broker, names["group"], names["alerts"]) == len(msgs),
                 "alerts committed")
    finally:
        service.stop()
        thread.join(30)
    assert service.stats.alerts == len(msgs)
    assert service.dead_letters.total == 0
    reports = read_topic(kafka_broker, names["reports"])
    assert Counter(m.key().decode() for m in reports) == Counter(set(expected))

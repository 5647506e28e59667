"""Pytest fixtures for tests that need a real Apache Kafka broker (mark them ``kafka``).

Load as a plugin from ``tests/conftest.py`` with ``pytest_plugins = ["tests.kafka_fixture"]``.

- ``kafka_broker`` (session): the bootstrap string ``host:port``. Uses ``$MMCROSS_KAFKA_BOOTSTRAP``
  when set (a broker started by ``.ci/run`` with ``scripts/kafka_local.py start``), else starts a
  broker of its own with ``scripts/kafka_local.py``'s ``LocalKafka`` in a temporary folder.
- ``local_kafka`` (session): a ``LocalKafka`` this session owns and may ``restart()``; always
  started here, never the external one.

When Java 17+, Maven or the jars are missing the tests are skipped with the reason, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_kafka_local() -> ModuleType:
    """Import ``scripts/kafka_local.py`` (``scripts/`` is no package) as ``kafka_local``."""
    if "kafka_local" in sys.modules:
        return sys.modules["kafka_local"]
    path = REPO / "scripts" / "kafka_local.py"
    spec = importlib.util.spec_from_file_location("kafka_local", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_local"] = module
    spec.loader.exec_module(module)
    return module


kafka_local = _load_kafka_local()


def skip_or_fail(reason: str) -> None:
    """Skip the test because the broker cannot run here; fail instead under ``CI=true``."""
    message = f"local Kafka broker unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_local.LocalKafka]:
    """A single-node KRaft broker on 127.0.0.1 owned by this test session (restartable)."""
    broker = kafka_local.LocalKafka(tmp_path_factory.mktemp("kafka"), die_with_parent=True)
    try:
        broker.start()
    except kafka_local.KafkaUnavailableError as exc:
        skip_or_fail(str(exc))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> str:
    """Bootstrap ``host:port`` of a real Kafka broker: ``$MMCROSS_KAFKA_BOOTSTRAP`` or our own."""
    external = os.environ.get("MMCROSS_KAFKA_BOOTSTRAP")
    if external:
        return external
    return request.getfixturevalue("local_kafka").bootstrap

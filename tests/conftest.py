"""Shared fixtures: where the real data lives, and how a missing ../shared is handled.

Tests read ``../shared/data`` (beside the checkout) in place. When it is absent a test that
needs it is skipped with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.kafka_fixture"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MMCROSS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"real test data not found at {path} (expected ../shared/data beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder with real GCN notices, skymaps and alert samples."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def shared_file(shared_data: Path):
    """A function returning a path inside ``../shared/data``, failing/skipping if missing."""

    def get(relative: str) -> Path:
        return _require(shared_data / relative)

    return get

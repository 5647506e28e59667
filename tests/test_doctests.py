"""Every docstring example in the package runs, under its installed name (``mmcross.*``).

Modules are found by walking the installed package, so a new doctest anywhere is picked up;
the test also pins that there is at least one example to run in each module known to have one.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

SUBPACKAGES = ("model", "vtp", "listeners", "matchers", "brokers", "catalogs", "app")
KNOWN_EXAMPLES = {"mmcross.matchers.chance", "mmcross.matchers.distance"}


def _modules() -> list[str]:
    names = []
    for sub in SUBPACKAGES:
        package = importlib.import_module(f"mmcross.{sub}")
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return sorted(names)


MODULES = _modules()


def test_every_floor_is_walked() -> None:
    assert set(MODULES) >= KNOWN_EXAMPLES
    assert len(MODULES) > 60


def _has_examples(name: str) -> bool:
    return ">>>" in (importlib.util.find_spec(name).loader.get_source(name) or "")


@pytest.mark.parametrize("name", [m for m in MODULES if m in KNOWN_EXAMPLES or _has_examples(m)])
def test_docstring_examples_pass(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example to run"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

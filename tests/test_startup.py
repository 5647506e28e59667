"""Start-up stays light: the CLI module imports no heavy library until a command needs it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numba", "astropy", "healpy", "sqlalchemy", "numpy", "fastavro", "confluent_kafka")


def _loaded_after(statement: str) -> list[str]:
    """The :data:`HEAVY` modules in ``sys.modules`` of a fresh interpreter after
    ``statement``."""
    code = (f"import json, sys\n{statement}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert _loaded_after("import mmcross.app.cli") == []


def test_help_loads_no_heavy_library() -> None:
    statement = ("import contextlib, io\nimport mmcross.app.cli as cli\n"
                 "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):"
                 "\n    cli.main(['--help'])")
    assert _loaded_after(statement) == []


def test_the_check_sees_heavy_imports() -> None:
    """The probe itself works: importing the engine does load numba and healpy."""
    loaded = _loaded_after("import mmcross.app.engine")
    assert "numba" in loaded and "numpy" in loaded


def test_the_engine_leaves_scipy_to_the_shapes_that_need_it() -> None:
    """scipy.integrate (ellipse and box normalisation) and scipy.spatial (RAVEN's nearest
    pixel) cost ~0.35 s of every start: they are imported where used, not with the engine."""
    code = ("import json, sys\nimport mmcross.app.engine, mmcross.app.replay\n"
            "print(json.dumps([m for m in ('scipy.integrate', 'scipy.spatial')"
            " if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

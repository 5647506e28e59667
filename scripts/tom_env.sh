#!/usr/bin/env bash
# The TOM Toolkit environment of the `tom` tests: a venv (default ~/.cache/mmcross/tom-venv,
# or $MMCROSS_TOM_VENV) holding tomtoolkit (Django) and this checkout's mmcross without its
# dependencies (mmcross.tom needs only the standard library and TOM Toolkit), so TOM
# Toolkit's pins never touch the main environment's scientific packages.
# Idempotent: once built for this tomtoolkit version and this checkout it returns at once.
# Prints the venv's python on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

tom_version="3.1.0"
venv="${MMCROSS_TOM_VENV:-$HOME/.cache/mmcross/tom-venv}"
stamp="$venv/.mmcross-tom"
want="tomtoolkit==$tom_version $(pwd)"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -f "$stamp"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "tomtoolkit==$tom_version" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -e . >&2
    "$venv/bin/python" -c "import tom_alerts, django, mmcross" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"

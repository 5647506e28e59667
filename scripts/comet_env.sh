#!/usr/bin/env bash
# Comet (the reference VTP broker, Twisted) for the VTP interoperability tests: a venv
# (default ~/.cache/mmcross/comet-venv, or $MMCROSS_COMET_VENV) holding Comet and its
# dependencies, so Twisted never enters the main environment. Its `comet-sendvo` submits to
# our receiver and `twistd comet --remote` subscribes to our broadcaster.
# Idempotent: once built for these versions it returns at once. Prints the venv's bin folder.
set -euo pipefail

comet_version="3.1.0"
twisted_version="26.10.0"
venv="${MMCROSS_COMET_VENV:-$HOME/.cache/mmcross/comet-venv}"
stamp="$venv/.mmcross-comet"
want="Comet==$comet_version Twisted==$twisted_version"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -f "$stamp"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # shellcheck disable=SC2086  # $want is two requirement specifiers
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want >&2
    "$venv/bin/python" -c "import comet.protocol, twisted" >&2
    [ -x "$venv/bin/comet-sendvo" ] && [ -x "$venv/bin/twistd" ]
    echo "$want" > "$stamp"
fi
echo "$venv/bin"

#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs mmcross with its test extras, starts a
# local PostgreSQL (Debian's packages, installed if missing) and a local Apache Kafka broker
# (jars from Maven Central), runs ruff and pytest, and stops both servers.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not kafka and not postgres"`.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# TOM Toolkit pins its own numpy/astropy: it lives in a venv of its own (tests marked
# tom); built once, then reused.
MMCROSS_TOM_PYTHON=$(bash scripts/tom_env.sh)
export MMCROSS_TOM_PYTHON

state="${MMCROSS_TEST_STATE:-$(mktemp -d -t mmcross-test-XXXXXX)}"
mkdir -p "$state"
chmod 755 "$state"  # PostgreSQL runs as the postgres user and needs to enter it
cleanup() {
    python scripts/kafka_local.py stop --dir "$state/kafka" >/dev/null 2>&1 || true
    bash scripts/postgres_local.sh stop "$state/postgres" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Headless Chromium for the browser tests (tests marked browser): Debian's package, driven by
# playwright, which never downloads a browser of its own. Installed once.
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >&2
fi

pg_env=$(bash scripts/postgres_local.sh start "$state/postgres")
eval "$pg_env"
export MMCROSS_TEST_POSTGRES_URL
MMCROSS_KAFKA_BOOTSTRAP=$(python scripts/kafka_local.py start --dir "$state/kafka" \
    | sed -n 's/^KAFKA_BOOTSTRAP=//p')
export MMCROSS_KAFKA_BOOTSTRAP
echo "PostgreSQL: ${MMCROSS_TEST_POSTGRES_URL##*@}  Kafka: $MMCROSS_KAFKA_BOOTSTRAP"

ruff check .
bash scripts/lint_imports.sh
python -m pytest "$@"

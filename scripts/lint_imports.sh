#!/usr/bin/env bash
# The floors (import-linter contracts in pyproject.toml), checked on the installed layout:
# the repository's top-level folders only become subpackages of mmcross once installed, so
# mmcross is installed (no dependencies) into a temporary folder and linted there.
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d -t mmcross-lint-XXXXXX)
build=$(mktemp -d -t mmcross-lint-build-XXXXXX)
trap 'rm -rf "$site" "$build"' EXIT
# build from a copy so that no build/ folder is left in the checkout
cp -r pyproject.toml README.md mmcross listeners matchers brokers catalogs config "$build"/
python -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" "$build"
root=$PWD
(cd "$site" && PYTHONPATH="$site" lint-imports "$root/pyproject.toml")

#!/usr/bin/env bash
# The floors: import-linter contracts of pyproject.toml. The design card's folders reach the
# linter as subpackages of mmcross through the links mmcross/{listeners,matchers,brokers,
# catalogs,config} -> ../<folder> (the same mapping the installed package has), so plain
# `lint-imports` in the checkout sees the layout users get.
set -euo pipefail
cd "$(dirname "$0")/.."
lint-imports

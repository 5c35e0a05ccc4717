#!/usr/bin/env bash
# All tests on a fresh machine: install dependencies, build, run every test (ctest). GPU tests
# (label gpu) report "skipped: no GPU" where none is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --test
scripts/build.sh -DKILN_BUILD_TESTS=ON
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900

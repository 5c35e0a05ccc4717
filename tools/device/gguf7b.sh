#!/usr/bin/env bash
# Runs on the GPU machine (binaries from tools/device/pack.sh, compressed to .dev/gpu.tar.xz; the Llama 2
# tokenizer.model in .dev/shared): random Llama-2-7B-shape GGUF files (tools/make_random_gguf.py: Q4_0,
# Q8_0, a Q4_K_M mix) built straight into CUDA engines and measured with `kiln bench` at batch 1 (prompt
# 512, 64 generated): decode tok/s, TTFT, peak device memory (issue 15's GPU numbers).
# usage: TYPES="Q4_0 Q8_0 Q4_K_M" BATCHES="1" tools/device/gguf7b.sh
set -uo pipefail
here=$PWD
[ -f .dev/gpu.tar.xz ] && [ ! -x .dev/gpu/kiln ] && tar -C .dev -xJf .dev/gpu.tar.xz
export LD_LIBRARY_PATH=$here/.dev/gpu/lib:${LD_LIBRARY_PATH:-}
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for t in ${TYPES:-Q4_0 Q8_0 Q4_K_M}; do
  /usr/bin/time -f "make $t: %e s" python3 tools/make_random_gguf.py llama2-7b /tmp/l7b.$t.gguf --type $t \
    --tokenizer .dev/shared/models/llama2-tokenizer/tokenizer.model 2>&1 | tail -2
  /usr/bin/time -f "build $t: %e s, peak RSS %M KiB" .dev/gpu/kiln build /tmp/l7b.$t.gguf -o /tmp/l7b-$t.kiln \
    --backend cuda --profile batch=1:8:64,seq=1:512:4096 --no-tune 2>&1 | tail -2 | cut -c1-400
  rm -f /tmp/l7b.$t.gguf
  for b in ${BATCHES:-1}; do
    timeout 240 .dev/gpu/kiln bench /tmp/l7b-$t.kiln --batch $b --prompt-len 512 --gen-len 64 --iterations 2 --warmup 1 \
      --json --no-verify > "$out/gguf7b_${t}_b$b.json" 2> "$out/gguf7b_${t}_b$b.err"
    echo "$t batch $b: exit $?"; tail -2 "$out/gguf7b_${t}_b$b.err" | cut -c1-300
    python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in d if not isinstance(d[k], (list, dict))})' \
      "$out/gguf7b_${t}_b$b.json" 2>&1 | cut -c1-900
  done
  rm -f /tmp/l7b-$t.kiln
done

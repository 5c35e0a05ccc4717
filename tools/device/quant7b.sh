#!/usr/bin/env bash
# Runs on the GPU machine (binaries from tools/device/pack.sh, compressed to .dev/gpu.tar.xz): the quantized
# CUDA kernels' tests and bandwidth bench, then a random Llama-2-7B-shape model as fp16, int8 and int4 engines
# through `kiln bench` (batch 1 and 64, prompt 512): decode tok/s, TTFT, peak device memory.
# usage: tools/device/quant7b.sh [tests] [bench] [7b]   (env: QUANTS, BATCHES, PIPELINES="0 1")
set -uo pipefail
here=$PWD
[ -f .dev/gpu.tar.xz ] && tar -C .dev -xJf .dev/gpu.tar.xz
export LD_LIBRARY_PATH=$here/.dev/gpu/lib:${LD_LIBRARY_PATH:-}
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for what in "$@"; do
  case $what in
    tests)
      for t in test_cuda_gemv_quant test_cuda_kernels test_cuda_gemv_swiglu; do
        [ -x .dev/gpu/$t ] || continue
        timeout 120 .dev/gpu/$t > "$out/$t.log" 2>&1
        echo "$t: exit $? $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | tr '\n' ' ')"
        grep -E "Failure|FAILED|Expected|actual|error" "$out/$t.log" | head -12
      done ;;
    bench)
      timeout 240 .dev/gpu/cuda_gemv_quant_bench > "$out/cuda_gemv_quant_bench.txt" 2>&1; echo "gemv_quant_bench: exit $?"
      grep -v "^{" "$out/cuda_gemv_quant_bench.txt" | tail -110 ;;
    7b)
      python3 tools/make_random_hf_model.py llama2-7b /tmp/l7b --dtype fp16 --device cuda > "$out/make7b.log" 2>&1 || { tail "$out/make7b.log"; exit 1; }
      cp .dev/shared/fixtures/hf-tiny/tiny-llama/tokenizer{.json,_config.json} /tmp/l7b/
      for q in ${QUANTS:-none int8 int4-rtn}; do
        /usr/bin/time -f "build $q: %e s, peak RSS %M KiB" .dev/gpu/kiln build /tmp/l7b -o /tmp/l7b-$q.kiln --backend cuda \
          --profile batch=1:8:64,seq=1:512:4096 --quant $q --max-quant-error 0 --no-tune 2>&1 | tail -2 | cut -c1-400
        for b in ${BATCHES:-1 64}; do
         for pl in ${PIPELINES:-auto}; do  # PIPELINES="0 1": the engine with either M <= 8 quantized GEMV kernel
          tag=${q}_b$b; [ "$pl" != auto ] && tag=${tag}_pipe$pl
          KILN_CUDA_QUANT_PIPELINE=$([ "$pl" = auto ] && echo "" || echo "$pl") \
          timeout 240 .dev/gpu/kiln bench /tmp/l7b-$q.kiln --batch $b --prompt-len 512 --gen-len 64 --iterations 2 --warmup 1 \
            --json --no-verify > "$out/bench_$tag.json" 2> "$out/bench_$tag.err"
          echo "$q batch $b pipeline $pl: exit $?"; python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in d if not isinstance(d[k], (list, dict))})' "$out/bench_$tag.json" 2>&1 | cut -c1-900
         done
        done
        rm -f /tmp/l7b-$q.kiln
      done ;;
  esac
done

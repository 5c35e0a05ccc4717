#!/usr/bin/env bash
# Runs on the GPU machine over binaries packed by tools/device/pack.sh gpu ... and data copied to
# .dev/shared: the GPU tests, then (optionally) a random Llama-2-7B-shape engine through kiln bench.
# usage: tools/device/gpu_checks.sh [tests] [make7b] [7b] [parity7b] [profile7b] [compare] [serve7b]
# (.dev/gpu.tar.xz, when present, is unpacked first: binaries travel compressed to fit the carry limit)
set -uo pipefail
here=$PWD
[ -f .dev/gpu.tar.xz ] && tar -C .dev -xJf .dev/gpu.tar.xz
export LD_LIBRARY_PATH=$here/.dev/gpu/lib:${LD_LIBRARY_PATH:-}
export KILN_SHARED_DIR=$here/.dev/shared KILN_SOURCE_DIR=$here
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for what in "$@"; do
  case $what in
    tests)
      for t in test_cuda_kernels test_cuda_attention test_cuda_decode_path test_cuda_gemv_swiglu test_cuda_sampling \
               test_cuda_forward_sample test_parity_cuda; do
        [ -x .dev/gpu/$t ] || continue
        .dev/gpu/$t > "$out/$t.log" 2>&1
        echo "$t: exit $? $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | tr '\n' ' ')"
        grep -E "Failure|FAILED|Expected|actual|error" "$out/$t.log" | head -20
      done ;;
    make7b)
      python3 tools/make_random_hf_model.py llama2-7b /tmp/l7b --dtype fp16 --device cuda > "$out/make7b.log" 2>&1 || { tail "$out/make7b.log"; exit 1; }
      cp .dev/shared/fixtures/hf-tiny/tiny-llama/tokenizer{.json,_config.json} /tmp/l7b/  # the Llama 2 tokenizer, for text prompts
      .dev/gpu/kiln build /tmp/l7b -o /tmp/l7b.kiln --backend cuda --profile batch=1:8:64,seq=1:512:4096 2>&1 | tail -2 ;;
    compare)
      python3 bench/compare_hf.py /tmp/l7b --kiln .dev/gpu/kiln --engine /tmp/l7b.kiln --ttft-prompts 128,512,2048 \
        --decode-batches 1,8,32,64 --compile-batches 1,8 --reps 3 --json-out "$out/compare_hf.json" > "$out/compare_hf.log" 2>&1
      echo "compare: exit $?"; grep -v '^\[compare_hf' "$out/compare_hf.log" | tail -30 ;;
    7b)
      for b in 1 8 64; do
        .dev/gpu/kiln bench /tmp/l7b.kiln --batch $b --prompt-len 512 --gen-len 128 --iterations 3 --warmup 1 --json --no-verify \
          > "$out/bench_b$b.json" 2> "$out/bench_b$b.err"; echo "batch $b: exit $?"; tail -c 1500 "$out/bench_b$b.json"; tail -3 "$out/bench_b$b.err"
      done ;;
    parity7b)
      python3 bench/check_7b_parity.py /tmp/l7b --kiln .dev/gpu/kiln --engine /tmp/l7b.kiln 2>&1 | tee "$out/parity7b.log" | tail -12 ;;
    profile7b)
      .dev/gpu/kiln bench /tmp/l7b.kiln --batch 1 --prompt-len 512 --gen-len 16 --iterations 1 --warmup 1 --verbose --no-verify \
        > "$out/profile7b.txt" 2>&1; tail -60 "$out/profile7b.txt" ;;
  esac
done

#!/usr/bin/env bash
# Runs on the GPU machine over binaries packed by tools/device/pack.sh gpu ... and data copied to
# .dev/shared: the GPU tests, then (optionally) a random Llama-2-7B-shape engine through kiln bench.
# usage: tools/device/gpu_checks.sh [tests] [make7b] [7b] [parity7b] [profile7b] [compare] [serve7b] [benches]
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
      for t in test_cuda_kernels test_cuda_attention test_cuda_decode_path test_cuda_gemv_swiglu test_cuda_gemv_quant test_cuda_sampling \
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
    batching7b)  # continuous vs static batching (drop, pad) with long-tailed output lengths, same engine
      .dev/gpu/kiln build /tmp/l7b -o /tmp/l7b256.kiln --backend cuda --profile batch=1:64:256,seq=1:512:4096 2>&1 | tail -1
      for mode in "" "drop" "pad"; do
        .dev/gpu/kiln serve /tmp/l7b256.kiln --port 8123 --max-queue 1024 --no-verify ${mode:+--static-batching $mode} >> "$out/serve.log" 2>&1 &
        spid=$!; for i in $(seq 120); do curl -sf localhost:8123/health > /dev/null && break; sleep 0.5; done
        python3 bench/serve_load.py --url http://127.0.0.1:8123 --concurrency 64 --requests-per-client 4 --max-tokens 8:512 \
          --output-dist longtail 2>&1 | tail -1 | tee -a "$out/batching.jsonl" | python3 -c '
import json,sys; d=json.load(sys.stdin); r=d["levels"][0]; print(sys.argv[1], r["output_tok_per_s"], r["completion_tokens"], r["wall_s"], r["failed"], r["kv_leak"])' "mode=${mode:-continuous}"
        kill -INT $spid; wait $spid
      done
      python3 bench/hf_generate_load.py /tmp/l7b --concurrency 64,256 --json-out "$out/hf_generate_load.json" 2>&1 | grep -v Loading | tail -4 ;;
    prefix7b)  # a ~1,000-token system prompt: one request first, then 64 at once sharing it
      .dev/gpu/kiln build /tmp/l7b -o /tmp/l7b256.kiln --backend cuda --profile batch=1:64:256,seq=1:512:4096 2>&1 | tail -1
      .dev/gpu/kiln serve /tmp/l7b256.kiln --port 8123 --max-queue 1024 --no-verify >> "$out/serve.log" 2>&1 &
      spid=$!; for i in $(seq 120); do curl -sf localhost:8123/health > /dev/null && break; sleep 0.5; done
      for c in 1 64; do
        python3 bench/serve_load.py --url http://127.0.0.1:8123 --concurrency $c --requests-per-client 1 \
          --system-prompt-words ${PREFIX_WORDS:-960} --max-tokens 16:64 2>&1 | tail -1 | tee -a "$out/prefix.jsonl" | python3 -c '
import json,sys; r=json.load(sys.stdin)["levels"][0]; print({k: r[k] for k in ("concurrency","requests","failed","prompt_tokens","prefix_cache_hit_rate","ttft_p50_ms","ttft_p99_ms","kv_leak")})'
      done
      curl -s localhost:8123/metrics | grep -E "^kiln_prefix|^kiln_prompt_tokens" | tee "$out/prefix_metrics.txt"
      kill -INT $spid; wait $spid ;;
    serve7b)  # issue 4 on the GPU: kiln serve (continuous and static batching) and transformers generate()
      .dev/gpu/kiln build /tmp/l7b -o /tmp/l7b256.kiln --backend cuda --profile batch=1:64:256,seq=1:512:4096 2>&1 | tail -1
      serve() {  # serve [flags]: starts kiln serve on port 8123 and waits for /health
        .dev/gpu/kiln serve /tmp/l7b256.kiln --port 8123 --max-queue 1024 --no-verify "$@" >> "$out/serve.log" 2>&1 &
        spid=$!
        for i in $(seq 120); do curl -sf localhost:8123/health > /dev/null && return 0; sleep 0.5; done
        echo "server did not start"; tail -5 "$out/serve.log"; return 1
      }
      stop() { kill -INT $spid; wait $spid; echo "serve exit $?"; }
      load() { python3 bench/serve_load.py --url http://127.0.0.1:8123 "$@" 2>&1 | tail -1 | tee -a "$out/serve_load.jsonl" | python3 -c '
import json,sys; d=json.load(sys.stdin)
for r in d["levels"]: print(d.get("label",""), {k: r[k] for k in ("concurrency","requests","failed","output_tok_per_s","ttft_p50_ms","ttft_p99_ms","itl_p50_ms","itl_p99_ms","prefix_cache_hit_rate","preemptions","kv_blocks_total","kv_leak")})'; }
      serve && {
        nvidia-smi --query-gpu=memory.used --format=csv,noheader
        load --concurrency 64,256
        curl -s localhost:8123/metrics | grep -E "^kiln_kv_blocks|^kiln_preemptions|^kiln_requests_total" | tee "$out/metrics_after.txt"
        load --concurrency 64 --requests-per-client 4 --max-tokens 8:256  # mixed lengths: continuous
        load --concurrency 64 --requests-per-client 1 --system-prompt-words 750 --max-tokens 16:64  # shared ~1000-token prefix
        stop; }
      serve --static-batching drop && { load --concurrency 64 --requests-per-client 4 --max-tokens 8:256; stop; }  # the same, static
      serve --static-batching pad && { load --concurrency 64 --requests-per-client 4 --max-tokens 8:256; stop; }
      [ -n "${SKIP_HF:-}" ] || python3 bench/hf_generate_load.py /tmp/l7b --concurrency 64,256 --json-out "$out/hf_generate_load.json" 2>&1 | grep -v Loading | tail -4 ;;
    7b)
      for b in 1 8 64; do
        .dev/gpu/kiln bench /tmp/l7b.kiln --batch $b --prompt-len 512 --gen-len 128 --iterations 3 --warmup 1 --json --no-verify \
          > "$out/bench_b$b.json" 2> "$out/bench_b$b.err"; echo "batch $b: exit $?"; tail -c 1500 "$out/bench_b$b.json"; tail -3 "$out/bench_b$b.err"
      done ;;
    parity7b)
      python3 bench/check_7b_parity.py /tmp/l7b --kiln .dev/gpu/kiln --engine /tmp/l7b.kiln 2>&1 | tee "$out/parity7b.log" | tail -12 ;;
    benches)  # kernel benchmarks (no model needed): pack cuda_layer_bench, cuda_attention_bench, cuda_gemv_bench
      for b in cuda_layer_bench cuda_attention_bench cuda_gemv_bench cuda_gemv_quant_bench; do
        [ -x .dev/gpu/$b ] || continue
        .dev/gpu/$b > "$out/$b.txt" 2>&1; echo "$b: exit $?"; grep -v '^{' "$out/$b.txt" | tail -40
      done ;;
    profile7b)
      .dev/gpu/kiln bench /tmp/l7b.kiln --batch 1 --prompt-len 512 --gen-len 16 --iterations 1 --warmup 1 --verbose --no-verify \
        > "$out/profile7b.txt" 2>&1; tail -60 "$out/profile7b.txt" ;;
  esac
done

#!/usr/bin/env bash
# A/B of executor settings in one run: kiln bench of one engine under each environment setting given,
# in rounds (A B C, A B C, ...) so that drift of the machine falls on every setting alike.
# usage: tools/device/sweep_env.sh ENGINE "BENCH ARGS" ROUNDS "ENV=.. ENV=.." "ENV=.." ...
#   e.g. tools/device/sweep_env.sh /tmp/l7b.kiln "-b 1 -p 128 -g 128" 3 "" "KILN_CUDA_L2_PREFETCH_ATTN_MB=0"
# prints one line per run: setting, decode step p50 ms, decode tok/s, TTFT ms, kernels per decode step.
set -uo pipefail
engine=$1 args=$2 rounds=$3
shift 3
kiln=${KILN:-.dev/gpu/kiln}
export LD_LIBRARY_PATH=$PWD/.dev/gpu/lib:${LD_LIBRARY_PATH:-}  # as gpu_checks.sh (which unpacks .dev/gpu)
err=$(mktemp)
for r in $(seq "$rounds"); do
  for setting in "$@"; do
    # shellcheck disable=SC2086
    env $setting "$kiln" bench "$engine" $args --iterations 3 --warmup 1 --json --no-verify 2> "$err" |
      python3 -c '
import json, sys
text = sys.stdin.read()
if not text.strip(): sys.exit(1)
d = json.loads(text)
name = sys.argv[1] or "(default)"
print("%-56s step p50 %.4f ms  %8.1f tok/s  ttft %.2f ms  %d kernels/step" % (name, d["decode_step_ms_p50"], d["decode_tokens_per_second"], d["ttft_ms"], d.get("kernels_per_decode_step", 0)))' "$setting" ||
      { echo "$setting: kiln bench failed"; tail -3 "$err"; }
  done
done

#!/usr/bin/env bash
# Accuracy of every quantization mode against the unquantized engine of the same model (docs/QUANTIZATION.md):
# builds the baseline and one engine per mode, then `kiln eval --compare` (KL, top-1 agreement, perplexity of
# both) on a fixed text. Prints a markdown table and one JSON line per mode.
# usage: bench/quant_accuracy.sh MODEL [--tokenizer FILE] [--dtype fp16] [--max-tokens N] [--modes "int8 int4 ..."]
#                                [--calib FILE [--calib-samples N]]   (calibration of the quantized builds)
#   a mode ending in -gptq (int8-gptq, int4-gptq, w8a8-gptq, ...) adds --gptq to its flags
#   MODEL: HF directory or llama2.c .bin; text: /usr/share/common-licenses/GPL-3 (Debian base-files) unless KILN_EVAL_TEXT
set -euo pipefail
kiln=${KILN:-build/kiln}
model=$1; shift
tokenizer=() calib=() dtype=fp16 max_tokens=2048
modes="int8 int8-g64 int4-rtn int4 w8a8 w8a8-minmax w8a8-percentile w8a8-entropy"
while (($#)); do
  case $1 in
    --tokenizer) tokenizer=(--tokenizer "$2"); shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --calib) calib=(--calib "$2"); shift 2 ;;
    --calib-samples) calib+=(--calib-samples "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
text=${KILN_EVAL_TEXT:-/usr/share/common-licenses/GPL-3}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
build() { "$kiln" build "$model" "${tokenizer[@]}" --dtype "$dtype" --max-seq-len 1024 -o "$work/$1.kiln" "${@:2}" 2>"$work/$1.log" ||
            { cat "$work/$1.log" >&2; exit 1; }; }
build base
echo "| mode | flags | weight MiB | perplexity | vs base | KL mean | KL p99 | top-1 agreement | max abs logit diff |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in $modes; do
  base_mode=${mode%-gptq}  # MODE-gptq: the same flags plus --gptq
  case $base_mode in
    int8-g*) flags=(--quant int8 --group-size "${base_mode#int8-g}") ;;
    int4-g*) flags=(--quant int4 --group-size "${base_mode#int4-g}") ;;
    w8a8-*) flags=(--quant w8a8 --calib-method "${base_mode#w8a8-}") ;;
    *) flags=(--quant "$base_mode") ;;
  esac
  [ "$base_mode" != "$mode" ] && flags+=(--gptq)
  build "$mode" "${flags[@]}" "${calib[@]}"
  mib=$(grep -o '[0-9.]* MiB of weights' "$work/$mode.log" | cut -d' ' -f1)
  "$kiln" eval "$work/base.kiln" --compare "$work/$mode.kiln" --perplexity "$text" --max-tokens "$max_tokens" --json \
      2>/dev/null > "$work/$mode.json"
  python3 - "$mode" "${flags[*]}" "$mib" "$work/$mode.json" <<'PY'
import json, sys
mode, flags, mib, path = sys.argv[1:5]
d = json.load(open(path))
base, test = d["engine_perplexity"], d["engine2_perplexity"]
print(f"| {mode} | `{flags}` | {mib} | {test:.4f} | {100 * (test / base - 1):+.2f}% (base {base:.4f}) | {d['kl_mean']:.5f} | "
      f"{d['kl_p99']:.4f} | {d['top1_agreement_percent']:.2f}% | {d['max_abs_logit_diff']:.3f} |")
print(json.dumps({"mode": mode, "flags": flags, "weight_mib": float(mib), "base_ppl": base, "ppl": test,
                  "kl_mean": d["kl_mean"], "kl_p99": d["kl_p99"], "top1": d["top1_agreement_percent"],
                  "scored": d["scored_tokens"]}), file=sys.stderr)
PY
done

#!/usr/bin/env python3
"""The peer for bench/serve_load.py: the same requests through transformers' generate() in static
batches, on the GPU (run it on the same machine as the kiln server run, one after the other).

    python3 bench/hf_generate_load.py MODEL_DIR [--concurrency 64,256] [--requests-per-client 2]
        [--prompt-words 8:64] [--max-tokens 16:128] [--system-prompt-words 0] [--seed 0]
        [--dtype fp16|bf16] [--json-out FILE]

For each level C the workload is exactly serve_load.py's (client i's requests from client_workload()),
C * requests-per-client prompts, run in order as batches of C: left-padded, greedy,
max_new_tokens = the largest max_tokens of the batch, EOS ignored (min_new_tokens = max_new_tokens) so
every request gets at least its own max_tokens. Output tokens/s = sum of each request's max_tokens /
wall time of all batches (tokens a request did not ask for are work, not output). Peak memory is
torch.cuda.max_memory_allocated. Prints one table and one JSON line.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402  (the shared workload)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--concurrency", default="64,256")
    serve_load.add_workload_args(ap)
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation="sdpa").cuda().eval()

    # Warm-up (CUDA context, cuBLAS handles and kernels), so that the first level is not charged for it.
    with torch.no_grad():
        warm = tok(["once upon a time"] * 2, return_tensors="pt", padding=True).to("cuda")
        model.generate(**warm, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    rows = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        work = [r for i in range(c) for r in serve_load.client_workload(args, i)]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        useful = 0
        prompt_tokens = 0
        error = ""
        t0 = time.perf_counter()
        try:
            for start in range(0, len(work), c):
                batch = work[start:start + c]
                enc = tok([p for p, _ in batch], return_tensors="pt", padding=True).to("cuda")
                new = max(m for _, m in batch)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
                assert out.shape[1] - enc["input_ids"].shape[1] == new
                useful += sum(m for _, m in batch)
                prompt_tokens += int(enc["attention_mask"].sum())
            torch.cuda.synchronize()
        except Exception as e:  # e.g. out of memory at 256: reported, not hidden
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        wall = time.perf_counter() - t0
        rows.append({"concurrency": c, "requests": len(work), "wall_s": round(wall, 3),
                     "output_tok_per_s": round(useful / wall, 1) if not error else None,
                     "prompt_tokens": prompt_tokens, "output_tokens": useful,
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "error": error})
        torch.cuda.empty_cache()

    print("concurrency | requests | output_tok_per_s | wall_s | peak_gib | error")
    for r in rows:
        print(f"{r['concurrency']} | {r['requests']} | {r['output_tok_per_s']} | {r['wall_s']} | {r['peak_gib']} | {r['error']}")
    import transformers
    line = json.dumps({"bench": "hf_generate_load", "model": args.model_dir, "dtype": args.dtype,
                       "transformers": transformers.__version__, "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(), "prompt_words": args.prompt_words,
                       "max_tokens": args.max_tokens, "output_dist": args.output_dist,
                       "requests_per_client": args.requests_per_client, "levels": rows})
    serve_load.emit_json_line(line, args.json_out)


if __name__ == "__main__":
    main()

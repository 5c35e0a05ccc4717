#!/usr/bin/env python3
"""kiln vs Hugging Face transformers on a big random model, on the GPU (issue 3 correctness).

    python3 bench/check_7b_parity.py MODEL_DIR --kiln build/kiln --engine model.kiln [--prompts 8] [--gen 32]

For each of --prompts random prompts (fixed seed, lengths spread over 8..1024 tokens): transformers in
fp16 on the GPU gives the last-position logits and a greedy continuation with its top-1/top-2 margins;
`kiln run --prompt-ids ... --temperature 0 --json --dump-logits --ignore-eos` gives the same from the
engine. Checks: relative L2 of the last logits under --tolerance (2e-2), greedy ids equal up to the first
step whose transformers margin is under --min-margin (1e-2). Prints a table and one JSON line; exit 1 on
any failure.
"""
import argparse
import json
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--tolerance", type=float, default=2e-2)
    ap.add_argument("--min-margin", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float16).cuda().eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(args.seed)
    lengths = np.linspace(8, 1024, args.prompts).astype(int)
    prompts = [[1] + rng.integers(3, vocab, size=int(n) - 1).tolist() for n in lengths]

    reference = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=args.gen, min_new_tokens=args.gen,
                                 do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
            scores = [s[0].float() for s in out.scores]
            margins = [float((lambda t: t[0] - t[1])(torch.topk(s, 2).values)) for s in scores]
            reference.append({"last": scores[0].cpu().numpy().astype(np.float64),
                              "ids": out.sequences[0, len(ids):].tolist(), "margins": margins})
    del model
    torch.cuda.empty_cache()

    rows, ok = [], True
    for ids, ref in zip(prompts, reference):
        cmd = [args.kiln, "run", args.engine, "--prompt-ids", ",".join(map(str, ids)), "-n", str(args.gen),
               "--temperature", "0", "--json", "--dump-logits", "--ignore-eos", "--no-verify"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 1
        got = json.loads(res.stdout)
        last = np.array(got["last_logits"], dtype=np.float64)
        rel = float(np.linalg.norm(last - ref["last"]) / np.linalg.norm(ref["last"]))
        compare = next((i for i, m in enumerate(ref["margins"]) if m < args.min_margin), len(ref["ids"]))
        equal = got["ids"][:compare] == ref["ids"][:compare]
        agree = next((i for i, (a, b) in enumerate(zip(got["ids"], ref["ids"])) if a != b), len(ref["ids"]))
        good = rel < args.tolerance and equal
        ok &= good
        rows.append({"prompt_len": len(ids), "rel_l2": rel, "compared_steps": compare, "greedy_equal": equal,
                     "agree_steps": agree, "ok": good})
    print(f"{'prompt':>7} {'rel L2':>10} {'compared':>9} {'equal':>6} {'agree':>6}")
    for r in rows:
        print(f"{r['prompt_len']:>7} {r['rel_l2']:>10.2e} {r['compared_steps']:>9} {str(r['greedy_equal']):>6} {r['agree_steps']:>6}")
    print(json.dumps({"model": args.model_dir, "tolerance": args.tolerance, "min_margin": args.min_margin, "ok": ok, "cases": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

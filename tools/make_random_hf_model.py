#!/usr/bin/env python3
"""Writes a random-weight Hugging Face model directory of a named shape, for benchmarks.

    python3 tools/make_random_hf_model.py llama2-7b /tmp/llama2-7b [--dtype fp16|bf16] [--device cuda|cpu]
                                          [--layers N] [--shard-gb 5] [--seed 0]

Output: config.json (transformers format, with the real model's fields), model-0000k-of-0000n.safetensors
shards of about --shard-gb GB and model.safetensors.index.json. No tokenizer: benchmarks feed ids.
Matrices and embeddings ~ N(0, 0.02), norm weights 1, biases 0 (the shape is what matters for speed;
the logits of such a model are not meaningful text).

Weights are drawn with torch on --device (a 7B model on a GPU in well under a minute; most of the time is
the disk) and streamed tensor by tensor into shards whose headers are written first, so host memory
stays at one tensor. Without torch, numpy draws on the CPU (slow; for small --layers tests).
"""
import argparse
import json
import math
import os
import struct
import sys
import time

# Shapes from the models' published config.json files.
SHAPES = {
    "llama2-7b": dict(arch="LlamaForCausalLM", model_type="llama", hidden=4096, inter=11008, layers=32, heads=32,
                      kv_heads=32, vocab=32000, max_pos=4096, theta=10000.0, eps=1e-5, bos=1, eos=2),
    "llama3-8b": dict(arch="LlamaForCausalLM", model_type="llama", hidden=4096, inter=14336, layers=32, heads=32,
                      kv_heads=8, vocab=128256, max_pos=8192, theta=500000.0, eps=1e-5, bos=128000, eos=128001,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "mistral-7b": dict(arch="MistralForCausalLM", model_type="mistral", hidden=4096, inter=14336, layers=32, heads=32,
                       kv_heads=8, vocab=32000, max_pos=32768, theta=1e6, eps=1e-5, bos=1, eos=2,
                       extra={"sliding_window": None}),
    "qwen2-7b": dict(arch="Qwen2ForCausalLM", model_type="qwen2", hidden=3584, inter=18944, layers=28, heads=28,
                     kv_heads=4, vocab=152064, max_pos=32768, theta=1e6, eps=1e-6, bos=151643, eos=151643,
                     qkv_bias=True, extra={"use_sliding_window": False, "sliding_window": 131072,
                                           "max_window_layers": 28}),
}

DTYPES = {"fp16": ("F16", "float16"), "bf16": ("BF16", "bfloat16")}


def make_config(shape, layers, dtype):
    s = SHAPES[shape]
    config = {
        "architectures": [s["arch"]],
        "model_type": s["model_type"],
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "num_hidden_layers": layers,
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "head_dim": s["hidden"] // s["heads"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": s["max_pos"],
        "rms_norm_eps": s["eps"],
        "rope_theta": s["theta"],
        "rope_scaling": s.get("rope_scaling"),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": s["bos"],
        "eos_token_id": s["eos"],
        "torch_dtype": DTYPES[dtype][1],
        "use_cache": True,
        "initializer_range": 0.02,
    }
    if s["model_type"] == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    config.update(s.get("extra", {}))
    return config


def tensor_plan(shape, layers):
    """[(name, shape, kind)] in checkpoint order; kind: 'normal', 'ones' or 'zeros'."""
    s = SHAPES[shape]
    h, f, v = s["hidden"], s["inter"], s["vocab"]
    hd = h // s["heads"]
    q, kv = s["heads"] * hd, s["kv_heads"] * hd
    plan = [("model.embed_tokens.weight", (v, h), "normal")]
    for i in range(layers):
        p = f"model.layers.{i}."
        plan += [(p + "input_layernorm.weight", (h,), "ones"),
                 (p + "self_attn.q_proj.weight", (q, h), "normal"),
                 (p + "self_attn.k_proj.weight", (kv, h), "normal"),
                 (p + "self_attn.v_proj.weight", (kv, h), "normal")]
        if s.get("qkv_bias"):
            plan += [(p + "self_attn.q_proj.bias", (q,), "zeros"),
                     (p + "self_attn.k_proj.bias", (kv,), "zeros"),
                     (p + "self_attn.v_proj.bias", (kv,), "zeros")]
        plan += [(p + "self_attn.o_proj.weight", (h, q), "normal"),
                 (p + "post_attention_layernorm.weight", (h,), "ones"),
                 (p + "mlp.gate_proj.weight", (f, h), "normal"),
                 (p + "mlp.up_proj.weight", (f, h), "normal"),
                 (p + "mlp.down_proj.weight", (h, f), "normal")]
    plan += [("model.norm.weight", (h,), "ones"), ("lm_head.weight", (v, h), "normal")]
    return plan


class TorchSource:
    def __init__(self, device, dtype, seed):
        import torch
        self.torch = torch
        self.device = device
        self.dtype = getattr(torch, DTYPES[dtype][1])
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def draw(self, shape, kind):
        t = self.torch.empty(shape, dtype=self.dtype, device=self.device)
        if kind == "normal":
            t.normal_(0.0, 0.02, generator=self.generator)
        else:
            t.fill_(1.0 if kind == "ones" else 0.0)
        return t.view(self.torch.int16).cpu().numpy()  # raw 2-byte elements


class NumpySource:
    def __init__(self, dtype, seed):
        import numpy as np
        self.np = np
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)

    def draw(self, shape, kind):
        np = self.np
        if kind == "normal":
            x = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        else:
            x = np.full(shape, 1.0 if kind == "ones" else 0.0, dtype=np.float32)
        if self.dtype == "fp16":
            return x.astype(np.float16)
        bits = x.view(np.uint32)  # bf16: round to nearest even on the upper 16 bits
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_model(out_dir, shape, dtype, layers, shard_bytes, source):
    os.makedirs(out_dir, exist_ok=True)
    plan = tensor_plan(shape, layers)
    shards, current, current_bytes = [], [], 0
    for name, dims, kind in plan:
        nbytes = 2 * math.prod(dims)
        if current and current_bytes + nbytes > shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, dims, kind, nbytes))
        current_bytes += nbytes
    shards.append(current)

    st_dtype = DTYPES[dtype][0]
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file_name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        # safetensors layout: u64 header length, JSON header (offsets relative to the data start), data.
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dims, _, nbytes in shard:
            header[name] = {"dtype": st_dtype, "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file_name
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)
        with open(os.path.join(out_dir, file_name), "wb") as f:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            for name, dims, kind, nbytes in shard:
                data = source.draw(dims, kind)
                assert data.nbytes == nbytes, name
                f.write(memoryview(data).cast("B"))
        total += offset
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(make_config(shape, layers, dtype), f, indent=2)
    return total, len(shards)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--device", default="cuda", help="torch device to draw on (cuda or cpu)")
    ap.add_argument("--layers", type=int, default=0, help="override the number of layers (quick tests)")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    layers = args.layers or SHAPES[args.shape]["layers"]
    try:
        source = TorchSource(args.device, args.dtype, args.seed)
    except ImportError:
        if args.device != "cpu":
            sys.exit("make_random_hf_model: torch is not installed; use --device cpu (numpy)")
        source = NumpySource(args.dtype, args.seed)
    start = time.time()
    total, num_shards = write_model(args.out_dir, args.shape, args.dtype, layers, int(args.shard_gb * 1e9), source)
    print(f"make_random_hf_model: wrote {args.out_dir}: {args.shape}, {layers} layers, {args.dtype}, "
          f"{total / 1e9:.2f} GB in {num_shards} shards, {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()

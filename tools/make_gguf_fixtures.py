#!/usr/bin/env python3
"""Writes the GGUF fixtures that kiln is compared with llama.cpp on (tools/make_llamacpp_golden.py runs
llama.cpp on them and commits what it computed; tests/format/test_gguf_llamacpp.cc makes the same files
again, checks their sha256 against the golden, and compares kiln's results with llama.cpp's).

  make_gguf_fixtures.py OUT_DIR [--shared ../shared] [--smollm2 Q4_1.gguf] [--only NAME ...]
      Writes OUT_DIR/NAME.gguf for every fixture and prints one JSON object {NAME: sha256}.

Needs numpy and gguf-py, pinned (tools/fetch_smollm2.sh: gguf==0.19.0, numpy==2.4.6, its venv); the
files are byte-for-byte the same wherever those versions run (seeded PCG64, gguf-py's own quantizers).

Fixtures (all written as convert_hf_to_gguf.py lays a model out: llama q/k rows permuted for
interleaved RoPE, qwen2 not; F32 norms and biases; the Llama 2 SentencePiece vocabulary from
shared/models/llama2-tokenizer/tokenizer.model as tokenizer.ggml.model "llama"):
  tiny-llama-TYPE, tiny-qwen2-TYPE   the hf-tiny models' own weights (shared/fixtures/hf-tiny), every
      matrix in TYPE = f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 quantized by gguf-py, except one whose row
      is not a multiple of the type's block (tiny-llama's ffn_down, 172 wide), which stays F16 as
      llama.cpp's quantizer falls back. tiny-qwen2 ties its output to token_embd.
  kquant-llama-TYPE   TYPE = q2_k q3_k q4_k q5_k q6_k: k-quants need rows of 256 and the hf-tiny models
      are 64 wide, so this is a llama of the same vocabulary, 256 wide (4 heads of 64, 2 kv heads,
      FFN 768, 2 layers), whose every matrix is TYPE blocks of seeded random codes and scales, the
      super-block scales chosen so the weights have mean ~0 and a set standard deviation (a quantizer
      is not needed: the blocks are the model, and llama.cpp and kiln must agree on what they mean).
  smollm2-f16 (with --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf)   the real model with every quantized
      tensor dequantized by gguf-py and stored as F16, all metadata copied: llama.cpp then runs it without
      quantizing activations, which separates its activation-quantization gap on the Q4_1 file from
      any difference in the model.
  smollm2-vocab-PRE (with --smollm2), PRE = llama-bpe qwen2   SmolLM2's metadata only (no tensors) with
      tokenizer.ggml.pre set to PRE and a few tokens added (EXTRA_TOKENS below): its 49,160 tokens and
      48,907 merges split by Llama 3's / Qwen2's pre-tokenizer, to tokenize with.
"""
import argparse
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spm_vocab import sentencepiece_vocab  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
KQUANT_TYPES = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
QTYPE = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
         "q5_0": Q.Q5_0, "q5_1": Q.Q5_1, "q2_k": Q.Q2_K, "q3_k": Q.Q3_K, "q4_k": Q.Q4_K, "q5_k": Q.Q5_K,
         "q6_k": Q.Q6_K}
VOCAB_PRES = ["llama-bpe", "qwen2"]
KQUANT = dict(dim=256, heads=4, kv_heads=2, ffn=768, layers=2, eps=1e-5, theta=10000.0, ctx=512)


def fixture_names(smollm2: bool = False):
    return ([f"tiny-llama-{t}" for t in TINY_TYPES] + [f"tiny-qwen2-{t}" for t in TINY_TYPES] +
            [f"kquant-llama-{t}" for t in KQUANT_TYPES] +
            (["smollm2-f16"] + [f"smollm2-vocab-{p}" for p in VOCAB_PRES] if smollm2 else []))


def read_safetensors(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = np.frombuffer(data[base + begin:base + end], dtype=np.uint8)
        if info["dtype"] == "F32":
            arr = raw.view(np.float32)
        elif info["dtype"] == "F16":
            arr = raw.view(np.float16).astype(np.float32)
        elif info["dtype"] == "BF16":
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"make_gguf_fixtures: {path}: tensor {name}: dtype {info['dtype']} not handled")
        out[name] = arr.reshape(info["shape"]).astype(np.float32)
    return out


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate-half q/k rows -> interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_vocab(writer: gguf.GGUFWriter, shared: Path):
    pieces, scores, types = sentencepiece_vocab(shared / "models/llama2-tokenizer/tokenizer.model")
    add_llama_vocab(writer, pieces, scores, types)
    return len(pieces)


def add_llama_vocab(writer: gguf.GGUFWriter, pieces, scores, types):
    """A Llama 2 style SentencePiece vocabulary (tokenizer.ggml.model "llama", BOS 1 added, EOS 2, UNK 0)."""
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def add_hparams(writer, arch, *, ctx, dim, layers, ffn, heads, kv_heads, eps, theta, vocab):
    writer.add_context_length(ctx)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_vocab_size(vocab)


def add_matrix(writer, name: str, w: np.ndarray, kind: str):
    qtype = QTYPE[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block != 0:
        qtype = Q.F16  # as llama.cpp's quantizer falls back for rows that are not whole blocks
    data = gguf.quants.quantize(w.astype(np.float32), qtype)
    # quantized data comes as bytes per row; gguf-py turns that byte shape back into elements
    writer.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)


def tiny_fixture(path: Path, shared: Path, model: str, kind: str):
    src = shared / "fixtures/hf-tiny" / model
    config = json.loads((src / "config.json").read_text())
    t = read_safetensors(src / "model.safetensors")
    arch = "llama" if model == "tiny-llama" else "qwen2"
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"kiln fixture {model} {kind}")
    vocab = add_vocab(writer, shared)
    if vocab != config["vocab_size"]:
        raise SystemExit(f"make_gguf_fixtures: {model} has {config['vocab_size']} tokens, the vocabulary {vocab}")
    rope = config.get("rope_parameters") or {}
    add_hparams(writer, arch, ctx=config["max_position_embeddings"], dim=config["hidden_size"],
                layers=config["num_hidden_layers"], ffn=config["intermediate_size"], heads=heads,
                kv_heads=kv_heads, eps=config["rms_norm_eps"], theta=rope.get("rope_theta", config.get("rope_theta")),
                vocab=vocab)
    add_matrix(writer, "token_embd.weight", t["model.embed_tokens.weight"], kind)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q, k = t[p + "self_attn.q_proj.weight"], t[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = permute(q, heads), permute(k, kv_heads)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        add_matrix(writer, f"blk.{i}.attn_q.weight", q, kind)
        add_matrix(writer, f"blk.{i}.attn_k.weight", k, kind)
        add_matrix(writer, f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"], kind)
        if arch == "qwen2":
            for n in "qkv":
                writer.add_tensor(f"blk.{i}.attn_{n}.bias", t[p + f"self_attn.{n}_proj.bias"])
        add_matrix(writer, f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"], kind)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        add_matrix(writer, f"blk.{i}.ffn_gate.weight", t[p + "mlp.gate_proj.weight"], kind)
        add_matrix(writer, f"blk.{i}.ffn_up.weight", t[p + "mlp.up_proj.weight"], kind)
        add_matrix(writer, f"blk.{i}.ffn_down.weight", t[p + "mlp.down_proj.weight"], kind)
    writer.add_tensor("output_norm.weight", t["model.norm.weight"])
    if not config.get("tie_word_embeddings", False):
        add_matrix(writer, "output.weight", t["lm_head.weight"], kind)
    finish(writer)


# Byte offsets of the f16 super-block scale d and (where the type has one) min scale dmin.
KQUANT_SCALES = {"q2_k": (80, 82), "q3_k": (108, None), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208, None)}


def random_kquant(rng: np.random.Generator, kind: str, rows: int, cols: int, std: float) -> np.ndarray:
    """rows x cols weights as `kind` blocks of random codes; d (and dmin) set for mean ~0 and `std`."""
    qtype = QTYPE[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    d_at, dmin_at = KQUANT_SCALES[kind]

    def with_scales(d: float, dmin: float) -> np.ndarray:
        out = blocks.copy()
        out[:, d_at:d_at + 2] = np.frombuffer(np.float16(d).tobytes(), dtype=np.uint8)
        if dmin_at is not None:
            out[:, dmin_at:dmin_at + 2] = np.frombuffer(np.float16(dmin).tobytes(), dtype=np.uint8)
        return out

    ratio = 0.0
    if dmin_at is not None:  # w = d * a - dmin * b: dmin = d * mean(a) / mean(b) centres the weights
        a = gguf.quants.dequantize(with_scales(1.0, 0.0), qtype).mean()
        b = -gguf.quants.dequantize(with_scales(0.0, 1.0), qtype).mean()
        ratio = float(a / b)
    unit = gguf.quants.dequantize(with_scales(1.0, ratio), qtype).std()
    d = std / float(unit)
    return with_scales(d, d * ratio).reshape(rows, cols // block * size)


def kquant_fixture(path: Path, shared: Path, kind: str):
    c = KQUANT
    rng = np.random.Generator(np.random.PCG64(20261207 + KQUANT_TYPES.index(kind)))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"kiln fixture kquant-llama {kind}")
    vocab = add_vocab(writer, shared)
    add_hparams(writer, "llama", ctx=c["ctx"], dim=c["dim"], layers=c["layers"], ffn=c["ffn"], heads=c["heads"],
                kv_heads=c["kv_heads"], eps=c["eps"], theta=c["theta"], vocab=vocab)
    qtype = QTYPE[kind]
    dim, head_dim = c["dim"], c["dim"] // c["heads"]

    def matrix(name, rows, cols, std):
        writer.add_tensor(name, random_kquant(rng, kind, rows, cols, std), raw_dtype=qtype)

    def norm(name, n):
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", vocab, dim, 1.0)
    for i in range(c["layers"]):
        norm(f"blk.{i}.attn_norm.weight", dim)
        matrix(f"blk.{i}.attn_q.weight", dim, dim, 0.15)
        matrix(f"blk.{i}.attn_k.weight", c["kv_heads"] * head_dim, dim, 0.15)
        matrix(f"blk.{i}.attn_v.weight", c["kv_heads"] * head_dim, dim, 0.06)
        matrix(f"blk.{i}.attn_output.weight", dim, dim, 0.06)
        norm(f"blk.{i}.ffn_norm.weight", dim)
        matrix(f"blk.{i}.ffn_gate.weight", c["ffn"], dim, 0.06)
        matrix(f"blk.{i}.ffn_up.weight", c["ffn"], dim, 0.06)
        matrix(f"blk.{i}.ffn_down.weight", dim, c["ffn"], 0.06)
    norm("output_norm.weight", dim)
    matrix("output.weight", vocab, dim, 0.3)
    finish(writer)


def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, replace: dict | None = None):
    replace = replace or {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, replace.get(name, field.contents()), vtype, sub)


# Appended to SmolLM2's vocabulary in the smollm2-vocab-* files, so the pre-tokenizers differ where they
# should: multi-digit tokens (Llama 3 splits numbers in runs of 1-3 digits, Qwen2 one digit each;
# SmolLM2's own vocabulary has no such token) and a word that only exists whole, with no merge
# reaching it (Llama 3's ignore_merges takes it as is; BPE elsewhere spells it out).
EXTRA_TOKENS = ["12", "123", "20", "202", "2024", "99", "999", "ĠCamelCase"]
EXTRA_MERGES = ["1 2", "12 3", "2 0", "20 2", "202 4", "9 9", "99 9"]


def smollm2_vocab_fixture(path: Path, source: Path, pre: str):
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(path), str(reader.fields["general.architecture"].contents()))
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    merges = list(reader.fields["tokenizer.ggml.merges"].contents())
    copy_metadata(reader, writer, {"tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens + EXTRA_TOKENS,
                                   "tokenizer.ggml.token_type": types + [1] * len(EXTRA_TOKENS),
                                   "tokenizer.ggml.merges": merges + EXTRA_MERGES})
    finish(writer)


def smollm2_f16_fixture(path: Path, source: Path):
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(path), str(reader.fields["general.architecture"].contents()))
    copy_metadata(reader, writer)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne[0] first
        if t.tensor_type == Q.F32:
            writer.add_tensor(t.name, np.array(t.data, dtype=np.float32).reshape(shape))
        else:
            data = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(shape)
            writer.add_tensor(t.name, data.astype(np.float16))
    finish(writer)


def finish(writer: gguf.GGUFWriter):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(out: Path, shared: Path, names, smollm2: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for name in names:
        path = out / f"{name}.gguf"
        tmp = out / f".{name}.gguf.{os.getpid()}.tmp"  # concurrent makers each rename a whole file
        kind = name.rsplit("-", 1)[1]
        if name.startswith("smollm2-") and smollm2 is None:
            raise SystemExit(f"make_gguf_fixtures: {name} needs --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf")
        if name == "smollm2-f16":
            smollm2_f16_fixture(tmp, smollm2)
        elif name.startswith("smollm2-vocab-"):
            smollm2_vocab_fixture(tmp, smollm2, name[len("smollm2-vocab-"):])
        elif name.startswith("kquant-llama-"):
            kquant_fixture(tmp, shared, kind)
        else:
            tiny_fixture(tmp, shared, name.rsplit("-", 1)[0], kind)
        tmp.replace(path)
        done[name] = sha256(path)
    return done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--smollm2", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    names = fixture_names(smollm2=True)
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"make_gguf_fixtures: no fixture {unknown[0]} (have: {' '.join(names)})")
        names = args.only
    elif args.smollm2 is None:
        names = fixture_names()
    print(json.dumps(make(args.out, args.shared, names, args.smollm2), indent=1))


if __name__ == "__main__":
    sys.exit(main())

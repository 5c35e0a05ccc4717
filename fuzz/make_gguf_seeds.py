#!/usr/bin/env python3
"""Writes small valid GGUF files as seeds for fuzz_gguf: usage make_gguf_seeds.py DIR (stdlib only)."""
import pathlib
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
          I64: "<q", F64: "<d"}
# ggml type id -> (block size, bytes per block), gguf-py GGML_QUANT_SIZES.
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
        "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
        "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "I8": (24, 1, 1), "BF16": (30, 1, 2),
        "MXFP4": (39, 32, 17)}


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    if vtype == STRING:
        return string(v)
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(value(etype, x) for x in items)
    return struct.pack(SCALAR[vtype], v)


def image(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims in GGUF order, ggml type name)], data zero-filled."""
    head = b"".join(string(k) + struct.pack("<I", t) + value(t, v) for k, t, v in kvs)
    infos, data = b"", b""
    for name, dims, tname in tensors:
        tid, block, size = GGML[tname]
        n = 1
        for d in dims:
            n *= d
        data += b"\0" * (-len(data) % alignment)
        infos += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, len(data))
        data += bytes((i * 7) & 0xff for i in range(n // block * size))
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + head + infos
    return out + b"\0" * (-len(out) % alignment) + data


out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
every_type = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1), ("u8", U8, 7),
              ("i8", I8, -3), ("u16", U16, 500), ("i16", I16, -500), ("i32", I32, -70000), ("u64", U64, 1 << 40),
              ("i64", I64, -(1 << 40)), ("llama.rope.freq_base", F32, 10000.0), ("f64", F64, 0.5),
              ("tokenizer.ggml.add_bos_token", BOOL, True),
              ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<unk>", "<s>", "</s>", "a", "\u4e2d"])),
              ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, -1.0, -2.0, -3.0, -4.0])),
              ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3, 1, 1])),
              ("nested", ARRAY, (ARRAY, [(U16, [1, 2]), (BOOL, [True, False]), (ARRAY, [(STRING, ["x"])])]))]
(out / "every_value_type").write_bytes(image(every_type, [
    ("token_embd.weight", [64, 5], "Q8_0"), ("blk.0.attn_norm.weight", [64], "F32"),
    ("blk.0.ffn_down.weight", [256, 2], "Q4_K"), ("output_norm.weight", [64], "F16"), ("empty", [0, 3], "F32")]))
(out / "v2_align64").write_bytes(image([("general.alignment", U32, 64), ("general.name", STRING, "x")], [
    ("a", [3, 2, 1, 1], "I8"), ("b", [32, 2], "Q4_0"), ("c", [4], "BF16"), ("d", [64], "MXFP4")],
    version=2, alignment=64))
(out / "metadata_only").write_bytes(image([("general.architecture", STRING, "qwen2")], []))
(out / "tensors_only").write_bytes(image([], [("t", [8, 8], "F32")]))


# Whole tiny models for the import (format/gguf_model.h): llama with a gpt2 vocabulary and every mapped
# quantized type, qwen2 with q/k/v biases and a llama (SentencePiece) vocabulary.
def tiny_model(arch, vocab_kvs, types, cols):
    """Tensors of 2 rows each (the import maps tensors; shapes against the config are the builder's)."""
    kvs = [("general.architecture", STRING, arch), (f"{arch}.embedding_length", U32, cols),
           (f"{arch}.feed_forward_length", U32, cols), (f"{arch}.block_count", U32, 1),
           (f"{arch}.attention.head_count", U32, 4), (f"{arch}.attention.head_count_kv", U32, 2),
           (f"{arch}.context_length", U32, 128), (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5),
           ("tokenizer.chat_template", STRING, "{% for m in messages %}{{ m['content'] }}{% endfor %}")] + vocab_kvs
    mats = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    tensors = [("token_embd.weight", [cols, 6], types[0]), ("output_norm.weight", [cols], "F32"),
               ("blk.0.attn_norm.weight", [cols], "F32"), ("blk.0.ffn_norm.weight", [cols], "F32")]
    for i, m in enumerate(mats):
        tensors.append((f"blk.0.{m}.weight", [cols, 2], types[(i + 1) % len(types)]))
    if arch == "qwen2":
        tensors += [("blk.0.attn_q.bias", [2], "F32"), ("blk.0.attn_k.bias", [2], "F32"), ("blk.0.attn_v.bias", [2], "F32")]
    return image(kvs, tensors)


gpt2_vocab = [("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, "smollm"),
              ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<|endoftext|>", "a", "b", "ab", "\u0120", "\u0120a"])),
              ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 1, 1, 1, 1, 1])),
              ("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "\u0120 a"])),
              ("tokenizer.ggml.bos_token_id", U32, 0), ("tokenizer.ggml.eos_token_id", U32, 0)]
spm_vocab = [("tokenizer.ggml.model", STRING, "llama"),
             ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<unk>", "<s>", "</s>", "\u2581", "a", "\u2581a"])),
             ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0])),
             ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3, 1, 1, 1])),
             ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2)]
(out / "llama_gpt2_every_quant").write_bytes(tiny_model(
    "llama", gpt2_vocab, ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"], 256))
(out / "qwen2_spm_f16").write_bytes(tiny_model("qwen2", spm_vocab, ["F16", "BF16", "F32"], 32))

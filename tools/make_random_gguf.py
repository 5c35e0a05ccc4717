#!/usr/bin/env python3
"""Writes a random-weight GGUF of a named shape, quantized, for speed work (issue 15's GPU numbers).

    python3 tools/make_random_gguf.py llama2-7b OUT.gguf --type Q4_0|Q8_0|Q4_K_M [--layers N] [--seed 0]
                                      [--tokenizer shared/models/llama2-tokenizer/tokenizer.model]

numpy only (the GPU host has no gguf-py): the GGUF v3 file is written here, streamed tensor by tensor.
Every matrix is blocks of seeded random codes with the block scales set so the weights have mean ~0 and
standard deviation 0.02 (computed from the code distributions below; nothing is quantized, so a 7B file
takes seconds, not the minutes a quantizer would). Q4_K_M follows llama.cpp's mix (llama-quant.cpp):
output.weight Q6_K, attn_v and ffn_down Q6_K in the layers use_more_bits picks, everything else Q4_K.
Norms are F32 ones. The vocabulary is the Llama 2 SentencePiece one (tokenizer.ggml.model "llama").
The logits of such a model are not text; the shape and the bytes are what matter.
"""
import argparse
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from spm_vocab import sentencepiece_vocab  # noqa: E402

SHAPES = {"llama2-7b": dict(dim=4096, ffn=11008, layers=32, heads=32, kv_heads=32, vocab=32000, ctx=4096,
                            theta=10000.0, eps=1e-5)}
GGML = {"F32": 0, "Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
BLOCK = {"Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}
FILE_TYPE = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}  # llama_ftype
STD = 0.02
ALIGN = 32


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def f16_bytes(v: float) -> np.ndarray:
    return np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)


def random_blocks(rng: np.random.Generator, kind: str, count: int) -> np.ndarray:
    """`count` blocks of `kind` with random codes and the scale(s) for mean ~0, std STD.

    Q8_0: w = d q, q uniform in -128..127 (std 73.9). Q4_0: w = d (q - 8), q uniform 1..15 (std 4.32).
    Q4_K: w = d sc q - dmin m, sc, m uniform 0..63 and q 0..15 (random bytes give uniform 6-bit fields):
    dmin = 7.5 d centres it, std 258.3 d. Q6_K: w = d sc (q - 32), sc uniform int8, q uniform 0..63:
    std 1365.7 d."""
    _, size = BLOCK[kind]
    blocks = rng.integers(0, 256, size=(count, size), dtype=np.uint8)
    if kind == "Q8_0":
        blocks[:, 0:2] = f16_bytes(STD / 73.9)
    elif kind == "Q4_0":  # codes 1..15: centred on the implied zero point 8 (0..15 would give mean -d / 2)
        q = rng.integers(1, 16, size=(count, 32), dtype=np.uint8)
        blocks[:, 2:18] = q[:, :16] | (q[:, 16:] << 4)
        blocks[:, 0:2] = f16_bytes(STD / 4.32)
    elif kind == "Q4_K":
        d = STD / 258.3
        blocks[:, 0:2] = f16_bytes(d)
        blocks[:, 2:4] = f16_bytes(7.5 * d)
    elif kind == "Q6_K":
        blocks[:, 208:210] = f16_bytes(STD / 1365.7)
    return blocks


class Writer:
    """GGUF v3: header, metadata, tensor infos, then the data, each tensor aligned to ALIGN."""

    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, dims ne0 first, type name, nbytes, generator)

    def kv_string(self, key, value):
        self.kv.append(self._key(key) + struct.pack("<I", 8) + self._str(value))

    def kv_u32(self, key, value):
        self.kv.append(self._key(key) + struct.pack("<II", 4, value))

    def kv_f32(self, key, value):
        self.kv.append(self._key(key) + struct.pack("<If", 6, value))

    def kv_bool(self, key, value):
        self.kv.append(self._key(key) + struct.pack("<IB", 7, 1 if value else 0))

    def kv_array(self, key, elem_type, values):
        body = struct.pack("<IIQ", 9, elem_type, len(values))
        if elem_type == 8:
            body += b"".join(self._str(v) for v in values)
        elif elem_type == 6:
            body += np.asarray(values, dtype="<f4").tobytes()
        elif elem_type == 5:
            body += np.asarray(values, dtype="<i4").tobytes()
        self.kv.append(self._key(key) + body)

    @staticmethod
    def _str(s):
        b = s.encode("utf-8") if isinstance(s, str) else s
        return struct.pack("<Q", len(b)) + b

    def _key(self, key):
        return self._str(key)

    def tensor(self, name, rows, cols, kind, make):
        if kind == "F32":
            nbytes = 4 * rows * cols
        else:
            block, size = BLOCK[kind]
            assert cols % block == 0, (name, cols, kind)
            nbytes = rows * cols // block * size
        dims = (cols,) if rows == 1 else (cols, rows)
        self.tensors.append((name, dims, kind, nbytes, make))

    def write(self, path: Path):
        with open(path, "wb") as f:
            f.write(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)))
            for entry in self.kv:
                f.write(entry)
            offset = 0
            for name, dims, kind, nbytes, _ in self.tensors:
                f.write(self._str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims))
                f.write(struct.pack("<IQ", GGML[kind], offset))
                offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN
            f.write(b"\0" * (-f.tell() % ALIGN))
            for name, dims, kind, nbytes, make in self.tensors:
                data = make()
                assert data.nbytes == nbytes, (name, data.nbytes, nbytes)
                f.write(data.tobytes())
                f.write(b"\0" * (-nbytes % ALIGN))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--type", required=True, choices=sorted(FILE_TYPE))
    ap.add_argument("--layers", type=int, default=0, help="fewer layers (quick tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", type=Path, default=REPO.parent / "shared/models/llama2-tokenizer/tokenizer.model")
    args = ap.parse_args()
    s = dict(SHAPES[args.shape])
    n = args.layers or s["layers"]
    rng = np.random.Generator(np.random.PCG64(args.seed))
    pieces, scores, types = sentencepiece_vocab(args.tokenizer)
    if len(pieces) != s["vocab"]:
        raise SystemExit(f"make_random_gguf: {args.tokenizer} has {len(pieces)} pieces, the shape {s['vocab']}")

    w = Writer()
    w.kv_string("general.architecture", "llama")
    w.kv_string("general.name", f"kiln random {args.shape} {args.type}")
    w.kv_u32("general.alignment", ALIGN)
    w.kv_u32("general.file_type", FILE_TYPE[args.type])
    w.kv_u32("llama.context_length", s["ctx"])
    w.kv_u32("llama.embedding_length", s["dim"])
    w.kv_u32("llama.block_count", n)
    w.kv_u32("llama.feed_forward_length", s["ffn"])
    w.kv_u32("llama.attention.head_count", s["heads"])
    w.kv_u32("llama.attention.head_count_kv", s["kv_heads"])
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", s["eps"])
    w.kv_f32("llama.rope.freq_base", s["theta"])
    w.kv_u32("llama.rope.dimension_count", s["dim"] // s["heads"])
    w.kv_u32("llama.vocab_size", s["vocab"])
    w.kv_string("tokenizer.ggml.model", "llama")
    w.kv_array("tokenizer.ggml.tokens", 8, pieces)
    w.kv_array("tokenizer.ggml.scores", 6, scores)
    w.kv_array("tokenizer.ggml.token_type", 5, types)
    w.kv_u32("tokenizer.ggml.bos_token_id", 1)
    w.kv_u32("tokenizer.ggml.eos_token_id", 2)
    w.kv_u32("tokenizer.ggml.unknown_token_id", 0)
    w.kv_bool("tokenizer.ggml.add_bos_token", True)

    def kind_of(name: str, layer: int) -> str:
        if args.type != "Q4_K_M":
            return args.type
        if name == "output":
            return "Q6_K"
        if name in ("attn_v", "ffn_down") and use_more_bits(layer, n):
            return "Q6_K"
        return "Q4_K"

    def matrix(name, rows, cols, kind):
        block, _ = BLOCK[kind]
        w.tensor(name, rows, cols, kind, lambda: random_blocks(rng, kind, rows * cols // block))

    def norm(name, size):
        w.tensor(name, 1, size, "F32", lambda: np.ones(size, dtype="<f4"))

    dim, ffn, head_dim = s["dim"], s["ffn"], s["dim"] // s["heads"]
    matrix("token_embd.weight", s["vocab"], dim, kind_of("token_embd", 0))
    for i in range(n):
        norm(f"blk.{i}.attn_norm.weight", dim)
        matrix(f"blk.{i}.attn_q.weight", dim, dim, kind_of("attn_q", i))
        matrix(f"blk.{i}.attn_k.weight", s["kv_heads"] * head_dim, dim, kind_of("attn_k", i))
        matrix(f"blk.{i}.attn_v.weight", s["kv_heads"] * head_dim, dim, kind_of("attn_v", i))
        matrix(f"blk.{i}.attn_output.weight", dim, dim, kind_of("attn_output", i))
        norm(f"blk.{i}.ffn_norm.weight", dim)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, dim, kind_of("ffn_gate", i))
        matrix(f"blk.{i}.ffn_up.weight", ffn, dim, kind_of("ffn_up", i))
        matrix(f"blk.{i}.ffn_down.weight", dim, ffn, kind_of("ffn_down", i))
    norm("output_norm.weight", dim)
    matrix("output.weight", s["vocab"], dim, kind_of("output", 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    w.write(args.out)
    print(f"make_random_gguf: wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB, {len(w.tensors)} tensors)")


if __name__ == "__main__":
    sys.exit(main())

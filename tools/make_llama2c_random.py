#!/usr/bin/env python3
"""Write a random-weight llama2.c legacy checkpoint of a named shape.

For benchmarks: the files have the size and layout of real llama2.c models
(stories15M, stories110M from karpathy/tinyllamas) without their weights, so
they are not committed. Layout (see tools/llama2c_reference.py): 7 x int32
header, then float32 arrays. Matrices ~ N(0, std), RMSNorm weights = 1, the
freq_cis tables hold the real RoPE cos/sin (as llama2.c's legacy export wrote
them), and the classifier is shared with the embedding (positive vocab_size).

  tools/make_llama2c_random.py stories15M -o /tmp/s15.bin
  tools/make_llama2c_random.py stories110M --seed 7 -o /tmp/s110.bin
  tools/make_llama2c_random.py stories15M --layers 2 --vocab 512 -o /tmp/x.bin
"""

from __future__ import annotations

import argparse
import struct
import sys

import numpy as np

SHAPES = {
    # name: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    "stories15M": (288, 768, 6, 6, 6, 32000, 256),
    "stories42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "stories110M": (768, 2048, 12, 12, 12, 32000, 1024),
    "stories260K": (64, 172, 5, 8, 4, 512, 512),
}

CHUNK = 1 << 22  # floats generated per write, bounds memory for large shapes


def write_normal(f, rng: np.random.Generator, n: int, std: float) -> None:
    while n > 0:
        k = min(n, CHUNK)
        (rng.standard_normal(k, dtype=np.float32) * np.float32(std)).astype("<f4").tofile(f)
        n -= k


def write_ones(f, n: int) -> None:
    np.ones(n, dtype="<f4").tofile(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=0.02)
    for name in ("dim", "hidden", "layers", "heads", "kv-heads", "vocab", "seq"):
        ap.add_argument(f"--{name}", type=int, help=f"override {name}")
    args = ap.parse_args()

    dim, hidden, layers, heads, kv_heads, vocab, seq = SHAPES[args.shape]
    dim = args.dim or dim
    hidden = args.hidden or hidden
    layers = args.layers or layers
    heads = args.heads or heads
    kv_heads = args.kv_heads or kv_heads
    vocab = args.vocab or vocab
    seq = args.seq or seq
    if dim % heads or heads % kv_heads or (dim // heads) % 2:
        ap.error(f"inconsistent shape: dim {dim}, heads {heads}, kv_heads {kv_heads} "
                 "(need dim % heads == 0, heads % kv_heads == 0, even head size)")
    hs = dim // heads
    kv_dim = dim * kv_heads // heads

    rng = np.random.default_rng(args.seed)
    L, s = layers, args.std
    with open(args.output, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq))
        write_normal(f, rng, vocab * dim, s)          # token_embedding_table
        write_ones(f, L * dim)                        # rms_att_weight
        write_normal(f, rng, L * dim * dim, s)        # wq
        write_normal(f, rng, L * kv_dim * dim, s)     # wk
        write_normal(f, rng, L * kv_dim * dim, s)     # wv
        write_normal(f, rng, L * dim * dim, s)        # wo
        write_ones(f, L * dim)                        # rms_ffn_weight
        write_normal(f, rng, L * hidden * dim, s)     # w1
        write_normal(f, rng, L * dim * hidden, s)     # w2
        write_normal(f, rng, L * hidden * dim, s)     # w3
        write_ones(f, dim)                            # rms_final_weight
        # freq_cis_real / imag [seq, hs/2]: unused by run.c, kept for layout.
        freq = 1.0 / 10000.0 ** (np.arange(0, hs, 2, dtype=np.float64) / hs)
        ang = np.outer(np.arange(seq, dtype=np.float64), freq)
        np.cos(ang).astype("<f4").tofile(f)
        np.sin(ang).astype("<f4").tofile(f)
        # shared classifier (vocab > 0): no wcls.
    n_params = vocab * dim + L * (2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim + 2 * dim) + dim
    print(f"wrote {args.output}: dim {dim} hidden {hidden} layers {layers} heads {heads}/{kv_heads} "
          f"vocab {vocab} seq {seq}, {n_params / 1e6:.1f}M params", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

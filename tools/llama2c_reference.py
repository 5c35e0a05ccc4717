#!/usr/bin/env python3
"""Independent float64 reference of llama2.c's run.c forward pass.

This is a line-by-line transcription of `forward()` in karpathy/llama2.c run.c
(commit 350e04fe) into numpy, evaluated in float64 so that it can serve as a
ground truth for kiln's float32 (and quantized) backends. It reads the legacy
llama2.c checkpoint format:

  header: 7 x int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
                     vocab_size, seq_len}; vocab_size < 0 => separate classifier
  then float32 arrays, in this order (L = n_layers, kv_dim = dim*n_kv/n_heads,
  hs = dim/n_heads):
    token_embedding_table [vocab, dim]
    rms_att_weight        [L, dim]
    wq                    [L, dim, dim]        (out, in)
    wk                    [L, kv_dim, dim]
    wv                    [L, kv_dim, dim]
    wo                    [L, dim, dim]
    rms_ffn_weight        [L, dim]
    w1                    [L, hidden, dim]
    w2                    [L, dim, hidden]
    w3                    [L, hidden, dim]
    rms_final_weight      [dim]
    freq_cis_real         [seq_len, hs/2]      (unused by run.c: RoPE is computed)
    freq_cis_imag         [seq_len, hs/2]      (unused by run.c)
    wcls                  [vocab, dim]         (only if vocab_size < 0)

Usage:
  tools/llama2c_reference.py verify              # check EXPECTED.json greedy ids
  tools/llama2c_reference.py golden [-o PATH]    # write tests/golden/stories260K_ref.json
  tools/llama2c_reference.py generate MODEL.bin --prompt 1,403 --steps 32
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("KILN_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))
STORIES260K = os.path.join(SHARED, "models", "stories260K", "stories260K.bin")
EXPECTED = os.path.join(SHARED, "models", "stories260K", "EXPECTED.json")
GOLDEN = os.path.join(REPO, "tests", "golden", "stories260K_ref.json")

RMS_EPS = 1e-5      # run.c rmsnorm: ss / size + 1e-5f
ROPE_THETA = 10000.0  # run.c: powf(10000.0f, head_dim / (float)head_size)


@dataclass
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads


class Llama2c:
    """Weights of a legacy llama2.c checkpoint, upcast to float64."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            raw = f.read()
        header = struct.unpack("<7i", raw[:28])
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = header
        self.cfg = Config(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len,
                          shared_classifier=vocab > 0)
        c = self.cfg
        data = np.frombuffer(raw, dtype="<f4", offset=28)
        L, hs, kv = c.n_layers, c.head_size, c.kv_dim
        off = 0

        def take(*shape):
            nonlocal off
            n = int(np.prod(shape))
            if off + n > data.size:
                raise ValueError(f"{path}: truncated at float offset {off}, need {n} more")
            a = data[off:off + n].reshape(shape).astype(np.float64)
            off += n
            return a

        self.tok_emb = take(c.vocab_size, dim)
        self.rms_att = take(L, dim)
        self.wq = take(L, dim, dim)
        self.wk = take(L, kv, dim)
        self.wv = take(L, kv, dim)
        self.wo = take(L, dim, dim)
        self.rms_ffn = take(L, dim)
        self.w1 = take(L, hidden, dim)
        self.w2 = take(L, dim, hidden)
        self.w3 = take(L, hidden, dim)
        self.rms_final = take(dim)
        take(seq_len, hs // 2)  # freq_cis_real: skipped, as run.c does
        take(seq_len, hs // 2)  # freq_cis_imag
        self.wcls = self.tok_emb if c.shared_classifier else take(c.vocab_size, dim)
        if off != data.size:
            raise ValueError(f"{path}: {data.size - off} trailing floats after weights")


def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    ss = np.dot(x, x) / x.size + RMS_EPS
    return w * (x / np.sqrt(ss))


def rope(vec: np.ndarray, pos: int, head_size: int) -> np.ndarray:
    """run.c RoPE: rotate adjacent pairs (i, i+1); freq from i % head_size."""
    i = np.arange(0, vec.size, 2)
    freq = 1.0 / ROPE_THETA ** ((i % head_size) / head_size)
    val = pos * freq
    c, s = np.cos(val), np.sin(val)
    v0, v1 = vec[0::2], vec[1::2]
    out = np.empty_like(vec)
    out[0::2] = v0 * c - v1 * s
    out[1::2] = v0 * s + v1 * c
    return out


class Session:
    """Key/value cache plus run.c's forward(token, pos) -> logits[vocab]."""

    def __init__(self, m: Llama2c):
        self.m = m
        c = m.cfg
        self.k_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim))
        self.v_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim))

    def forward(self, token: int, pos: int) -> np.ndarray:
        m, c = self.m, self.m.cfg
        hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
        x = m.tok_emb[token].copy()
        for l in range(c.n_layers):
            xb = rmsnorm(x, m.rms_att[l])
            q = m.wq[l] @ xb
            k = m.wk[l] @ xb
            v = m.wv[l] @ xb
            # run.c rotates q over all of dim and k for i < kv_dim; since both
            # use freq from i % head_size this equals per-head rotation.
            q = rope(q, pos, hs)
            k = rope(k, pos, hs)
            self.k_cache[l, pos] = k
            self.v_cache[l, pos] = v
            att_out = np.empty(c.dim)
            for h in range(c.n_heads):
                kh = h // kv_mul  # GQA: kv head shared by kv_mul query heads
                qh = q[h * hs:(h + 1) * hs]
                keys = self.k_cache[l, :pos + 1, kh * hs:(kh + 1) * hs]   # [pos+1, hs]
                vals = self.v_cache[l, :pos + 1, kh * hs:(kh + 1) * hs]   # [pos+1, hs]
                scores = keys @ qh / np.sqrt(hs)
                scores = np.exp(scores - scores.max())
                scores /= scores.sum()
                att_out[h * hs:(h + 1) * hs] = scores @ vals
            x = x + m.wo[l] @ att_out
            xb = rmsnorm(x, m.rms_ffn[l])
            h1 = m.w1[l] @ xb
            h3 = m.w3[l] @ xb
            hb = h1 / (1.0 + np.exp(-h1)) * h3  # SwiGLU: silu(w1 x) * w3 x
            x = x + m.w2[l] @ hb
        x = rmsnorm(x, m.rms_final)
        return m.wcls @ x


def margin(logits: np.ndarray) -> float:
    top2 = np.partition(logits, -2)[-2:]
    return float(top2[1] - top2[0])


def run_prompt(m: Llama2c, prompt: list[int], steps: int):
    """Feed prompt, then greedy-decode `steps` tokens.

    Returns (last prompt logits, greedy ids, top1-top2 margin per greedy step).
    """
    if not prompt:
        raise ValueError("empty prompt")
    if len(prompt) + steps > m.cfg.seq_len:
        raise ValueError(f"prompt {len(prompt)} + steps {steps} > seq_len {m.cfg.seq_len}")
    s = Session(m)
    logits = None
    for pos, tok in enumerate(prompt):
        logits = s.forward(tok, pos)
    last = logits.copy()
    ids, margins = [], []
    pos = len(prompt)
    for step in range(steps):
        nxt = int(np.argmax(logits))
        ids.append(nxt)
        margins.append(margin(logits))
        if step + 1 < steps:
            logits = s.forward(nxt, pos)
            pos += 1
    return last, ids, margins


def sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits - 1}e}")


def cmd_verify(args) -> int:
    m = Llama2c(args.model)
    exp = json.load(open(EXPECTED))
    ok = True
    for name, prompt, want in (("bos", exp["prompt_ids"], exp["greedy_ids_128"]),
                               ("prompt_case", exp["prompt_case"]["prompt_ids"],
                                exp["prompt_case"]["greedy_ids_128"])):
        _, got, margins = run_prompt(m, prompt, len(want))
        first_diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        i_min = int(np.argmin(margins))
        print(f"{name}: {len(want)} steps, match={first_diff is None}"
              f"{'' if first_diff is None else f' (first diff at step {first_diff}, margin {margins[first_diff]:.3g})'}"
              f", min top1-top2 margin {margins[i_min]:.4g} at step {i_min}")
        ok &= first_diff is None
    return 0 if ok else 1


def cmd_golden(args) -> int:
    m = Llama2c(args.model)
    exp = json.load(open(EXPECTED))
    V = m.cfg.vocab_size
    rng = np.random.default_rng(args.seed)
    prompts = [
        ("bos", [1]),
        ("two_tokens", [1, 403, 407]),
        ("once_upon_a_time", exp["prompt_case"]["prompt_ids"]),
        ("expected_40", [1] + exp["greedy_ids_128"][:39]),
    ]
    for n in (7, 23, 96, 300):
        prompts.append((f"random_{n}", [1] + rng.integers(3, V, size=n - 1).tolist()))
    cases = []
    for name, p in prompts:
        last, ids, margins = run_prompt(m, p, args.steps)
        cases.append({
            "name": name,
            "prompt_ids": [int(t) for t in p],
            "greedy_ids": ids,
            "margins": [sig(x, 6) for x in margins],
            "last_logits": [sig(float(x), 7) for x in last],
        })
        print(f"{name}: len {len(p)}, min margin {min(margins):.4g}", file=sys.stderr)
    out = {
        "model": "stories260K.bin",
        "reference": "tools/llama2c_reference.py: numpy float64 transcription of llama2.c run.c "
                     "forward() (commit 350e04fe); greedy = argmax",
        "steps": args.steps,
        "notes": "last_logits: logits at the last prompt position (7 significant digits); "
                 "margins: top1 - top2 logit at each greedy step (compare greedy ids only "
                 "up to the first margin below the tolerance of the backend under test)",
        "random_prompt_seed": args.seed,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    m = Llama2c(args.model)
    prompt = [int(t) for t in args.prompt.split(",")]
    _, ids, margins = run_prompt(m, prompt, args.steps)
    print(json.dumps({"greedy_ids": ids, "margins": [sig(x, 6) for x in margins]}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="compare with EXPECTED.json (float32 run.c)")
    v.add_argument("--model", default=STORIES260K)
    g = sub.add_parser("golden", help="write the stories260K golden file")
    g.add_argument("--model", default=STORIES260K)
    g.add_argument("-o", "--output", default=GOLDEN)
    g.add_argument("--steps", type=int, default=64)
    g.add_argument("--seed", type=int, default=1234)
    r = sub.add_parser("generate", help="greedy-decode from a prompt of ids")
    r.add_argument("model")
    r.add_argument("--prompt", default="1")
    r.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    return {"verify": cmd_verify, "golden": cmd_golden, "generate": cmd_generate}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

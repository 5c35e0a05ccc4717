#!/usr/bin/env python3
"""Independent float64 reference of `kiln eval --perplexity` on stories260K.

Tokenizes a text with tok512.bin as llama2.c run.c `encode` does (commit 350e04fe: dummy prefix
space, UTF-8 units, byte fallback at byte + 3, merges by best score, leftmost on ties; BOS = 1
first), then scores it in sliding windows with the float64 numpy forward of
tools/llama2c_reference.py, and writes tests/golden/stories260K_ppl.json.

Windows (the definition kiln documents in src/runtime/evaluate.h, written again here from it):
a window holds at most W model positions; the first covers tokens [0, min(n, W)) and scores tokens
1..end-1; each later window ends min(S, W-1) tokens further on, starts W tokens before its end, and
scores the tokens after the previous window's end. Position 0 of every window holds BOS. Every token
but the first is scored once.

The merge loop uses a heap (best score, then leftmost: the order run.c's O(n^2) scan picks); the
script checks it against a literal transcription of run.c's scan on the first 3,000 characters.

Usage:
  tools/eval_reference.py golden [-o PATH] [--text FILE]   # write the golden (~2 minutes)
  tools/eval_reference.py ppl --window 64 --stride 16 --max-tokens 500 [--text FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import os
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama2c_reference as ref  # noqa: E402

TOK512 = os.path.join(ref.SHARED, "models", "stories260K", "tok512.bin")
GPL3 = "/usr/share/common-licenses/GPL-3"
GOLDEN = os.path.join(ref.REPO, "tests", "golden", "stories260K_ppl.json")
BOS = 1
FIRST_BYTE_ID = 3
NO_MERGE_SCORE = -1e10  # run.c's initial best_score: pairs scoring at or below it never merge


class Llama2cTokenizer:
    """tok512.bin: {int32 max_token_length; per token: f32 score, int32 len, bytes}."""

    def __init__(self, path: str, vocab_size: int):
        with open(path, "rb") as f:
            raw = f.read()
        off = 4
        self.vocab: list[bytes] = []
        self.scores: list[float] = []
        for _ in range(vocab_size):
            score, n = struct.unpack_from("<fi", raw, off)
            off += 8
            self.vocab.append(raw[off:off + n])
            self.scores.append(score)
            off += n
        self.lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.vocab):
            self.lookup.setdefault(piece, i)

    def initial_symbols(self, text: bytes) -> list[int]:
        ids = []
        if text:
            ids.append(self.lookup[b" "])  # add_dummy_prefix
        pos = 0
        while pos < len(text):  # a lead byte and up to 3 continuation bytes, as run.c groups them
            end = pos + 1
            while end < len(text) and (text[end] & 0xC0) == 0x80 and end - pos < 4:
                end += 1
            unit = text[pos:end]
            if unit in self.lookup:
                ids.append(self.lookup[unit])
            else:
                ids.extend(b + FIRST_BYTE_ID for b in unit)
            pos = end
        return ids

    def merge_of(self, a: int, b: int):
        i = self.lookup.get(self.vocab[a] + self.vocab[b], -1)
        return i if i >= 0 and self.scores[i] > NO_MERGE_SCORE else -1

    def encode_scan(self, text: bytes) -> list[int]:
        """run.c's loop, literally: O(n^2), for checking encode() on a prefix."""
        ids = self.initial_symbols(text)
        while True:
            best_score, best_id, best_idx = NO_MERGE_SCORE, -1, -1
            for i in range(len(ids) - 1):
                m = self.merge_of(ids[i], ids[i + 1])
                if m >= 0 and self.scores[m] > best_score:
                    best_score, best_id, best_idx = self.scores[m], m, i
            if best_idx < 0:
                return ids
            ids[best_idx:best_idx + 2] = [best_id]

    def encode(self, text: bytes) -> list[int]:
        ids = self.initial_symbols(text)
        n = len(ids)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []

        def push(i):
            if i >= 0 and nxt[i] >= 0:
                m = self.merge_of(ids[i], ids[nxt[i]])
                if m >= 0:
                    heapq.heappush(heap, (-self.scores[m], i, m))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, m = heapq.heappop(heap)
            if not alive[i] or nxt[i] < 0 or self.merge_of(ids[i], ids[nxt[i]]) != m:
                continue  # stale: one side merged since
            j = nxt[i]
            ids[i] = m
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            push(prv[i])
            push(i)
        return [t for t, a in zip(ids, alive) if a]


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) per window."""
    advance = min(stride, window - 1)
    end = min(n, window)
    out = [(0, end, 1)]
    while end < n:
        nxt = min(n, end + advance)
        out.append((max(0, nxt - window), nxt, end))
        end = nxt
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


def perplexity(m: ref.Llama2c, tokens: list[int], window: int, stride: int) -> dict:
    windows = plan_windows(len(tokens), window, stride)
    nll_sum, scored = 0.0, 0
    for begin, end, first_target in windows:
        ids = tokens[begin:end]
        ids[0] = BOS
        s = ref.Session(m)
        for pos in range(end - begin - 1):
            logits = s.forward(ids[pos], pos)
            target = begin + pos + 1
            if target >= first_target:
                nll_sum -= float(log_softmax(logits)[tokens[target]])
                scored += 1
    assert scored == len(tokens) - 1
    mean = nll_sum / scored
    return {"window": window, "stride": stride, "tokens": len(tokens), "windows": len(windows), "scored": scored,
            "nll_sum": nll_sum, "mean_nll": mean, "perplexity": math.exp(mean)}


def fnv1a64(ids: list[int]) -> str:
    """FNV-1a 64 over the ids as int32 little-endian bytes (the C++ test computes the same)."""
    h = 0xCBF29CE484222325
    for b in struct.pack(f"<{len(ids)}i", *ids):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def load(text_path: str):
    m = ref.Llama2c(ref.STORIES260K)
    tok = Llama2cTokenizer(TOK512, m.cfg.vocab_size)
    with open(text_path, "rb") as f:
        text = f.read()
    prefix = text[:3000]
    if tok.encode(prefix) != tok.encode_scan(prefix):
        raise SystemExit("heap merge disagrees with run.c's scan on the text's first 3,000 bytes")
    return m, text, [BOS] + tok.encode(text)


def cmd_golden(args) -> int:
    m, text, tokens = load(args.text)
    cases = []
    for name, window, stride, max_tokens in (
        ("defaults", min(512, m.cfg.seq_len), min(512, m.cfg.seq_len) // 2, None),
        ("stride_equals_window", 64, 64, 1000),
        ("stride_quarter", 64, 16, 1000),
        ("odd_sizes", 37, 10, 301),
    ):
        t0 = time.time()
        r = perplexity(m, tokens[:max_tokens] if max_tokens else list(tokens), window, stride)
        r = {"name": name, "max_tokens": max_tokens, **r}
        cases.append(r)
        print(f"{name}: {r['scored']} scored in {r['windows']} windows, mean NLL {r['mean_nll']:.6f}, "
              f"ppl {r['perplexity']:.6f} ({time.time() - t0:.1f} s)", file=sys.stderr)
    out = {
        "model": "stories260K.bin",
        "tokenizer": "tok512.bin",
        "reference": "tools/eval_reference.py: llama2.c run.c encode (heap merge, checked against the scan) and "
                     "tools/llama2c_reference.py's float64 forward; natural-log NLL, sliding windows as "
                     "src/runtime/evaluate.h defines them, BOS (1) at position 0 of every window",
        "text": args.text,
        "text_sha256": hashlib.sha256(text).hexdigest(),
        "text_bytes": len(text),
        "bos_id": BOS,
        "tokens": len(tokens),
        "token_ids_fnv1a64": fnv1a64(tokens),
        "first_ids": tokens[:32],
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_ppl(args) -> int:
    m, _, tokens = load(args.text)
    if args.max_tokens:
        tokens = tokens[:args.max_tokens]
    print(json.dumps(perplexity(m, tokens, args.window, args.stride)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("golden", help="write tests/golden/stories260K_ppl.json")
    g.add_argument("-o", "--output", default=GOLDEN)
    g.add_argument("--text", default=GPL3)
    p = sub.add_parser("ppl", help="print one perplexity as JSON")
    p.add_argument("--text", default=GPL3)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=0)
    args = ap.parse_args()
    return {"golden": cmd_golden, "ppl": cmd_ppl}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

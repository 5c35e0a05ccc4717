#!/usr/bin/env python3
"""Converts a llama-architecture GGUF file into a Hugging Face LlamaForCausalLM directory.

Written for SmolLM2-135M-Instruct.Q4_1.gguf (tools/fetch_smollm2.sh), the one trained chat model we
can get without Hugging Face access. Writes into OUT_DIR:
  config.json            LlamaForCausalLM; tie_word_embeddings when the GGUF has no output.weight
  model.safetensors      every tensor dequantized (gguf.quants.dequantize) to float32, HF names,
                         q_proj/k_proj rows un-permuted (see unpermute_qk)
  tokenizer.json         byte-level BPE from tokenizer.ggml.* (model gpt2, pre smollm)
  tokenizer_config.json  bos/eos/pad/unk strings, add_bos_token, chat_template
  gguf_source.json       provenance: the GGUF's name, sha256, metadata and the converter version

Usage: gguf_to_hf.py MODEL.gguf OUT_DIR [--sha256 HEX]   (HEX is only recorded in gguf_source.json)
       gguf_to_hf.py --self-test                          (the Q/K permutation checks; numpy only)
Needs the `gguf` package (version pinned in tools/fetch_smollm2.sh) and numpy.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

CONVERTER_VERSION = 1  # bump when the output changes; fetch_smollm2.sh converts again on a mismatch

# SmolLM2's tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct): each digit alone, then GPT-2's
# byte-level split. Keyed by llama.cpp's tokenizer.ggml.pre name; only verified ones are listed.
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
}

# GGUF tensor names (llama.cpp gguf-py constants, MODEL_ARCH.LLAMA) -> HF LlamaForCausalLM names.
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}

# gguf.GGUFReader token types (llama.cpp llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class ConversionError(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# Q/K rows. HF's Llama applies RoPE with rotate_half: dimension i of a head pairs with i + head_dim/2.
# llama.cpp's LLAMA rope pairs adjacent dimensions (2i, 2i+1), so convert_hf_to_gguf.py reorders the
# rows of q_proj (n_head) and k_proj (n_head_kv) with LlamaModel.permute: reshape(n_head, 2,
# head_dim/2, ...).swapaxes(1, 2). unpermute_qk is its inverse.

def permute_qk(weights, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (with n_head already the kv count for k)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_qk(weights, n_head):
    """GGUF attn_q / attn_k rows -> HF q_proj / k_proj rows."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def self_test():
    """permute(unpermute(w)) == w both ways, and the permutation turns HF's rotate_half RoPE into
    llama.cpp's adjacent-pair RoPE (which fixes the direction: the shuffle is not an involution)."""
    rng = np.random.default_rng(0)
    for n_head, head_dim, dim in [(9, 64, 576), (3, 64, 576), (1, 2, 3), (4, 8, 5), (2, 6, 1)]:
        w = rng.standard_normal((n_head * head_dim, dim))
        assert np.array_equal(permute_qk(unpermute_qk(w, n_head), n_head), w)
        assert np.array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)
        if head_dim > 4:
            assert not np.array_equal(permute_qk(w, n_head), unpermute_qk(w, n_head))
        x = rng.standard_normal(dim)
        angles = 0.7 * np.arange(1, head_dim // 2 + 1)  # one angle per rotated pair
        cos, sin = np.cos(angles), np.sin(angles)

        def rope_half(q):  # HF apply_rotary_pos_emb / rotate_half, per head
            a, b = q[..., :head_dim // 2], q[..., head_dim // 2:]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

        def rope_pairs(q):  # llama.cpp ggml_rope (mode 0): pairs (2i, 2i+1)
            a, b = q[..., 0::2], q[..., 1::2]
            out = np.empty_like(q)
            out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
            return out

        hf = rope_half((w @ x).reshape(n_head, head_dim))
        gguf_side = rope_pairs((permute_qk(w, n_head) @ x).reshape(n_head, head_dim))
        assert np.allclose(permute_qk(hf.reshape(-1, 1), n_head).ravel(), gguf_side.ravel(), atol=1e-12)


# --------------------------------------------------------------------------------------------------
# GGUF metadata.

class Metadata:
    def __init__(self, reader):
        self.fields = reader.fields

    def get(self, key, default=None):
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key):
        value = self.get(key)
        if value is None:
            raise ConversionError(f"GGUF metadata '{key}' is missing")
        return value

    def strings(self, key):
        field = self.fields.get(key)
        if field is None:
            raise ConversionError(f"GGUF metadata '{key}' is missing")
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def float32_repr(value):
    """The shortest decimal that rounds to the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(value)))


def read_config(meta, tensors):
    arch = meta.require("general.architecture")
    if arch != "llama":
        raise ConversionError(f"general.architecture is '{arch}'; only 'llama' is supported")
    hidden = int(meta.require("llama.embedding_length"))
    n_head = int(meta.require("llama.attention.head_count"))
    n_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    head_dim = int(meta.get("llama.attention.key_length", hidden // n_head))
    rope_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConversionError(f"llama.rope.dimension_count {rope_dim} != head_dim {head_dim} (partial RoPE)")
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ConversionError(f"llama.rope.scaling.type '{scaling}' is not supported")
    embed = tensors["token_embd.weight"]
    vocab = int(meta.get("llama.vocab_size", embed.shape[1]))
    if int(embed.shape[1]) != vocab:
        raise ConversionError(f"token_embd.weight has {embed.shape[1]} rows; llama.vocab_size is {vocab}")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(meta.require("llama.feed_forward_length")),
        "num_hidden_layers": int(meta.require("llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float32_repr(meta.require("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float32_repr(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(meta.require("llama.context_length")),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": "float32",
    }
    for key, name in [("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")]:
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            config[key] = int(value)
    return config


# --------------------------------------------------------------------------------------------------
# Tokenizer.

def build_tokenizer(meta):
    """(tokenizer.json, tokenizer_config.json) dicts for a gpt2-style (byte-level BPE) GGUF vocab."""
    model = meta.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConversionError(f"tokenizer.ggml.model is '{model}'; only 'gpt2' (byte-level BPE) is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ConversionError(f"tokenizer.ggml.pre '{pre}' is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    tokens = meta.strings("tokenizer.ggml.tokens")
    types = [int(t) for t in meta.require("tokenizer.ggml.token_type")]
    if len(types) != len(tokens):
        raise ConversionError(f"{len(tokens)} tokens but {len(types)} token types")
    vocab = {}
    for i, token in enumerate(tokens):
        if types[i] == BYTE:
            raise ConversionError(f"token {i} '{token}' is a BYTE token, which a byte-level BPE has none of")
        if token in vocab:
            raise ConversionError(f"token '{token}' appears twice (ids {vocab[token]} and {i})")
        vocab[token] = i
    merges = []
    for rank, merge in enumerate(meta.strings("tokenizer.ggml.merges")):
        pair = merge.split(" ")
        if len(pair) != 2 or pair[0] + pair[1] not in vocab or pair[0] not in vocab or pair[1] not in vocab:
            raise ConversionError(f"merge {rank} '{merge}' is not two vocab tokens whose join is in the vocab")
        merges.append(pair)

    # llama.cpp's converter marks HF added tokens CONTROL (special) or USER_DEFINED (not special).
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": types[i] == USER_DEFINED, "special": types[i] == CONTROL}
             for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED)]

    def token_of(name):
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        return None if value is None or not 0 <= int(value) < len(tokens) else tokens[int(value)]

    bos, eos, unk, pad = token_of("bos"), token_of("eos"), token_of("unknown"), token_of("padding")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        if (add_bos and bos is None) or (add_eos and eos is None):
            raise ConversionError("add_bos_token/add_eos_token is set but the token id is missing")
        single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if add_bos else []) + \
                 [{"Sequence": {"id": "A", "type_id": 0}}] + \
                 ([{"SpecialToken": {"id": eos, "type_id": 0}}] if add_eos else [])
        pair = single + [item if "SpecialToken" in item else {"Sequence": {"id": "B", "type_id": 1}}
                         for item in single]
        special = {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in {bos, eos} if t is not None}
        post_processor = {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}
    else:  # what SmolLM2's own tokenizer.json has: offsets only
        post_processor = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    tokenizer_config = {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                   "single_word", "special")} for t in added},
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    chat_template = meta.get("tokenizer.chat_template")
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    return tokenizer, tokenizer_config


# --------------------------------------------------------------------------------------------------
# Weights.

def hf_name(gguf_name):
    parts = gguf_name.split(".")
    if len(parts) == 2 and parts[0] in GLOBAL_NAMES and parts[1] == "weight":
        return GLOBAL_NAMES[parts[0]] + ".weight"
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES \
            and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.weight"
    raise ConversionError(f"tensor '{gguf_name}' has no Hugging Face Llama name")


def write_safetensors(path, tensors, config):
    """Streams every tensor, dequantized to float32, into one safetensors file (8-byte LE header
    size, JSON header padded to 8 bytes, then the data)."""
    from gguf.quants import dequantize

    entries = []  # (hf name, gguf tensor, hf shape)
    for name, tensor in tensors.items():
        shape = [int(d) for d in reversed(tensor.shape.tolist())]  # GGUF lists ne[0] (columns) first
        entries.append((hf_name(name), tensor, shape))
    entries.sort(key=lambda e: e[0])
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, _, shape in entries:
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for name, tensor, shape in entries:
            values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            if values.size != int(np.prod(shape)):
                raise ConversionError(f"tensor '{tensor.name}': {values.size} values, expected shape {shape}")
            values = values.reshape(shape)
            if name.endswith("self_attn.q_proj.weight"):
                values = unpermute_qk(values, n_head)
            elif name.endswith("self_attn.k_proj.weight"):
                values = unpermute_qk(values, n_kv)
            if not np.all(np.isfinite(values)):
                raise ConversionError(f"tensor '{tensor.name}' has non-finite values")
            out.write(np.ascontiguousarray(values, dtype="<f4").tobytes())


def convert(gguf_path, out_dir, sha256=None):
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    meta = Metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ConversionError("token_embd.weight is missing")
    config = read_config(meta, tensors)
    tokenizer, tokenizer_config = build_tokenizer(meta)
    if len(tokenizer["model"]["vocab"]) != config["vocab_size"]:
        raise ConversionError(f"{len(tokenizer['model']['vocab'])} tokens but vocab_size {config['vocab_size']}")
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(config["num_hidden_layers"]) for n in LAYER_NAMES}
    missing = sorted(expected - tensors.keys())
    if missing:
        raise ConversionError(f"tensors missing: {', '.join(missing[:5])}")

    os.makedirs(out_dir, exist_ok=True)

    def dump(name, value):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
            f.write("\n")

    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, config)
    dump("config.json", config)
    dump("tokenizer.json", tokenizer)
    dump("tokenizer_config.json", tokenizer_config)
    source_meta = {k: meta.get(k) for k in ("general.name", "general.organization", "general.finetune",
                                            "general.license", "general.file_type")}
    dump("gguf_source.json", {"gguf": os.path.basename(gguf_path), "sha256": sha256, "gguf_package": gguf_version(),
                              "converter": "tools/gguf_to_hf.py", "converter_version": CONVERTER_VERSION,
                              "metadata": source_meta,
                              "tensor_types": sorted({t.tensor_type.name for t in tensors.values()})})


def gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # noqa: BLE001 - provenance only
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gguf", nargs="?")
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--sha256", help="recorded in gguf_source.json")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    self_test()  # cheap; guards the one step that would silently give a garbage model
    if args.self_test:
        print("gguf_to_hf self-test: ok")
        return 0
    if not args.gguf or not args.out_dir:
        parser.error("MODEL.gguf and OUT_DIR are required")
    try:
        convert(args.gguf, args.out_dir, args.sha256)
    except ConversionError as e:
        print(f"gguf_to_hf: error: {args.gguf}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

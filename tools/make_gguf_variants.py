#!/usr/bin/env python3
"""Writes GGUF files of one model in several weight formats, for bench/cpu_vs_llamacpp.py.

Two sources:

  gguf SRC.gguf     a llama GGUF (SmolLM2-135M-Instruct.Q4_1.gguf from tools/fetch_smollm2.sh's wheel).
                    Every metadata key is copied except GGUF.* and general.architecture (given to the
                    writer) and general.file_type (set to the target's). Every tensor is dequantized to
                    float32 (gguf.quants.dequantize) and re-encoded: 2-D tensors (all matrices, the
                    token embedding included) to the target type, "pure" as llama-quantize --pure (no
                    per-tensor mixing); 1-D tensors (the norms) stay F32. Tensor order and names are
                    kept, so Q/K rows keep the GGUF (adjacent-pair RoPE) order.

  llama2c CKPT.bin  a legacy llama2.c checkpoint (tools/make_llama2c_random.py stories110M, or a real
                    one) with the Llama 2 SentencePiece tokenizer (--tokenizer tokenizer.model):
                    a llama-architecture GGUF with llama.cpp's tensor names. llama2.c's wq/wk rows are
                    already in the adjacent-pair RoPE order that GGUF's llama expects (run.c rotates
                    (2i, 2i+1)), so they are written as they are, not permuted as convert_hf_to_gguf.py
                    does for Hugging Face weights. rms eps 1e-5 and rope base 10000 are run.c's.
                    The vocabulary (tokens, scores, token types) comes from sentencepiece, as in
                    convert_hf_to_gguf.py's _create_vocab_sentencepiece; BOS 1, EOS 2, UNK 0, add BOS.

Output: OUT_DIR/NAME.TYPE.gguf for each --types entry (F32, F16, BF16, Q8_0, Q4_0, Q4_1). A file
newer than both its source and this script is kept (printed as "kept"); --force rewrites. Each file
is written to a temporary name and renamed, so an interrupted run leaves no half file.

  make_gguf_variants.py gguf SmolLM2-135M-Instruct.Q4_1.gguf --out-dir D --name smollm2
  make_gguf_variants.py llama2c stories110M-random.bin --tokenizer ../shared/models/llama2-tokenizer/tokenizer.model \\
      --out-dir D --name llama110m --types F32,F16,BF16,Q8_0,Q4_0

Needs numpy and gguf (0.19.0 tested; bench/cpu_vs_llamacpp.py runs it from its llama-cpp venv),
and sentencepiece for the llama2c source.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

import numpy as np

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
              "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1"}


class VariantError(Exception):
    pass


def log(msg: str) -> None:
    print(f"make_gguf_variants: {msg}", file=sys.stderr, flush=True)


def encode(name: str, values: np.ndarray, target: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: 2-D -> target, 1-D (norms) -> F32."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    values = np.ascontiguousarray(values, dtype=np.float32)
    qtype = GGMLQuantizationType[target] if values.ndim == 2 else GGMLQuantizationType.F32
    if values.ndim not in (1, 2):
        raise VariantError(f"tensor '{name}' has {values.ndim} dimensions; expected 1 or 2")
    try:
        return quantize(values, qtype), qtype
    except Exception as e:  # noqa: BLE001 - gguf raises QuantError / NotImplementedError
        raise VariantError(f"tensor '{name}' {list(values.shape)} cannot be encoded as {qtype.name}: {e}") from e


def new_writer(path: str, target: str):
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    return writer, int(gguf.LlamaFileType[FILE_TYPES[target]])


def finish(writer, tmp: str, out: str) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)


# ---- source: GGUF ------------------------------------------------------------------------------

def field_value(field):
    """(value, vtype, sub_type) of a GGUFReader field, strings as raw bytes (kept byte for byte)."""
    from gguf import GGUFValueType

    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], vtype, sub
        if sub == GGUFValueType.ARRAY:
            raise VariantError(f"metadata '{field.name}' is a nested array, which this tool does not copy")
        return field.contents(), vtype, sub
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), vtype, None
    return field.contents(), vtype, None


def from_gguf(src: str, out: str, target: str) -> None:
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src)
    arch = reader.fields.get("general.architecture")
    if arch is None or arch.contents() != "llama":
        raise VariantError(f"{src}: general.architecture is not 'llama'")
    tmp = out + ".tmp"
    writer, file_type = new_writer(tmp, target)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_file_type(file_type)
            continue
        value, vtype, sub = field_value(field)
        writer.add_key_value(key, value, vtype, sub_type=sub)
    if "general.file_type" not in reader.fields:
        writer.add_file_type(file_type)
    for tensor in reader.tensors:
        shape = [int(d) for d in reversed(tensor.shape.tolist())]  # GGUF lists ne[0] (columns) first
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        if not np.all(np.isfinite(values)):
            raise VariantError(f"{src}: tensor '{tensor.name}' has non-finite values")
        data, qtype = encode(tensor.name, values, target)
        writer.add_tensor(tensor.name, data, raw_dtype=qtype)
    finish(writer, tmp, out)


# ---- source: llama2.c --------------------------------------------------------------------------

def read_llama2c(path: str) -> tuple[dict, dict]:
    """(config, {gguf name: float32 array [rows, cols] or [n]}) of a legacy llama2.c checkpoint."""
    with open(path, "rb") as f:
        header = f.read(28)
        if len(header) != 28:
            raise VariantError(f"{path}: shorter than a llama2.c header")
        dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", header)
        data = np.fromfile(f, dtype="<f4")
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq) <= 0 or dim % heads or heads % kv_heads:
        raise VariantError(f"{path}: not a llama2.c checkpoint (header {dim}, {hidden}, {layers}, {heads}, "
                           f"{kv_heads}, {vocab}, {seq})")
    head_dim = dim // heads
    kv_dim = kv_heads * head_dim
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            raise VariantError(f"{path}: truncated ({data.size * 4 + 28} bytes)")
        arr = data[pos:pos + n].reshape(shape)
        pos += n
        return arr

    t = {"token_embd.weight": take(vocab, dim)}
    per_layer = [("attn_norm", (dim,)), ("attn_q", (dim, dim)), ("attn_k", (kv_dim, dim)),
                 ("attn_v", (kv_dim, dim)), ("attn_output", (dim, dim)), ("ffn_norm", (dim,)),
                 ("ffn_gate", (hidden, dim)), ("ffn_down", (dim, hidden)), ("ffn_up", (hidden, dim))]
    for name, shape in per_layer:  # llama2.c stores each kind for all layers, then the next kind
        block = take(layers, *shape)
        for i in range(layers):
            t[f"blk.{i}.{name}.weight"] = block[i]
    t["output_norm.weight"] = take(dim)
    take(seq, head_dim // 2)  # freq_cis_real, unused (run.c computes RoPE itself)
    take(seq, head_dim // 2)  # freq_cis_imag
    if not shared:
        t["output.weight"] = take(vocab, dim)
    if pos != data.size:
        raise VariantError(f"{path}: {data.size - pos} float32 values left after the last tensor")
    config = {"dim": dim, "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads,
              "vocab": vocab, "seq": seq, "head_dim": head_dim}
    return config, t


def sentencepiece_vocab(path: str, vocab_size: int):
    """tokens, scores, token types as convert_hf_to_gguf.py's _create_vocab_sentencepiece."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError as e:
        raise VariantError("the llama2c source needs sentencepiece (pip install sentencepiece)") from e
    from gguf import TokenType

    sp = SentencePieceProcessor()
    if not sp.Load(path):
        raise VariantError(f"{path}: sentencepiece cannot load it")
    if sp.vocab_size() > vocab_size:
        raise VariantError(f"{path} has {sp.vocab_size()} pieces; the checkpoint's vocab is {vocab_size}")
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(float(sp.GetScore(i)))
        types.append(int(kind))
    for i in range(sp.vocab_size(), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))
    return tokens, scores, types


def from_llama2c(src: str, tokenizer: str, out: str, target: str, name: str, loaded=None) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_gguf_fixtures import add_llama_vocab  # gguf-py is imported by the caller's writer anyway

    config, tensors = loaded or read_llama2c(src)
    tokens, scores, types = sentencepiece_vocab(tokenizer, config["vocab"])
    tmp = out + ".tmp"
    writer, file_type = new_writer(tmp, target)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config["seq"])
    writer.add_embedding_length(config["dim"])
    writer.add_block_count(config["layers"])
    writer.add_feed_forward_length(config["hidden"])
    writer.add_head_count(config["heads"])
    writer.add_head_count_kv(config["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config["vocab"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)
    add_llama_vocab(writer, tokens, scores, types)
    writer.add_tokenizer_pre("default")
    for tensor_name, values in tensors.items():
        data, qtype = encode(tensor_name, values, target)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    finish(writer, tmp, out)


# ---- driver ------------------------------------------------------------------------------------

def up_to_date(out: str, sources: list[str]) -> bool:
    if not os.path.exists(out):
        return False
    newest = max(os.path.getmtime(p) for p in sources + [os.path.abspath(__file__)])
    return os.path.getmtime(out) >= newest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=("gguf", "llama2c"))
    ap.add_argument("path", help="the source GGUF or llama2.c checkpoint")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--name", help="file name prefix (default: the source's name without extensions)")
    ap.add_argument("--types", default="F16,BF16,Q8_0,Q4_0", help=f"comma-separated, of {','.join(TYPES)}")
    ap.add_argument("--tokenizer", help="llama2c: the SentencePiece tokenizer.model")
    ap.add_argument("--force", action="store_true", help="rewrite files that look up to date")
    args = ap.parse_args()

    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if bad:
        ap.error(f"unknown type(s) {', '.join(bad)}; choose from {', '.join(TYPES)}")
    if not os.path.isfile(args.path):
        print(f"make_gguf_variants: error: {args.path} not found", file=sys.stderr)
        return 1
    if args.source == "llama2c" and not (args.tokenizer and os.path.isfile(args.tokenizer)):
        print(f"make_gguf_variants: error: llama2c needs --tokenizer tokenizer.model (got {args.tokenizer})",
              file=sys.stderr)
        return 1
    try:
        import gguf  # noqa: F401
    except ImportError:
        print("make_gguf_variants: error: the gguf package is missing (pip install gguf==0.19.0)", file=sys.stderr)
        return 1
    name = args.name or os.path.basename(args.path).split(".")[0]
    os.makedirs(args.out_dir, exist_ok=True)
    sources = [args.path] + ([args.tokenizer] if args.source == "llama2c" else [])
    loaded = None
    try:
        for target in types:
            out = os.path.join(args.out_dir, f"{name}.{target}.gguf")
            if not args.force and up_to_date(out, sources):
                print(f"kept {out}")
                continue
            t0 = time.monotonic()
            if args.source == "gguf":
                from_gguf(args.path, out, target)
            else:
                loaded = loaded or read_llama2c(args.path)
                from_llama2c(args.path, args.tokenizer, out, target, name, loaded)
            log(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s)")
            print(f"wrote {out}")
    except VariantError as e:
        print(f"make_gguf_variants: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pieces, scores and types of a SentencePiece tokenizer.model (a serialized ModelProto), read with the
standard library: field 1 `pieces` {1: piece, 2: score, 3: type}. Shared by tools that write GGUF
vocabularies (make_gguf_fixtures.py, make_random_gguf.py) on machines without sentencepiece or gguf-py."""
import struct
from pathlib import Path


def read_varint(buf: bytes, i: int):
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def sentencepiece_vocab(path: Path):
    """(pieces, scores, types) of a SentencePiece ModelProto: field 1 `pieces` {1: piece, 2: score, 3: type}."""
    buf = path.read_bytes()
    pieces, scores, types = [], [], []
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = read_varint(buf, i)
            body = buf[i:i + length]
            i += length
            if field != 1:
                continue
            piece, score, kind = b"", 0.0, 1
            j = 0
            while j < len(body):
                k, j = read_varint(body, j)
                f, w = k >> 3, k & 7
                if f == 1 and w == 2:
                    ln, j = read_varint(body, j)
                    piece = body[j:j + ln]
                    j += ln
                elif f == 2 and w == 5:
                    (score,) = struct.unpack("<f", body[j:j + 4])
                    j += 4
                elif f == 3 and w == 0:
                    kind, j = read_varint(body, j)
                elif w == 0:
                    _, j = read_varint(body, j)
                elif w == 2:
                    ln, j = read_varint(body, j)
                    j += ln
                elif w == 5:
                    j += 4
                elif w == 1:
                    j += 8
                else:
                    raise SystemExit(f"spm_vocab: {path}: unexpected wire type {w} in a piece")
            pieces.append(piece.decode("utf-8"))
            scores.append(score)
            types.append(kind)
        else:
            raise SystemExit(f"spm_vocab: {path}: unexpected wire type {wire}")
    return pieces, scores, types

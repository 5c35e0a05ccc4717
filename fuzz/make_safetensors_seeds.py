#!/usr/bin/env python3
"""Writes small valid safetensors files as seeds for fuzz_safetensors: usage make_safetensors_seeds.py DIR."""
import json
import pathlib
import struct
import sys


def image(tensors, pad=0):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header).encode() + b" " * pad  # the reference writer pads with spaces
    return struct.pack("<Q", len(text)) + text + data


out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
(out / "small").write_bytes(image([("a", "F32", [2, 2], bytes(16)), ("b", "F16", [3], bytes(6)),
                                   ("c", "BF16", [0, 4], b"")]))
(out / "padded").write_bytes(image([("model.norm.weight", "I64", [2], bytes(16)), ("x", "U8", [5], bytes(5))], pad=3))

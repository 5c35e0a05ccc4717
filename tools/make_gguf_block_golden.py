#!/usr/bin/env python3
"""Golden values for kiln's GGUF block mappings (src/format/gguf_model.cc): random blocks of each
block-quantized type kiln maps onto its layouts, and what gguf-py's own dequantizer makes of them.

Writes tests/golden/gguf_blocks.json: per type, `rows` x `cols` elements as raw block bytes (hex) and
the float32 values gguf.quants.dequantize returns. The d / m fields are random finite f16 values (the
high nibble of their exponent kept small so products stay finite), the code bytes uniform.

usage: make_gguf_block_golden.py [OUT]   (needs the `gguf` package, e.g. the venv of tools/fetch_smollm2.sh:
       ~/.cache/kiln/venv-gguf/bin/python tools/make_gguf_block_golden.py)
"""
import json
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
ROWS, COLS = 3, 96


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/gguf_blocks.json"
    rng = np.random.default_rng(7)
    result = {"generator": "tools/make_gguf_block_golden.py", "rows": ROWS, "cols": COLS, "types": {}}
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_blocks = ROWS * COLS // block_size
        raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        # f16 fields at the block's start (d, and m for *_1): finite, moderate magnitudes, either sign
        n_f16 = 2 if name in ("Q4_1", "Q5_1") else 1
        halves = (rng.standard_normal((n_blocks, n_f16)) * 0.05).astype(np.float16)
        raw[:, : 2 * n_f16] = halves.view(np.uint8).reshape(n_blocks, 2 * n_f16)
        values = dequantize(raw.reshape(ROWS, -1), qtype).astype(np.float32)
        assert values.shape == (ROWS, COLS)
        result["types"][name] = {"bytes": raw.tobytes().hex(), "values": [float(v) for v in values.ravel()]}
    with open(out, "w") as f:
        json.dump(result, f, indent=None)
        f.write("\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

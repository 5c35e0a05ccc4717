#!/usr/bin/env python3
"""Golden values for kiln's GGUF block mappings (src/format/gguf_model.cc): random blocks of each
block-quantized type kiln maps onto its layouts (the 32-element types and the k-quants), and what
gguf-py's own dequantizer makes of them.

Writes tests/golden/gguf_blocks.json: per type, `rows` x `cols` elements as raw block bytes (hex) and
the float32 values gguf.quants.dequantize returns. The f16 fields (d, m, dmin) are random finite values
of moderate size; every other byte (codes, packed sub-block scales) is uniform.

usage: make_gguf_block_golden.py [OUT]   (needs the `gguf` package, e.g. the venv of tools/fetch_smollm2.sh:
       ~/.cache/kiln/venv-gguf/bin/python tools/make_gguf_block_golden.py)
"""
import json
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ROWS, COLS = 2, 256
# byte offsets of each block's f16 fields (d, dmin / m), which must be finite
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82],
              "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/gguf_blocks.json"
    rng = np.random.default_rng(7)
    result = {"generator": "tools/make_gguf_block_golden.py", "rows": ROWS, "cols": COLS, "types": {}}
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_blocks = ROWS * COLS // block_size
        raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        # the f16 fields (d, and m / dmin): finite, moderate magnitudes, either sign
        for offset in F16_FIELDS[name]:
            halves = (rng.standard_normal((n_blocks, 1)) * 0.05).astype(np.float16)
            raw[:, offset:offset + 2] = halves.view(np.uint8).reshape(n_blocks, 2)
        values = dequantize(raw.reshape(ROWS, -1), qtype).astype(np.float32)
        assert values.shape == (ROWS, COLS)
        result["types"][name] = {"bytes": raw.tobytes().hex(), "values": [float(str(np.float32(v))) for v in values.ravel()]}
    with open(out, "w") as f:
        json.dump(result, f, indent=None)
        f.write("\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

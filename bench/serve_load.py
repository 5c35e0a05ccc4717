#!/usr/bin/env python3
"""Load test for `kiln serve` (loopback only): N concurrent streaming clients over the OpenAI API.

    python3 bench/serve_load.py --url http://127.0.0.1:8000 [--model NAME] [--concurrency 64,256]
        [--requests-per-client 2] [--prompt-words 8:64] [--max-tokens 16:128] [--api completions|chat]
        [--system-prompt-words 0] [--seed 0] [--timeout 600] [--json-out FILE]

Each level runs C clients at once; each client sends --requests-per-client streaming requests one after
another (`stream: true`, `stream_options.include_usage`), with a random prompt of P words and a random
max_tokens in the given ranges (so prompt and output lengths are mixed), temperature 0 and
`ignore_eos`-free sampling: outputs may end early at EOS, which is counted from usage.

Per level it reports: requests/s, output tokens/s (usage.completion_tokens summed over the wall time of
the level), TTFT (request sent -> first content chunk) and inter-token latency (gaps between content
chunks of one stream) p50/p99, failed requests (any non-200, malformed chunk, missing [DONE], missing
usage, timeout) and, from GET /metrics before and after, KV blocks used/free/total, prefix-cache hit
rate and preemptions. After each level it waits for the server to drain and checks that every KV block
is free again (`kv_leak` is true when not).

--system-prompt-words N prefixes every prompt with the same N-word "system prompt" (the shared-prefix
case for the prefix cache).

Standard library only (asyncio sockets, HTTP/1.1 with chunked transfer), so it runs on any host with
Python 3.9+. Prints one table and one JSON line.
"""
import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import urllib.parse
import urllib.request

WORDS = ("once upon a time there was a little girl named lily she liked to play in the park with her "
         "friend tom they saw a big red ball and a small dog the sun was warm and the sky was blue one day "
         "mom said we can go to the shop and buy a toy").split()


def span(text):
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def emit_json_line(line, json_out):
    """Prints the result line and, with --json-out, writes it to that file too."""
    print(line)
    if json_out:
        with open(json_out, "w") as f:
            f.write(line + "\n")


def fetch_metrics(base, api_key):
    req = urllib.request.Request(base + "/metrics")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


async def stream_request(host, port, path, body, api_key, timeout):
    """POSTs body and yields (time, parsed SSE data or '[DONE]') as chunks arrive."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nAccept: text/event-stream\r\nConnection: close\r\n")
    if api_key:
        head += f"Authorization: Bearer {api_key}\r\n"
    writer.write(head.encode() + b"\r\n" + payload)
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        chunked = "chunked" in headers.get("transfer-encoding", "")
        buf = b""
        while True:
            if chunked:
                size_line = await asyncio.wait_for(reader.readline(), timeout)
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    break
                data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                buf += data[:-2]
            else:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        text = line[6:].decode()
                        yield time.perf_counter(), ("[DONE]" if text == "[DONE]" else json.loads(text))
    finally:
        writer.close()


def system_prompt(args):
    rng = random.Random(args.seed)
    if not args.system_prompt_words:
        return ""
    return " ".join(rng.choice(WORDS) for _ in range(args.system_prompt_words)) + " "


def client_workload(args, client_index):
    """The (prompt, max_tokens) pairs client `client_index` sends, in order (bench/hf_generate_load.py
    replays the same list through transformers)."""
    rng = random.Random(args.seed * 100003 + client_index)
    prefix = system_prompt(args)
    out = []
    for _ in range(args.requests_per_client):
        words = [rng.choice(WORDS) for _ in range(rng.randint(*args.prompt_words))]
        lo, hi = args.max_tokens
        if args.output_dist == "longtail":  # exponential, mean (hi - lo) / 6 above lo, cut at hi
            n = lo + min(hi - lo, int(rng.expovariate(6.0 / max(1, hi - lo))))
        else:
            n = rng.randint(lo, hi)
        out.append((prefix + " ".join(words), n))
    return out


def add_workload_args(ap):
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--prompt-words", type=span, default=(8, 64))
    ap.add_argument("--max-tokens", type=span, default=(16, 128))
    ap.add_argument("--system-prompt-words", type=int, default=0)
    ap.add_argument("--output-dist", choices=("uniform", "longtail"), default="uniform",
                    help="max_tokens: uniform over --max-tokens, or long-tailed (exponential from its low end, "
                         "mean a sixth of the range, cut at its high end: most answers short, a few long)")
    ap.add_argument("--seed", type=int, default=0)


async def one_request(args, host, port, prompt, max_tokens, stats):
    body = {"model": args.model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if args.api == "chat":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = prompt
    t0 = time.perf_counter()
    last = None
    done = False
    usage = None
    try:
        async for t, data in stream_request(host, port, path, body, args.api_key, args.timeout):
            if data == "[DONE]":
                done = True
                continue
            if data.get("usage"):
                usage = data["usage"]
            for choice in data.get("choices", []):
                text = choice.get("text") if args.api != "chat" else (choice.get("delta") or {}).get("content")
                if text:
                    if last is None:
                        stats["ttft"].append(t - t0)
                    else:
                        stats["itl"].append(t - last)
                    last = t
        if not done or usage is None:
            raise RuntimeError("stream ended without usage or [DONE]")
        stats["completion_tokens"] += usage["completion_tokens"]
        stats["prompt_tokens"] += usage["prompt_tokens"]
        stats["ok"] += 1
    except Exception as e:  # every failure is counted, the first few are shown
        stats["failed"] += 1
        if len(stats["errors"]) < 5:
            stats["errors"].append(f"{type(e).__name__}: {e}"[:200])


async def client(args, host, port, index, stats):
    for prompt, max_tokens in client_workload(args, index):
        await one_request(args, host, port, prompt, max_tokens, stats)


async def run_level(args, host, port, concurrency):
    stats = {"ttft": [], "itl": [], "ok": 0, "failed": 0, "errors": [], "completion_tokens": 0,
             "prompt_tokens": 0}
    t0 = time.perf_counter()
    await asyncio.gather(*(client(args, host, port, i, stats) for i in range(concurrency)))
    stats["wall_s"] = time.perf_counter() - t0
    return stats


def wait_drained(base, api_key, timeout=60):
    deadline = time.time() + timeout
    m = {}
    while time.time() < deadline:
        m = fetch_metrics(base, api_key)
        if m.get("kiln_running_sequences", 0) == 0 and m.get("kiln_queue_length", 0) == 0:
            return m
        time.sleep(0.2)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--concurrency", default="64,256")
    add_workload_args(ap)
    ap.add_argument("--api", choices=("completions", "chat"), default="completions")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    url = urllib.parse.urlparse(args.url)
    host, port = url.hostname, url.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("serve_load.py: loopback only (--url must be 127.0.0.1, localhost or ::1)")
    base = f"{url.scheme}://{host}:{port}"
    if not args.model:
        req = urllib.request.Request(base + "/v1/models")
        if args.api_key:
            req.add_header("Authorization", f"Bearer {args.api_key}")
        args.model = json.load(urllib.request.urlopen(req, timeout=30))["data"][0]["id"]

    rows = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        before = fetch_metrics(base, args.api_key)
        s = asyncio.run(run_level(args, host, port, c))
        after = wait_drained(base, args.api_key)
        q = after.get("kiln_prefix_cache_query_tokens_total", 0) - before.get("kiln_prefix_cache_query_tokens_total", 0)
        h = after.get("kiln_prefix_cache_hit_tokens_total", 0) - before.get("kiln_prefix_cache_hit_tokens_total", 0)
        total_blocks = after.get("kiln_kv_blocks_total", float("nan"))
        row = {
            "concurrency": c, "requests": s["ok"] + s["failed"], "failed": s["failed"], "wall_s": round(s["wall_s"], 3),
            "requests_per_s": round(s["ok"] / s["wall_s"], 2),
            "output_tok_per_s": round(s["completion_tokens"] / s["wall_s"], 1),
            "prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
            "ttft_p50_ms": round(1e3 * percentile(s["ttft"], 0.5), 1), "ttft_p99_ms": round(1e3 * percentile(s["ttft"], 0.99), 1),
            "itl_p50_ms": round(1e3 * percentile(s["itl"], 0.5), 2), "itl_p99_ms": round(1e3 * percentile(s["itl"], 0.99), 2),
            "prefix_cache_hit_rate": round(h / q, 4) if q else 0.0,
            "preemptions": after.get("kiln_preemptions_total", 0) - before.get("kiln_preemptions_total", 0),
            "kv_blocks_total": total_blocks, "kv_blocks_free_after": after.get("kiln_kv_blocks_free", float("nan")),
            "kv_blocks_used_peak": after.get("kiln_kv_blocks_used_peak", float("nan")),
            "kv_cache_gib": round(after.get("kiln_kv_cache_bytes", float("nan")) / 2**30, 2),
            "kv_leak": after.get("kiln_kv_blocks_free") != total_blocks,
            "errors": s["errors"],
        }
        rows.append(row)

    cols = ("concurrency", "requests", "failed", "requests_per_s", "output_tok_per_s", "ttft_p50_ms", "ttft_p99_ms",
            "itl_p50_ms", "itl_p99_ms", "prefix_cache_hit_rate", "preemptions", "kv_leak")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[k]) for k in cols))
        for e in r["errors"]:
            print(f"  error: {e}")
    line = json.dumps({"bench": "serve_load", "url": base, "model": args.model, "api": args.api,
                       "prompt_words": args.prompt_words, "max_tokens": args.max_tokens,
                       "output_dist": args.output_dist, "requests_per_client": args.requests_per_client,
                       "system_prompt_words": args.system_prompt_words, "levels": rows})
    emit_json_line(line, args.json_out)
    sys.exit(1 if any(r["failed"] or r["kv_leak"] for r in rows) else 0)


if __name__ == "__main__":
    main()

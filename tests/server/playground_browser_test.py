#!/usr/bin/env python3
"""End-to-end test of the web playground (GET /) in headless Chromium, standard library only.

    python3 tests/server/playground_browser_test.py [--kiln build/kiln] [--model stories260K.bin]
        [--tokenizer tok512.bin] [--chat-template FILE] [--out-dir build/tests] [--chromium chromium]

Builds the stories260K engine and serves it twice with `kiln serve ENGINE --port 0`: plain, then with a
chat template and an API key. Chromium is driven through the DevTools protocol over a pipe
(--remote-debugging-pipe: fd 3 carries our commands, fd 4 its answers, each a JSON message ended by
NUL); the test types into the page, clicks Send with temperature 0 and max_tokens 24, and waits for the
streamed answer. Checks:
  - GET / returns src/server/playground.html byte for byte as text/html, without an API key;
  - each transcript answer equals the text the same greedy request returns from the API (urllib):
    without a chat template the page falls back from chat to /v1/completions and says so; with one,
    two chat turns (system prompt and history included) match /v1/chat/completions;
  - the stats show a numeric tokens/s, a TTFT, and the token count the API reports in usage;
  - a rejected request (temperature -1) shows the server's OpenAI-shaped error message; without the
    API key the page says it needs one, and works once it is entered;
  - no console errors or uncaught exceptions, and no request to another origin (it works offline);
  - the screenshots (PNG, decoded here with zlib) are not blank: many colors, the transcript non-uniform.
With --gguf FILE (or --gguf smollm2: SmolLM2-135M-Instruct.Q4_1.gguf, fetched by
tools/make_gguf_golden.py), the engine is built straight from the GGUF file and served once, with the
chat template and tokenizer that came in the file (no --chat-template), for the chat checks above.
Screenshots are saved as OUT_DIR/playground.png (chat) and playground_completion.png for humans.
Chromium missing is a failure, not a skip (scripts/install_deps.sh --test installs it). Every wait has
a timeout, and Chromium and both servers are ended on every path.
"""
import argparse
import base64
import ctypes
import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

PROMPT = "Once upon a time, there was a little"
FOLLOW_UP = "What did the dog say?"
SYSTEM = "You tell short stories."
MAX_TOKENS = 24
DEADLINE_S = 60  # the whole test (it takes ~5 s); ctest gives it 90
GGUF_DEADLINE_S = 240  # --gguf: a 135M-parameter model (~7 s here, several times that under ASan); ctest gives 300


class Failure(Exception):
    pass


def die_with_parent():
    """In a child before exec: SIGKILL it when this script dies, even by SIGKILL (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def check(cond, what):
    if not cond:
        raise Failure(what)


def remaining(deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise Failure("test deadline passed")
    return left


class DevTools:
    """A DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, chromium, user_data_dir, log_path):
        cmd_read, self._cmd_write = os.pipe()
        self._resp_read, resp_write = os.pipe()

        def wire_fds():  # in the child: fd 3 <- our commands, fd 4 -> our responses
            a, b = os.dup(cmd_read), os.dup(resp_write)
            os.dup2(a, 3)
            os.dup2(b, 4)
            die_with_parent()

        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--remote-debugging-pipe", "--window-size=1280,900",
             "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
             "--disable-background-networking", "--disable-sync", "--disable-component-update",
             "--force-device-scale-factor=1", f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=wire_fds, pass_fds=(3, 4), start_new_session=True)
        os.close(cmd_read)
        os.close(resp_write)
        self._next_id = 0
        self._responses = {}
        self._cond = threading.Condition()
        self.events = queue.Queue()
        self._closed = False
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        buf = b""
        while True:
            try:
                data = os.read(self._resp_read, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += data
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._responses[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method, params=None, session=None, timeout=10):
        self._next_id += 1
        msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_write, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._responses:
                left = end - time.monotonic()
                if self._closed:
                    raise Failure(f"Chromium closed the pipe during {method}")
                if left <= 0:
                    raise Failure(f"no answer to {method} within {timeout} s")
                self._cond.wait(left)
            resp = self._responses.pop(msg_id)
        if "error" in resp:
            raise Failure(f"{method}: {resp['error']}")
        return resp.get("result", {})

    def close(self):
        if self.proc.poll() is None:
            try:
                os.write(self._cmd_write, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)
        for fd in (self._cmd_write, self._resp_read):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


def stop_process(proc):
    """Ends proc and its process group (Chromium's helpers share it): TERM, then KILL after 5 s."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((15, 5), (9, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Page:
    """One tab, attached with flatten so its commands carry a sessionId."""

    def __init__(self, tools):
        self.tools = tools
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.console_errors = []
        self.request_urls = []
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")

    def send(self, method, params=None, timeout=10):
        return self.tools.send(method, params, session=self.session, timeout=timeout)

    def drain_events(self):
        while True:
            try:
                ev = self.tools.events.get_nowait()
            except queue.Empty:
                return
            if ev.get("sessionId") != self.session:
                continue
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
                self.console_errors.append("console.error: " + " ".join(str(a) for a in args))
            elif method == "Network.requestWillBeSent":
                self.request_urls.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text", "")
                self.console_errors.append("exception: " + text)

    def eval(self, expression, timeout=10):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise Failure(f"evaluating {expression[:80]!r}: {result['exceptionDetails']}")
        self.drain_events()
        return result["result"].get("value")

    def wait_for(self, expression, deadline, what, poll_s=0.05):
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise Failure(f"timed out waiting for {what}")
            time.sleep(poll_s)


def decode_png(data):
    """Decodes an 8-bit RGB or RGBA non-interlaced PNG into (width, height, channels, rows of bytes)."""
    check(data[:8] == b"\x89PNG\r\n\x1a\n", "screenshot is not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    check(header is not None, "PNG without IHDR")
    width, height, depth, color_type, _, _, interlace = header
    check(depth == 8 and color_type in (2, 6) and interlace == 0, f"unexpected PNG format {header}")
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # the five PNG filters (RFC 2083 section 6)
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def pixels(rows, channels, x0, y0, x1, y1):
    return {rows[y][x * channels:x * channels + 3] for y in range(y0, y1) for x in range(x0, x1)}


def api(base, path, body=None, api_key="", timeout=30):
    """(status, parsed JSON) of a request to the server; errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def start_server(cmd, deadline):
    """Starts cmd and waits for its line 'serving MODEL on http://HOST:PORT'; returns (process, base URL)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent)
    lines = queue.Queue()

    def pump():
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    end = time.monotonic() + min(20, remaining(deadline))
    while True:
        try:
            line = lines.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            line = ""
        if line is None or time.monotonic() > end:
            stop_process(proc)
            raise Failure(f"{' '.join(cmd)} did not become ready; output:\n" + "".join(seen))
        seen.append(line)
        m = re.search(r"serving (.+) on (http://[^\s]+)", line)
        if m:
            return proc, m.group(2).rstrip("/")


def open_page(tools, base, deadline):
    page = Page(tools)
    page.send("Page.navigate", {"url": base + "/"})
    page.wait_for("document.readyState === 'complete' && document.body.dataset.state === 'idle'", deadline,
                  "the page to load")
    return page


def send_message(page, text, deadline, temperature="0"):
    """Types text with greedy sampling and MAX_TOKENS, clicks Send, waits for the answer; returns its text."""
    done = page.eval("document.querySelectorAll('.msg.assistant[data-done]').length")
    page.eval(f"""(() => {{
        const set = (id, v) => {{ document.getElementById(id).value = v; }};
        set('temperature', {json.dumps(temperature)}); set('max_tokens', '{MAX_TOKENS}'); set('top_p', '1');
        set('top_k', ''); set('min_p', ''); set('seed', ''); set('stop', '');
        set('input', {json.dumps(text)});
        document.getElementById('send').click();
    }})()""")
    page.wait_for(f"document.querySelectorAll('.msg.assistant[data-done]').length === {done + 1}", deadline,
                  "the answer")
    return page.eval("[...document.querySelectorAll('.msg.assistant .text')].pop().textContent")


def check_stats(page, expected_tokens):
    stats = page.eval("(() => { const t = (id) => document.getElementById(id).textContent;"
                      " return {rate: t('statRate'), ttft: t('statTtft'), tokens: t('statTokens'),"
                      " finish: t('statFinish')}; })()")
    check(re.fullmatch(r"\d+(\.\d+)?", stats["rate"]) and float(stats["rate"]) > 0, f"tokens/s is not a number: {stats}")
    check(re.fullmatch(r"\d+ ms", stats["ttft"]), f"TTFT is not shown: {stats}")
    check(stats["tokens"] == str(expected_tokens), f"tokens {stats['tokens']} != usage {expected_tokens}")
    return stats


def check_clean(page, base):
    """No error bubbles, console errors or exceptions, and no request to another origin."""
    errors = page.eval("[...document.querySelectorAll('.msg.error')].map(e => e.textContent)")
    check(not errors, f"the page shows errors: {errors}")
    page.drain_events()
    check(not page.console_errors, f"console errors: {page.console_errors}")
    foreign = [u for u in page.request_urls if not u.startswith(base + "/") and not u.startswith("data:")]
    check(not foreign, f"the page fetched other origins (it must work offline): {foreign}")
    check(len(page.request_urls) >= 4, f"saw too few requests to judge: {page.request_urls}")


def check_screenshot(page, path):
    """Saves a PNG of the viewport and checks it is not blank: many colors, the transcript non-uniform."""
    box = page.eval("(() => { const r = document.getElementById('transcript').getBoundingClientRect();"
                    " return [r.left, r.top, r.right, r.bottom, devicePixelRatio, innerWidth, innerHeight]; })()")
    png = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"}, timeout=15)["data"])
    with open(path, "wb") as f:
        f.write(png)
    width, height, channels, rows = decode_png(png)
    scale = box[4]
    check((width, height) == (round(box[5] * scale), round(box[6] * scale)),
          f"screenshot is {width}x{height}, the viewport {box[5]}x{box[6]}")
    colors = pixels(rows, channels, 0, 0, width, height)
    check(len(colors) >= 64, f"screenshot has only {len(colors)} colors")
    x0, y0, x1, y1 = (int(v * scale) for v in box[:4])
    region = pixels(rows, channels, x0, y0, min(x1, width), min(y1, height))
    check(len(region) >= 16, f"the transcript region has only {len(region)} colors")
    print(f"  screenshot {path}: {width}x{height}, {len(colors)} colors, transcript {len(region)}")


def completion_scenario(tools, base, deadline, out_dir):
    """No chat template: chat mode falls back to /v1/completions; a rejected request shows the error."""
    status, models = api(base, "/v1/models")
    check(status == 200 and models["data"], f"GET /v1/models: {status} {models}")
    model = models["data"][0]["id"]
    status, chat = api(base, "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": MAX_TOKENS})
    check(status == 400 and "chat template" in chat["error"]["message"],
          f"chat without a template: expected 400 'no chat template', got {status} {chat}")
    status, completion = api(base, "/v1/completions", {
        "model": model, "prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS})
    check(status == 200, f"POST /v1/completions: {status} {completion}")
    expected = completion["choices"][0]["text"]
    check(expected.strip() != "", f"the reference answer is empty (the test would prove nothing): {completion}")
    status, bad = api(base, "/v1/completions", {"model": model, "prompt": PROMPT, "temperature": -1})
    check(status == 400 and bad.get("error", {}).get("message"), f"temperature -1: expected 400, got {status} {bad}")

    page = open_page(tools, base, deadline)
    check(page.eval("document.getElementById('model').value") == model, "the model picker does not show the model")
    got = send_message(page, PROMPT, deadline)
    check(got == expected, f"transcript differs from the API:\n  page: {got!r}\n  api:  {expected!r}")
    mode = page.eval("document.querySelector('input[name=mode]:checked').value")
    notices = page.eval("[...document.querySelectorAll('.msg.notice')].map(e => e.textContent).join('|')")
    check(mode == "completion" and "chat template" in notices,
          f"no chat template: expected the fallback to completion, mode {mode}, notices {notices!r}")
    stats = check_stats(page, completion["usage"]["completion_tokens"])
    check(stats["finish"] == completion["choices"][0]["finish_reason"], f"finish {stats} vs {completion}")
    check_clean(page, base)
    check_screenshot(page, os.path.join(out_dir, "playground_completion.png"))
    print(f"  completion: {got!r} ({stats})")

    # The server's error message (OpenAI's shape) appears in the page.
    send_message(page, PROMPT, deadline, temperature="-1")
    shown = page.eval("[...document.querySelectorAll('.msg.error')].map(e => e.textContent).join('|')")
    check(bad["error"]["message"] in shown, f"server error {bad['error']['message']!r} not shown; page shows {shown!r}")
    page.drain_events()
    check(not page.console_errors, f"console errors: {page.console_errors}")


def chat_scenario(tools, base, api_key, deadline, out_dir, screenshot="playground.png"):
    """A chat template and an API key: the page asks for the key, then holds a two-turn conversation."""
    status, _ = api(base, "/v1/models")
    check(status == 401, f"GET /v1/models without the key: expected 401, got {status}")
    status, models = api(base, "/v1/models", api_key=api_key)
    check(status == 200 and models["data"], f"GET /v1/models: {status} {models}")
    model = models["data"][0]["id"]

    page = open_page(tools, base, deadline)
    shown = page.eval("[...document.querySelectorAll('.msg.error')].map(e => e.textContent).join('|')")
    check("API key" in shown, f"without the key the page should say so; it shows {shown!r}")
    page.eval(f"""(() => {{ const k = document.getElementById('apiKey'); k.value = {json.dumps(api_key)};
                 k.dispatchEvent(new Event('change')); document.getElementById('clear').click(); }})()""")
    page.wait_for("document.getElementById('model').options.length > 0", deadline, "the models after the key")
    check(page.eval("document.getElementById('model').value") == model, "the model picker does not show the model")
    page.eval(f"document.getElementById('system').value = {json.dumps(SYSTEM)}")

    messages = [{"role": "system", "content": SYSTEM}]
    for turn in (PROMPT, FOLLOW_UP):
        messages.append({"role": "user", "content": turn})
        status, chat = api(base, "/v1/chat/completions", {
            "model": model, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS}, api_key=api_key)
        check(status == 200, f"POST /v1/chat/completions: {status} {chat}")
        expected = chat["choices"][0]["message"]["content"]
        check(expected.strip() != "", f"the reference answer is empty (the test would prove nothing): {chat}")
        got = send_message(page, turn, deadline)
        check(got == expected, f"turn {len(messages) // 2}: transcript differs from the API:\n  page: {got!r}\n"
              f"  api:  {expected!r}")
        stats = check_stats(page, chat["usage"]["completion_tokens"])
        messages.append({"role": "assistant", "content": expected})
        print(f"  chat turn {len(messages) // 2}: {got!r} ({stats})")
    mode = page.eval("document.querySelector('input[name=mode]:checked').value")
    check(mode == "chat", f"with a chat template the page left chat mode: {mode}")
    check_clean(page, base)
    check_screenshot(page, os.path.join(out_dir, screenshot))


def run(args):
    deadline = time.monotonic() + (GGUF_DEADLINE_S if args.gguf else DEADLINE_S)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    chromium = shutil.which(args.chromium)
    check(chromium is not None, f"{args.chromium} not found: install Debian's chromium package "
          "(scripts/install_deps.sh --test does)")
    if args.gguf:
        engine = os.path.join(out_dir, "playground_gguf.kiln")
        build = [args.kiln, "build", args.gguf, "-o", engine, "--max-seq-len", "1024"]
    else:
        engine = os.path.join(out_dir, "playground_stories260K.kiln")
        build = [args.kiln, "build", args.model, "--tokenizer", args.tokenizer, "-o", engine]
    subprocess.run(build, check=True, timeout=remaining(deadline), stdout=subprocess.DEVNULL)
    serve = [args.kiln, "serve", engine, "--port", "0"]
    servers, tools = [], None
    profile = tempfile.mkdtemp(prefix="kiln-playground-chromium-")
    try:
        if args.gguf:  # the file's own chat template and tokenizer
            api_key = "playground-test-key"
            proc, base = start_server(serve + ["--api-key", api_key], deadline)
            servers.append(proc)
            tools = DevTools(chromium, profile, os.path.join(out_dir, "playground_chromium.log"))
            print(f"chat mode against {base} ({os.path.basename(args.gguf)})")
            chat_scenario(tools, base, api_key, deadline, out_dir, "playground_gguf.png")
            print(f"PASS (screenshot: {os.path.join(out_dir, 'playground_gguf.png')})")
            return 0
        proc, base = start_server(serve, deadline)
        servers.append(proc)
        # GET / is the embedded page, byte for byte, and open without an API key.
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            check(r.headers.get_content_type() == "text/html", f"GET / is {r.headers['Content-Type']}")
            with open(args.html, "rb") as f:
                check(r.read() == f.read(), f"GET / differs from {args.html}")
        tools = DevTools(chromium, profile, os.path.join(out_dir, "playground_chromium.log"))
        print(f"completion mode against {base}")
        completion_scenario(tools, base, deadline, out_dir)

        api_key = "playground-test-key"
        proc, base = start_server(serve + ["--chat-template", args.chat_template, "--api-key", api_key], deadline)
        servers.append(proc)
        print(f"chat mode against {base}")
        chat_scenario(tools, base, api_key, deadline, out_dir)
        print(f"PASS (screenshot: {os.path.join(out_dir, 'playground.png')})")
        return 0
    finally:
        if tools:
            tools.close()
        for proc in servers:
            stop_process(proc)
        shutil.rmtree(profile, ignore_errors=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.dirname(os.path.dirname(here))
    shared = os.path.join(source, "..", "shared", "models", "stories260K")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(source, "build", "kiln"))
    ap.add_argument("--model", default=os.path.join(shared, "stories260K.bin"))
    ap.add_argument("--tokenizer", default=os.path.join(shared, "tok512.bin"))
    ap.add_argument("--chat-template", default=os.path.join(here, "playground_chat_template.jinja"))
    ap.add_argument("--html", default=os.path.join(source, "src", "server", "playground.html"))
    ap.add_argument("--out-dir", default=os.path.join(source, "build", "tests"))
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--gguf", default=None, help="a GGUF file to build and serve instead, or 'smollm2'")
    args = ap.parse_args()
    if args.gguf == "smollm2":
        sys.path.insert(0, os.path.join(source, "tools"))
        import make_gguf_golden
        try:
            args.gguf = str(make_gguf_golden.fetch())
        except make_gguf_golden.GoldenError as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
    # SIGTERM (ctest's timeout, a CI cancel) unwinds through the clean-up in run().
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAIL: terminated"))
    try:
        return run(args)
    except (Failure, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

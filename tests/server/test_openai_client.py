#!/usr/bin/env python3
"""`kiln serve` through the official `openai` Python client (the clients users run), on stories260K.

    python tests/server/test_openai_client.py --kiln build/kiln --shared ../shared

Builds the engine with `kiln build`, starts `kiln serve ENGINE --port 0 --chat-template
tests/server/chat_template_test.jinja --api-key ...`, and checks completions, chat, streaming, stop
strings, seeds, n, logprobs, usage and errors. References are independent of the server: greedy text
from `kiln run --json` (generate(), no scheduler), prompt ids from `kiln tokenize`, the chat prompt
rendered by jinja2 (the template engine transformers uses), /metrics read by prometheus_client's
parser. Ends the server with SIGTERM and expects exit status 0. Needs: openai, jinja2, prometheus_client
(run_openai_client_test.sh makes a venv with them).
"""
import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import jinja2
import openai
from prometheus_client.parser import text_string_to_metric_families

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "chat_template_test.jinja")
API_KEY = "test-key"
MODEL = "stories"
PROMPT = "Once upon a time"
ARGS = None


class Server:
    """`kiln serve` in a child process; the port comes from its "serving ... on http://..." line."""

    def __init__(self, kiln, engine):
        self.proc = subprocess.Popen(
            [kiln, "serve", engine, "--port", "0", "--served-model-name", MODEL, "--chat-template", TEMPLATE,
             "--api-key", API_KEY, "-t", "1", "--shutdown-timeout", "5"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        found = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"serving (\S+) on (http://\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(2)
                    found.set()
            found.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not found.wait(60) or not self.url:
            self.proc.kill()
            raise RuntimeError("kiln serve did not start:\n" + "".join(self.log))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def kiln(*args):
    return subprocess.run([ARGS.kiln, *args], check=True, capture_output=True, text=True, timeout=120).stdout


class OpenAIClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        model_dir = os.path.join(ARGS.shared, "models", "stories260K")
        cls.engine = os.path.join(cls.tmp.name, "stories260K.kiln")
        kiln("build", os.path.join(model_dir, "stories260K.bin"), "--tokenizer", os.path.join(model_dir, "tok512.bin"),
             "--max-seq-len", "512", "-o", cls.engine)
        cls.server = Server(ARGS.kiln, cls.engine)
        cls.client = openai.OpenAI(base_url=cls.server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)

    @classmethod
    def tearDownClass(cls):
        status = cls.server.stop()
        cls.tmp.cleanup()
        if status != 0:
            raise AssertionError(f"kiln serve exited with {status} after SIGTERM:\n" + "".join(cls.server.log))

    def reference(self, prompt, max_tokens):
        """Greedy generation by `kiln run` (generate(): one sequence, no server, no scheduler)."""
        out = json.loads(kiln("run", self.engine, "-p", prompt, "-n", str(max_tokens), "--temperature", "0", "--json",
                              "-t", "1"))
        return out

    def complete(self, **kwargs):
        return self.client.completions.create(model=MODEL, **kwargs)

    def test_greedy_completion_equals_kiln_run(self):
        for prompt, n in ((PROMPT, 40), ("The dog", 25), ("Lily and Tom went to the park.", 60)):
            expected = self.reference(prompt, n)
            r = self.complete(prompt=prompt, max_tokens=n, temperature=0)
            self.assertEqual(r.object, "text_completion")
            self.assertEqual(r.model, MODEL)
            self.assertEqual(len(r.choices), 1)
            self.assertEqual(r.choices[0].text, expected["text"])
            self.assertEqual(r.choices[0].finish_reason, "stop" if expected["finish_reason"] == "eos" else "length")
            self.assertEqual(r.usage.prompt_tokens, len(expected["prompt_ids"]))
            self.assertEqual(r.usage.completion_tokens, len(expected["ids"]))
            self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        # Token ids as the prompt: the same result as their text.
        ids = json.loads(kiln("tokenize", self.engine, "--bos", PROMPT))
        by_ids = self.complete(prompt=ids, max_tokens=40, temperature=0)
        self.assertEqual(by_ids.choices[0].text, self.reference(PROMPT, 40)["text"])
        # Several prompts: one choice each, in order.
        several = self.complete(prompt=[PROMPT, "The dog"], max_tokens=25, temperature=0)
        self.assertEqual([c.index for c in several.choices], [0, 1])
        self.assertEqual(several.choices[1].text, self.reference("The dog", 25)["text"])

    def test_chat_renders_the_template_like_jinja2(self):
        messages = [{"role": "system", "content": "You tell stories."},
                    {"role": "user", "content": [{"type": "text", "text": "Tell me about "},
                                                 {"type": "text", "text": "a cat."}]}]
        chat = self.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0)
        self.assertEqual(chat.object, "chat.completion")
        self.assertEqual(chat.choices[0].message.role, "assistant")
        self.assertIn(chat.choices[0].finish_reason, ("stop", "length"))
        # The prompt, rendered independently (as transformers' apply_chat_template does), sent as a
        # completion: the same tokens in, so the same greedy text out.
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        flat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else "".join(p["text"] for p in m["content"])} for m in messages]
        with open(TEMPLATE) as f:
            rendered = env.from_string(f.read()).render(messages=flat, add_generation_prompt=True,
                                                        bos_token="", eos_token="")
        completion = self.complete(prompt=rendered, max_tokens=30, temperature=0)
        self.assertEqual(chat.choices[0].message.content, completion.choices[0].text)
        self.assertEqual(chat.usage.prompt_tokens, completion.usage.prompt_tokens)

    def test_streaming_completion(self):
        whole = self.complete(prompt=PROMPT, max_tokens=50, temperature=0.8, seed=3)
        chunks = list(self.complete(prompt=PROMPT, max_tokens=50, temperature=0.8, seed=3, stream=True,
                                    stream_options={"include_usage": True}))
        self.assertGreaterEqual(len(chunks), 3)  # deltas may coalesce: text..., finish, usage
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].text)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, [whole.choices[0].finish_reason])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    def test_streaming_chat(self):
        messages = [{"role": "user", "content": "Once upon a time"}]
        whole = self.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
        chunks = list(self.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40,
                                                          temperature=0, stream=True))
        self.assertEqual(chunks[0].object, "chat.completion.chunk")
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertEqual(content, whole.choices[0].message.content)
        self.assertEqual(chunks[-1].choices[0].finish_reason, whole.choices[0].finish_reason)
        self.assertTrue(all(c.choices[0].finish_reason is None for c in chunks[:-1]))

    def test_stop_strings(self):
        full = self.complete(prompt=PROMPT, max_tokens=60, temperature=0).choices[0].text
        for stop in ("Lily", [".", "never appears"], "girl named"):
            first = min(full.find(s) for s in ([stop] if isinstance(stop, str) else stop) if s in full)
            r = self.complete(prompt=PROMPT, max_tokens=60, temperature=0, stop=stop)
            self.assertEqual(r.choices[0].finish_reason, "stop", stop)
            self.assertEqual(r.choices[0].text, full[:first], stop)
            streamed = "".join(c.choices[0].text for c in self.complete(
                prompt=PROMPT, max_tokens=60, temperature=0, stop=stop, stream=True) if c.choices)
            self.assertEqual(streamed, full[:first], stop)

    def test_seed_reproducibility(self):
        def sample(seed):
            return self.complete(prompt=PROMPT, max_tokens=30, temperature=1.0, seed=seed).choices[0].text
        self.assertEqual(sample(42), sample(42))
        texts = {sample(s) for s in range(1, 7)}
        self.assertGreater(len(texts), 1, "six seeds all gave the same text")

    def test_n_choices_use_seed_plus_i(self):
        r = self.complete(prompt=PROMPT, max_tokens=20, temperature=1.0, seed=100, n=3)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        for i, choice in enumerate(r.choices):
            alone = self.complete(prompt=PROMPT, max_tokens=20, temperature=1.0, seed=100 + i)
            self.assertEqual(choice.text, alone.choices[0].text, f"choice {i}")
        self.assertEqual(r.usage.completion_tokens,
                         sum(len(c.logprobs.tokens) for c in self.complete(
                             prompt=PROMPT, max_tokens=20, temperature=1.0, seed=100, n=3, logprobs=0).choices))
        self.assertEqual(r.usage.prompt_tokens, len(json.loads(kiln("tokenize", self.engine, "--bos", PROMPT))))

    def test_completion_logprobs(self):
        r = self.complete(prompt=PROMPT, max_tokens=30, temperature=0, logprobs=3)
        lp = r.choices[0].logprobs
        n = r.usage.completion_tokens
        self.assertEqual(len(lp.tokens), n)
        self.assertEqual(len(lp.token_logprobs), n)
        self.assertEqual(len(lp.top_logprobs), n)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        self.assertEqual(lp.text_offset, [sum(len(t.encode()) for t in lp.tokens[:i]) for i in range(n)])
        for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            self.assertLessEqual(logprob, 0.0)
            self.assertTrue(3 <= len(top) <= 4)
            self.assertLessEqual(sum(math.exp(v) for v in top.values()), 1.0 + 1e-5)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(logprob, max(top.values()), places=5)
            self.assertIn(token, top)

    def test_chat_logprobs(self):
        r = self.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=15, temperature=0, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertEqual(bytes(t.bytes), t.token.encode())
            self.assertEqual(len(t.top_logprobs), 2)
            self.assertGreaterEqual(t.top_logprobs[0].logprob, t.top_logprobs[1].logprob)
            self.assertAlmostEqual(t.logprob, t.top_logprobs[0].logprob, places=5)

    def test_penalties_change_sampling(self):
        plain = self.complete(prompt=PROMPT, max_tokens=60, temperature=0).choices[0].text
        penalized = self.complete(prompt=PROMPT, max_tokens=60, temperature=0, frequency_penalty=2.0,
                                  presence_penalty=2.0).choices[0].text
        self.assertNotEqual(plain, penalized)

    def test_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete(prompt=PROMPT, temperature=5)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete(prompt=PROMPT, max_tokens=10000)
        self.assertEqual(e.exception.code, "context_length_exceeded")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=MODEL, messages=[], max_tokens=3)
        self.assertEqual(e.exception.body["param"], "messages")
        with self.assertRaises(openai.NotFoundError):
            self.client.completions.create(model="no-such-model", prompt=PROMPT)
        with self.assertRaises(openai.AuthenticationError):
            openai.OpenAI(base_url=self.server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        self.assertEqual([m.id for m in self.client.models.list()], [MODEL])

    def test_metrics(self):
        self.complete(prompt=PROMPT, max_tokens=5)
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=30) as f:
            families = {f.name: f for f in text_string_to_metric_families(f.read().decode())}
        self.assertEqual(families["kiln_time_to_first_token_seconds"].type, "histogram")
        self.assertEqual(families["kiln_kv_blocks_total"].type, "gauge")
        requests = {s.labels["status"]: s.value for s in families["kiln_requests"].samples
                    if s.name == "kiln_requests_total"}
        self.assertGreaterEqual(requests["success"], 1)
        generated = [s.value for s in families["kiln_generation_tokens"].samples]
        self.assertGreaterEqual(generated[0], 5)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--shared", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])


if __name__ == "__main__":
    main()

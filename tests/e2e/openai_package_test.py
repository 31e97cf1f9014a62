#!/usr/bin/env python3
"""The OpenAI-style HTTP API as outside clients use it: the `openai` Python package (PyPI)
and curl, against `tessera serve --http-listen`; and `tessera client chat` against the same
server.

Checks what those clients rely on: GET /v1/models; /v1/completions and
/v1/chat/completions, whole and streamed (the chunks add up to the whole answer); n > 1;
logprobs and top_logprobs; presence and frequency penalties; stop strings; usage (with
stream_options.include_usage); errors as the package's exception classes with their status
and field; and curl's view of the server-sent-event framing (data: lines, blank-line
separated, ending with data: [DONE]).

usage: openai_package_test.py TESSERA_BINARY [unittest arguments]
"""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import time
import unittest

try:
    import openai
except ImportError as error:
    sys.exit(f"openai_package_test: {sys.executable} cannot import openai ({error}); "
             "deploy/setup.sh installs it into its virtual environment")

READY_TIMEOUT_S = 240  # the first run makes the built-in model
SHUTDOWN_TIMEOUT_S = 20
MODEL = "tessera-tiny-llama-random-v2"
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name three colours."}]

TESSERA = ""


class Server:
    """`tessera serve` with the HTTP API, on ports it picks itself."""

    def __init__(self):
        command = [TESSERA, "serve", "--listen", "127.0.0.1:0", "--metrics-listen",
                   "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--np", "1", "--tp", "1",
                   "--kv-cache-memory", "64M"]
        # A cache of its own: the built-in random model, whatever real model deploy/setup.sh
        # put in the user's cache.
        self.cache = tempfile.TemporaryDirectory(prefix="tessera-test-cache-")
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   TESSERA_CACHE_DIR=self.cache.name)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env, start_new_session=True)
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_ready(self, timeout):
        """The HTTP API's base URL and the gRPC port once serve says it serves; fails on exit
        or timeout."""
        deadline = time.monotonic() + timeout
        base_url = None
        grpc_port = None
        while base_url is None or grpc_port is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"tessera serve not ready within {timeout} s:\n" +
                                     "\n".join(self.log[-20:]))
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise AssertionError(f"tessera serve exited with {self.process.returncode}:"
                                         "\n" + "\n".join(self.log[-20:]))
                continue
            self.log.append(line)
            found = re.search(r"OpenAI API on (http://[^ ,]+/v1)", line)
            if found:
                base_url = found.group(1)
            found = re.match(r"tessera serve: serving on 127\.0\.0\.1:(\d+)", line)
            if found:
                grpc_port = int(found.group(1))
        return base_url, grpc_port

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError("tessera serve did not stop within "
                                     f"{SHUTDOWN_TIMEOUT_S} s of SIGINT")
        return self.process.returncode


class OpenAiPackageTest(unittest.TestCase):
    server = None
    base_url = None
    grpc_port = None
    client = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        try:
            cls.base_url, cls.grpc_port = cls.server.wait_ready(READY_TIMEOUT_S)
        except Exception:
            cls.server.stop()
            raise
        cls.client = openai.OpenAI(base_url=cls.base_url, api_key="no-key-needed",
                                   max_retries=0, timeout=120)

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        if code != 0:
            raise AssertionError(f"tessera serve exited with {code} on SIGINT")

    def test_models_lists_the_served_model(self):
        ids = [model.id for model in self.client.models.list()]
        self.assertEqual(ids, [MODEL])

    def test_a_completion_whole_and_streamed(self):
        whole = self.client.completions.create(model=MODEL, prompt="Once upon a time",
                                               max_tokens=12, temperature=0)
        self.assertEqual(whole.object, "text_completion")
        self.assertEqual(len(whole.choices), 1)
        self.assertIn(whole.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(whole.usage.completion_tokens, 0)
        self.assertEqual(whole.usage.total_tokens,
                         whole.usage.prompt_tokens + whole.usage.completion_tokens)
        chunks = list(self.client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)

    def test_a_chat_whole_and_streamed(self):
        whole = self.client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                    max_tokens=12, temperature=0)
        self.assertEqual(whole.object, "chat.completion")
        message = whole.choices[0].message
        self.assertEqual(message.role, "assistant")
        stream = self.client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                     max_tokens=12, temperature=0, stream=True)
        chunks = list(stream)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        self.assertEqual(text, message.content)
        self.assertEqual(chunks[-1].choices[0].finish_reason, whole.choices[0].finish_reason)

    def test_n_choices_and_logprobs(self):
        answer = self.client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                     max_tokens=8, temperature=1.0, seed=3,
                                                     n=3, logprobs=True)
        self.assertEqual([choice.index for choice in answer.choices], [0, 1, 2])
        tokens = 0
        for choice in answer.choices:
            content = choice.logprobs.content
            tokens += len(content)
            self.assertEqual(bytes(b for entry in content for b in entry.bytes).decode(
                "utf-8", errors="replace"), choice.message.content)
            for entry in content:
                self.assertLessEqual(entry.logprob, 0.0)
        self.assertEqual(answer.usage.completion_tokens, tokens)
        single = self.client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                     max_tokens=8, temperature=1.0, seed=3)
        self.assertEqual(single.choices[0].message.content, answer.choices[0].message.content)

    def test_top_logprobs_and_penalties(self):
        answer = self.client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                     max_tokens=8, temperature=0, logprobs=True,
                                                     top_logprobs=4)
        for entry in answer.choices[0].logprobs.content:
            alternatives = entry.top_logprobs
            self.assertEqual(len(alternatives), 4)
            values = [alternative.logprob for alternative in alternatives]
            self.assertEqual(values, sorted(values, reverse=True))
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(values[0], entry.logprob, places=5)
            for alternative in alternatives:
                # A token alone may be part of a character: only whole text is compared.
                try:
                    text = bytes(alternative.bytes).decode("utf-8")
                except UnicodeDecodeError:
                    continue
                self.assertEqual(text, alternative.token)
        legacy = self.client.completions.create(model=MODEL, prompt="Once upon a time",
                                                max_tokens=6, temperature=0, logprobs=2)
        tops = legacy.choices[0].logprobs.top_logprobs
        self.assertEqual(len(tops), len(legacy.choices[0].logprobs.tokens))
        for top in tops:
            self.assertTrue(1 <= len(top) <= 2, top)
        plain = self.client.completions.create(model=MODEL, prompt="The list:", max_tokens=24,
                                               temperature=0)
        penalized = self.client.completions.create(model=MODEL, prompt="The list:",
                                                   max_tokens=24, temperature=0,
                                                   presence_penalty=1.5, frequency_penalty=1.0)
        self.assertEqual(penalized.usage.completion_tokens, plain.usage.completion_tokens)
        self.assertNotEqual(penalized.choices[0].text, plain.choices[0].text)
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.completions.create(model=MODEL, prompt="hi", presence_penalty=3)
        self.assertIn("presence_penalty", str(caught.exception))
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True,
                                                top_logprobs=21)
        self.assertIn("top_logprobs", str(caught.exception))

    def test_a_stop_string_ends_the_text_before_it(self):
        whole = self.client.completions.create(model=MODEL, prompt="The list:", max_tokens=24,
                                               temperature=0)
        text = whole.choices[0].text
        if len(text) < 6:
            self.skipTest(f"the greedy text is too short to cut: {text!r}")
        stop = text[3:5]
        stopped = self.client.completions.create(model=MODEL, prompt="The list:",
                                                 max_tokens=24, temperature=0, stop=[stop])
        self.assertEqual(stopped.choices[0].text, text[:text.find(stop)])
        self.assertEqual(stopped.choices[0].finish_reason, "stop")

    def test_errors_are_the_packages_exceptions(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.completions.create(model=MODEL, prompt="hi", top_p=1.5)
        self.assertEqual(caught.exception.status_code, 400)
        self.assertIn("top_p", str(caught.exception))
        with self.assertRaises(openai.NotFoundError):
            self.client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model=MODEL, messages=[])
        self.assertIn("messages", str(caught.exception))

    def test_client_chat_carries_the_history(self):
        """`tessera client chat` (over gRPC): each turn sends the conversation before it."""
        result = subprocess.run(
            [TESSERA, "client", "chat", "--target", f"127.0.0.1:{self.grpc_port}", "--system",
             "Be brief.", "--max-tokens", "4", "--temperature", "0"],
            input="Hi\n\nTell me more\n", capture_output=True, text=True, timeout=120,
            check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        prompts = [int(n) for n in re.findall(r"; (\d+) prompt tokens", result.stderr)]
        self.assertEqual(len(prompts), 2, result.stderr)
        # The second turn holds the first, its reply and the new message.
        self.assertGreater(prompts[1], prompts[0] + len("Tell me more"), result.stderr)

    def test_curl_sees_server_sent_events(self):
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl is not installed (deploy/setup.sh installs it)")
        body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 6,
                           "temperature": 0, "stream": True})
        result = subprocess.run([curl, "-sS", "-N", "-D", "-", "-H",
                                 "Content-Type: application/json", "-d", body,
                                 f"{self.base_url}/chat/completions"],
                                capture_output=True, check=True, timeout=120)
        head, _, events = result.stdout.decode().partition("\r\n\r\n")
        self.assertIn("content-type: text/event-stream", head.lower())
        self.assertTrue(events.endswith("data: [DONE]\n\n"), events[-200:])
        for event in events.split("\n\n")[:-1]:
            self.assertTrue(event.startswith("data: "), event)
            if event != "data: [DONE]":
                json.loads(event[len("data: "):])


def main():
    global TESSERA
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    TESSERA = sys.argv[1]
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)


if __name__ == "__main__":
    main()

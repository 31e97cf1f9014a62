#!/usr/bin/env python3
"""An outside client of Tessera: Python, grpcio, stubs generated from proto/ at test time.

Starts `tessera serve` (coordinator plus mpirun workers, 2 ranks, TP 2) on free ports and
checks the client API as a user sees it: ListModels, Generate, GenerateStream, GenerateBatch,
Tokenize, an invalid request, gRPC health, the Prometheus endpoint, and that SIGINT (Ctrl-C)
shuts everything down with exit status 0.

usage: python_client_test.py TESSERA_BINARY PROTO_DIR [unittest arguments]
"""

import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

SETUP_HINT = ("install them with deploy/setup.sh (Debian: apt-get install python3-grpcio "
              "python3-grpc-tools), or configure with -DPython3_EXECUTABLE= an interpreter "
              "that has them")

try:
    import grpc
except ImportError as error:
    sys.exit(f"python_client_test: {sys.executable} cannot import grpc ({error}); {SETUP_HINT}")

READY_TIMEOUT_S = 240  # the first run makes the built-in model
RPC_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 20

TESSERA = ""
PROTO_DIR = ""


def generate_stubs(out_dir):
    """Compiles the client's protos into `out_dir`; returns a note on how."""
    inference = ["tessera/v1/inference.proto"]
    # The health proto is compiled from its own folder: as grpc/health/v1/health_pb2 its
    # package would be hidden by grpcio's own `grpc` package.
    health_dir = os.path.join(PROTO_DIR, "grpc", "health", "v1")
    jobs = [(PROTO_DIR, inference), (health_dir, ["health.proto"])]

    def compile_all(protoc):
        """None when every job compiles with the command `protoc`, else the error."""
        for include, files in jobs:
            result = subprocess.run(protoc + [f"-I{include}", f"--python_out={out_dir}",
                                              f"--grpc_python_out={out_dir}"] + files,
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                return result.stderr.strip()
        return None

    # grpc_tools first; Debian 12's python3-grpc-tools bundles protoc 3.5, which predates
    # proto3 `optional`, so fall back to the system protoc and gRPC's Python plugin
    # (protobuf-compiler and protobuf-compiler-grpc, which the C++ build needs anyway).
    errors = []
    if importlib.util.find_spec("grpc_tools") is None:
        errors.append("grpc_tools: no such module (python3-grpc-tools)")
    else:
        error = compile_all([sys.executable, "-m", "grpc_tools.protoc"])
        if error is None:
            return "python3 -m grpc_tools.protoc"
        errors.append(f"grpc_tools.protoc: {error}")
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc and plugin:
        error = compile_all([protoc, f"--plugin=protoc-gen-grpc_python={plugin}"])
        if error is None:
            return f"{protoc} with {plugin}"
        errors.append(f"protoc: {error}")
    else:
        errors.append("protoc or grpc_python_plugin not found")
    raise RuntimeError("cannot generate the Python stubs:\n  " + "\n  ".join(errors) +
                       f"\n{SETUP_HINT}")


class Server:
    """`tessera serve` on ports it picks itself; its output is read line by line."""

    def __init__(self):
        command = [TESSERA, "serve", "--listen", "127.0.0.1:0", "--metrics-listen",
                   "127.0.0.1:0", "--http-listen", "off", "--np", "2", "--tp", "2",
                   "--kv-cache-memory", "64M"]
        # A cache of its own: the built-in random model, whatever real model deploy/setup.sh
        # put in the user's cache.
        self.cache = tempfile.TemporaryDirectory(prefix="tessera-test-cache-")
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   TESSERA_CACHE_DIR=self.cache.name)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env, start_new_session=True)
        self.lines = queue.Queue()
        self.log = []
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            threading.Thread(target=self._read, args=(stream, name), daemon=True).start()

    def _read(self, stream, name):
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def wait_ready(self, timeout):
        """The gRPC and metrics ports once it prints that it serves; fails on exit or timeout.

        The two come on stdout and stderr, read by two threads: in either order here."""
        deadline = time.monotonic() + timeout
        grpc_port = metrics_port = None
        while grpc_port is None or metrics_port is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"tessera serve not ready within {timeout} s (gRPC port "
                                     f"{grpc_port}, metrics port {metrics_port})")
            try:
                name, line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    self._drain()
                    raise AssertionError(
                        f"tessera serve exited with {self.process.returncode} before serving")
                continue
            self.log.append(f"[{name}] {line}")
            found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", line)
            if found:
                metrics_port = int(found.group(1))
            found = re.match(r"tessera serve: serving on 127\.0\.0\.1:(\d+)", line)
            if found and name == "stdout":
                grpc_port = int(found.group(1))
        return grpc_port, metrics_port

    def _drain(self):
        while True:
            try:
                name, line = self.lines.get_nowait()
            except queue.Empty:
                return
            self.log.append(f"[{name}] {line}")

    def output(self):
        self._drain()
        return "\n".join(self.log[-80:])

    def stop(self):
        """Ctrl-C, then SIGKILL for it and its worker job (a process group of its own)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=SHUTDOWN_TIMEOUT_S + 10)
            return
        except subprocess.TimeoutExpired:
            pass
        groups = {process_group(pid) for pid in descendants(self.process.pid)}
        for group in (groups - {None}) | {self.process.pid}:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


def process_group(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def descendants(root):
    """The pids below `root` in the process tree (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class PythonClientTest(unittest.TestCase):
    server = None
    stub_dir = None
    channel = None

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="tessera-pystubs-")
        try:
            cls.start()
        except BaseException:
            cls.tearDownClass()  # unittest calls it only after a setUpClass that succeeded
            raise

    @classmethod
    def start(cls):
        how = generate_stubs(cls.stub_dir)
        print(f"python_client_test: stubs by {how}", file=sys.stderr)
        sys.path.insert(0, cls.stub_dir)
        global inference_pb2, inference_pb2_grpc, health_pb2, health_pb2_grpc
        from tessera.v1 import inference_pb2, inference_pb2_grpc
        import health_pb2
        import health_pb2_grpc

        cls.server = Server()
        try:
            cls.port, cls.metrics_port = cls.server.wait_ready(READY_TIMEOUT_S)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- tessera serve output ---\n"
                                 f"{cls.server.output()}") from None
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.port}")
        cls.inference = inference_pb2_grpc.InferenceStub(cls.channel)
        cls.health = health_pb2_grpc.HealthStub(cls.channel)
        cls.models = cls.inference.ListModels(inference_pb2.ListModelsRequest(),
                                              timeout=RPC_TIMEOUT_S)
        cls.model = cls.models.models[0].name if cls.models.models else ""

    @classmethod
    def tearDownClass(cls):
        if cls.channel is not None:
            cls.channel.close()
        if cls.server is not None:
            cls.server.stop()
        if cls.stub_dir is not None:
            shutil.rmtree(cls.stub_dir, ignore_errors=True)

    def request(self, prompt="Hello", max_tokens=8):
        return inference_pb2.GenerateRequest(
            model=self.model, prompt=prompt,
            sampling=inference_pb2.SamplingParams(temperature=0, max_tokens=max_tokens,
                                                  ignore_eos=True))

    def test_1_list_models(self):
        self.assertEqual(len(self.models.models), 1, self.models)
        versions = self.models.models[0].versions
        self.assertEqual([v.version for v in versions], ["v1"], self.models)
        self.assertEqual(versions[0].groups, 1)
        self.assertEqual(versions[0].healthy_groups, 1)

    def test_2_generate(self):
        response = self.inference.Generate(self.request(), timeout=RPC_TIMEOUT_S)
        self.assertEqual(len(response.tokens), 8, response)
        self.assertEqual(response.finish_reason, inference_pb2.FINISH_REASON_LENGTH)
        self.assertGreater(response.usage.prompt_tokens, 0)
        self.assertEqual(response.usage.completion_tokens, 8)
        self.assertTrue(response.request_id)
        self.assertEqual(response.placement.model, self.model)
        self.assertEqual(response.placement.version, "v1")
        self.assertGreater(response.timings.total_seconds, 0)

    def test_3_generate_stream(self):
        alone = self.inference.Generate(self.request(), timeout=RPC_TIMEOUT_S)
        messages = list(self.inference.GenerateStream(self.request(), timeout=RPC_TIMEOUT_S))
        self.assertGreater(len(messages), 0)
        finals = [i for i, m in enumerate(messages) if m.final]
        self.assertEqual(finals, [len(messages) - 1], "exactly one final message, the last")
        tokens = [t for m in messages for t in m.tokens]
        self.assertEqual(tokens, list(alone.tokens))
        self.assertEqual("".join(m.text for m in messages), alone.text)
        last = messages[-1]
        self.assertEqual(last.finish_reason, inference_pb2.FINISH_REASON_LENGTH)
        self.assertEqual(last.usage.completion_tokens, 8)
        self.assertEqual(messages[0].placement.model, self.model)

    def test_4_generate_batch(self):
        prompts = ["Hello", "The capital of France is", "1, 2, 3,"]
        batch = self.inference.GenerateBatch(
            inference_pb2.GenerateBatchRequest(requests=[self.request(p) for p in prompts]),
            timeout=RPC_TIMEOUT_S)
        self.assertEqual(len(batch.results), len(prompts))
        for prompt, result in zip(prompts, batch.results):
            self.assertEqual(result.error_code, 0, result.error_message)
            alone = self.inference.Generate(self.request(prompt), timeout=RPC_TIMEOUT_S)
            self.assertEqual(list(result.response.tokens), list(alone.tokens), prompt)
            self.assertEqual(result.response.text, alone.text, prompt)
            self.assertEqual(result.response.usage.prompt_tokens, alone.usage.prompt_tokens)

    def test_5_tokenize(self):
        response = self.inference.Tokenize(
            inference_pb2.TokenizeRequest(model=self.model, text="Hello world"),
            timeout=RPC_TIMEOUT_S)
        self.assertGreater(len(response.tokens), 0)
        generated = self.inference.Generate(
            inference_pb2.GenerateRequest(
                model=self.model, prompt_tokens=list(response.tokens),
                sampling=inference_pb2.SamplingParams(max_tokens=1, ignore_eos=True)),
            timeout=RPC_TIMEOUT_S)
        self.assertEqual(generated.usage.prompt_tokens, len(response.tokens))

    def test_6_invalid_argument(self):
        request = self.request()
        request.sampling.top_p = 2
        with self.assertRaises(grpc.RpcError) as raised:
            self.inference.Generate(request, timeout=RPC_TIMEOUT_S)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("top_p", raised.exception.details())

    def test_7_health(self):
        response = self.health.Check(health_pb2.HealthCheckRequest(service="tessera.v1.Inference"),
                                     timeout=RPC_TIMEOUT_S)
        self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING)

    def test_8_metrics(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as reply:
            self.assertEqual(reply.status, 200)
            body = reply.read().decode("utf-8")
        self.assertRegex(body, r"(?m)^tessera_requests_total\{")

    def test_9_sigint_stops_cleanly(self):
        process = self.server.process
        job = descendants(process.pid)  # mpirun and the workers
        self.assertTrue(job, "tessera serve has no worker job")
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.fail(f"tessera serve still running {SHUTDOWN_TIMEOUT_S} s after SIGINT\n"
                      f"{self.server.output()}")
        self.assertEqual(code, 0, self.server.output())
        left = [pid for pid in job if process_group(pid) is not None]
        self.assertEqual(left, [], "worker processes still running after tessera serve exited")


def main():
    global TESSERA, PROTO_DIR
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    TESSERA, PROTO_DIR = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if not os.access(TESSERA, os.X_OK):
        sys.exit(f"python_client_test: {TESSERA} is not an executable")
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)


if __name__ == "__main__":
    main()

import json
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "testlib"))
from stub_runtime_api import StubRuntimeApi  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAP = os.path.normpath(os.path.join(HERE, "..", "bootstrap.py"))
# SHIM_PYTHON=/path/to/python3.9 runs the shim under another interpreter (it supports 3.9+).
PYTHON = os.environ.get("SHIM_PYTHON", sys.executable)
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "..", "tests", "fixtures", "python"))


@pytest.fixture
def stub():
    s = StubRuntimeApi()
    yield s
    s.close()


class Shim:
    def __init__(self, proc, out_path, err_path):
        self.proc, self.out_path, self.err_path = proc, out_path, err_path

    def wait(self, timeout=15):
        return self.proc.wait(timeout)

    def _lines(self, path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def stdout_records(self):
        return self._lines(self.out_path)

    def stderr_records(self):
        return self._lines(self.err_path)

    def raw_stdout(self):
        with open(self.out_path, encoding="utf-8") as f:
            return f.read()


@pytest.fixture
def start_shim(stub, tmp_path):
    """start_shim(handler, concurrency=1, task_root=FIXTURES, env={}) -> Shim."""
    procs = []

    def start(handler, concurrency=1, task_root=FIXTURES, env=None):
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": stub.address,
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": task_root,
            "AWS_LAMBDA_MAX_CONCURRENCY": str(concurrency),
            "AWS_LAMBDA_FUNCTION_NAME": "stub-fn",
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/stub-fn",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2025/01/01/[1]abc",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances",
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            "AWS_REGION": "us-east-1",
            "TZ": ":UTC",
            "PYTHONDONTWRITEBYTECODE": "1",  # keep __pycache__ out of tests/fixtures/python
        }
        e.update(env or {})
        n = len(procs)
        out_path, err_path = tmp_path / ("stdout%d" % n), tmp_path / ("stderr%d" % n)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([PYTHON, BOOTSTRAP], env=e, cwd=task_root,
                                    stdout=out, stderr=err, start_new_session=True)
        procs.append(proc)
        return Shim(proc, out_path, err_path)

    yield start
    for proc in procs:
        # The shim runs in its own session: its process group id is its pid, and holds its workers.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

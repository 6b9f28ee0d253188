"""Runs the Java shim (bootstrap 17) against the stub Runtime API of runtime-shims/python/tests."""
import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "runtime-shims", "python", "tests"))
sys.path.insert(0, os.path.join(REPO, "runtime-shims", "testlib"))
from stub_runtime_api import StubRuntimeApi  # noqa: E402

BOOTSTRAP = os.path.join(REPO, "runtime-shims", "java", "bootstrap")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "java")
JAVA_MAJOR = os.environ.get("SHIM_JAVA_MAJOR", "17")


@pytest.fixture(scope="session")
def task_root():
    subprocess.run([os.path.join(FIXTURES, "build.sh")], check=True)
    return os.path.join(FIXTURES, "build", "task")


@pytest.fixture
def stub():
    s = StubRuntimeApi()
    yield s
    s.close()


class Shim:
    def __init__(self, proc, out_path, err_path):
        self.proc, self.out_path, self.err_path = proc, out_path, err_path

    def records(self, path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]  # every line must parse

    def stdout_records(self):
        return self.records(self.out_path)

    def stderr_records(self):
        return self.records(self.err_path)


@pytest.fixture
def start_shim(stub, tmp_path, task_root):
    """start_shim(handler, concurrency=1, env={}) -> Shim, with stdout/stderr captured to files."""
    procs = []

    def start(handler, concurrency=1, env=None):
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": stub.address,
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": task_root,
            "AWS_LAMBDA_MAX_CONCURRENCY": str(concurrency),
            "AWS_LAMBDA_FUNCTION_NAME": "stub-fn",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        }
        e.update(env or {})
        n = len(procs)
        out_path, err_path = tmp_path / ("stdout%d" % n), tmp_path / ("stderr%d" % n)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([BOOTSTRAP, JAVA_MAJOR], env=e, cwd=task_root, stdout=out, stderr=err,
                                    start_new_session=True)
        procs.append(proc)
        return Shim(proc, out_path, err_path)

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

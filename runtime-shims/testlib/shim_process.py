"""Starting a shim under test, shared by the conftest.py of the Python, Java and .NET shims.

A shim runs in its own session with stdout and stderr captured to files; `run_shims` is the body of each
conftest's `start_shim` fixture, and `stub` (import it into the conftest) the stub Runtime API it polls.
"""
import json
import os
import signal
import subprocess

import pytest
from stub_runtime_api import StubRuntimeApi


@pytest.fixture
def stub():
    s = StubRuntimeApi()
    yield s
    s.close()


def build_fixtures(fixtures):
    """Runs the build.sh of a folder of compiled test functions; returns the task root it builds."""
    subprocess.run([os.path.join(fixtures, "build.sh")], check=True)
    return os.path.join(fixtures, "build", "task")


class Shim:
    def __init__(self, proc, out_path, err_path):
        self.proc, self.out_path, self.err_path = proc, out_path, err_path

    def wait(self, timeout=15):
        return self.proc.wait(timeout)

    def records(self, path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]  # every line must parse

    def stdout_records(self):
        return self.records(self.out_path)

    def stderr_records(self):
        return self.records(self.err_path)

    def raw_stdout(self):
        with open(self.out_path, encoding="utf-8") as f:
            return f.read()


def run_shims(stub, tmp_path, command, default_task_root, extra_env=None):
    """Yields start(handler, concurrency=1, task_root=default_task_root, env={}) -> Shim, which runs `command`
    (a list) against `stub` with the Lambda environment plus `extra_env`, then `env`; afterwards kills every
    shim it started, with its workers."""
    procs = []

    def start(handler, concurrency=1, task_root=default_task_root, env=None):
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": stub.address,
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": task_root,
            "AWS_LAMBDA_MAX_CONCURRENCY": str(concurrency),
            "AWS_LAMBDA_FUNCTION_NAME": "stub-fn",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        }
        e.update(extra_env or {})
        e.update(env or {})
        n = len(procs)
        out_path, err_path = tmp_path / ("stdout%d" % n), tmp_path / ("stderr%d" % n)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(command, env=e, cwd=task_root, stdout=out, stderr=err, start_new_session=True)
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

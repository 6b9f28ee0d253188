import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "testlib"))
from shim_process import run_shims, stub  # noqa: E402,F401 (stub: the stub Runtime API fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAP = os.path.normpath(os.path.join(HERE, "..", "bootstrap.py"))
# SHIM_PYTHON=/path/to/python3.9 runs the shim under another interpreter (it supports 3.9+).
PYTHON = os.environ.get("SHIM_PYTHON", sys.executable)
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "..", "tests", "fixtures", "python"))


@pytest.fixture
def start_shim(stub, tmp_path):
    """start_shim(handler, concurrency=1, task_root=FIXTURES, env={}) -> Shim."""
    yield from run_shims(stub, tmp_path, [PYTHON, BOOTSTRAP], FIXTURES, {
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/stub-fn",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2025/01/01/[1]abc",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "AWS_REGION": "us-east-1",
        "TZ": ":UTC",
        "PYTHONDONTWRITEBYTECODE": "1",  # keep __pycache__ out of tests/fixtures/python
    })

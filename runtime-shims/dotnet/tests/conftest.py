"""Runs the .NET shim (under Mono) against the stub Runtime API of runtime-shims/testlib."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "runtime-shims", "testlib"))
from shim_process import build_fixtures, run_shims, stub  # noqa: E402,F401 (stub: a fixture)

BOOTSTRAP = os.path.join(REPO, "runtime-shims", "dotnet", "bootstrap")


@pytest.fixture(scope="session")
def task_root():
    return build_fixtures(os.path.join(REPO, "tests", "fixtures", "dotnet"))


@pytest.fixture
def start_shim(stub, tmp_path, task_root):
    """start_shim(handler, concurrency=1, env={}) -> Shim, with stdout/stderr captured to files."""
    yield from run_shims(stub, tmp_path, [BOOTSTRAP], task_root)

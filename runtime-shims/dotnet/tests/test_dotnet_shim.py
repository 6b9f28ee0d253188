"""The .NET shim's logs, exit statuses and log socket, against a stub Runtime API (no agent needed)."""
import pytest
from common_shim_tests import *  # noqa: F401,F403 (the tests shared with the Java shim, collected here)
from common_shim_tests import ShimNames

HANDLER = "Fixtures::Fixtures.Actions::Handle"


@pytest.fixture
def names():
    return ShimNames(handler=HANDLER, function_error="ArgumentException",
                     bad_init="Fixtures::Fixtures.BadInit::Handle", init_error="InvalidOperationException",
                     init_frame="Fixtures.BadInit")


def test_processing_tasks_default_to_the_concurrency(stub, start_shim):
    shim = start_shim(HANDLER, concurrency=3)
    stub.wait_parked(3, timeout=30)
    assert any(r["message"] == "started 3 processing task(s) for up to 3 invoke(s)" for r in shim.stderr_records())


def test_one_processing_task_repolls_while_its_invokes_run(stub, start_shim, tmp_path):
    """AWS_LAMBDA_DOTNET_PROCESSING_TASKS=1 and 3 slots: the single loop starts an invoke and polls again at
    once, so 3 gate invokes (each waiting for all 3) can only finish if all 3 ran at the same time."""
    gate = tmp_path / "gate"
    gate.mkdir()
    shim = start_shim(HANDLER, concurrency=3, env={"AWS_LAMBDA_DOTNET_PROCESSING_TASKS": "1"})
    rids = [stub.enqueue({"action": "gate", "dir": str(gate), "count": 3, "max_s": 60}) for _ in range(3)]
    for rid in rids:
        answer = stub.wait_answer(rid, timeout=60)
        assert answer.kind == "response", answer
        assert len(answer.json()["seen"]) == 3
    assert stub.max_parked == 1  # never more than one poller
    assert any(r["message"] == "started 1 processing task(s) for up to 3 invoke(s)" for r in shim.stderr_records())


"""The tests that the Java and .NET shims share: their fixtures have the same actions ("log", "raise", "gate").

A shim's test module imports them (`from common_shim_tests import *`), so pytest collects them there, and defines
a fixture `names` returning the ShimNames of its fixtures and of the errors its runtime raises.
"""
from collections import namedtuple

import pytest
from refusal_checks import check_refused_answers_leave_every_poller
from shim_log_checks import check_concurrent_logs, check_error_is_logged, listen_for_log_streams

__all__ = [
    "ShimNames",
    "test_concurrent_invokes_log_whole_lines_with_their_own_request_id",
    "test_a_function_error_is_logged_with_its_fields",
    "test_log_level_filters_the_context_logger",
    "test_records_go_to_the_log_socket_when_the_agent_names_one",
    "test_init_error_is_reported_and_the_process_exits_1",
    "test_next_answering_500_ends_the_process_with_1",
    "test_a_refused_answer_leaves_every_poller",
]

# handler: the fixture with the actions; function_error: the error type of its "raise" action; bad_init: a
# handler whose initialisation throws init_error, with a stack frame that contains init_frame.
ShimNames = namedtuple("ShimNames", "handler function_error bad_init init_error init_frame")


def test_concurrent_invokes_log_whole_lines_with_their_own_request_id(stub, start_shim, names):
    shim = start_shim(names.handler, concurrency=4)
    check_concurrent_logs(stub, shim, invokes=4, lines=200)


def test_a_function_error_is_logged_with_its_fields(stub, start_shim, names):
    shim = start_shim(names.handler)
    check_error_is_logged(stub, shim, names.function_error)


def test_log_level_filters_the_context_logger(stub, start_shim, names):
    shim = start_shim(names.handler, env={"AWS_LAMBDA_LOG_LEVEL": "ERROR"})
    rid = stub.enqueue({"action": "log", "text": "quiet"})
    assert stub.wait_answer(rid).kind == "response"
    messages = {r["message"] for r in shim.stdout_records()}
    assert "logger: quiet" not in messages
    assert "stdout: quiet 0" in messages  # console output is not filtered


def test_records_go_to_the_log_socket_when_the_agent_names_one(stub, start_shim, names):
    path, streams, close = listen_for_log_streams()
    try:
        shim = start_shim(names.handler, env={"_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET": path})
        rid = stub.enqueue({"action": "log", "text": "via socket"})
        assert stub.wait_answer(rid).kind == "response"
        streams.wait_for(lambda recs: any(r.get("message") == "stderr: via socket 0" for r in recs))
        recs = streams.records()
        assert streams.connections() == 2  # stdout and stderr
        assert all(r["requestId"] == rid for r in recs if r["message"].endswith("via socket 0"))
        assert not any("via socket" in r["message"] for r in shim.stdout_records())
    finally:
        close()


def test_init_error_is_reported_and_the_process_exits_1(stub, start_shim, names):
    shim = start_shim(names.bad_init)
    err = stub.wait_init_errors()[0].json()
    assert err["errorType"] == names.init_error
    assert err["errorMessage"] == "boom at init"
    assert any(names.init_frame in f for f in err["stackTrace"]), err
    assert shim.proc.wait(30) == 1


def test_next_answering_500_ends_the_process_with_1(stub, start_shim, names):
    shim = start_shim(names.handler, concurrency=2)
    stub.wait_parked(2, timeout=30)
    stub.fail_next(500)
    assert shim.proc.wait(30) == 1


@pytest.mark.parametrize("refusal", [400, 410, 413, "close", "drop"])
def test_a_refused_answer_leaves_every_poller(stub, start_shim, names, tmp_path, refusal):
    """400/410/413 after the body, 413 with the body unread and the connection closed, or the connection
    closed without an answer: logged, and every poller goes on."""
    shim = start_shim(names.handler, concurrency=4)
    gate = tmp_path / "gate"
    gate.mkdir()
    check_refused_answers_leave_every_poller(stub, shim, refusal, workers=4, gate_dir=gate)

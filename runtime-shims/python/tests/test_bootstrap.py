import json
import os
import signal
import time

import pytest
from refusal_checks import check_refused_answers_leave_every_poller
from shim_log_checks import listen_for_log_streams

ERROR_CT = "application/vnd.aws.lambda.error+json"


def eventually(fn, timeout=15):
    """Poll fn() until truthy, for state that has no event to wait on (files, /proc).
    The timeout only bounds a failure."""
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < end, "condition not met within %ss" % timeout
        time.sleep(0.01)


def worker_pids(shim):
    recs = eventually(lambda: [r for r in shim.stderr_records() if "workers" in r])
    return recs[0]["workers"]


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_success_with_context_fields(stub, start_shim):
    start_shim("echo.handler")
    deadline = int(time.time() * 1000) + 30000
    rid = stub.enqueue(
        {"hello": "world", "env_keys": ["TZ"]},
        deadline_ms=deadline,
        headers={
            "Lambda-Runtime-Trace-Id": "Root=1-abc;Parent=def;Sampled=1",
            "Lambda-Runtime-Client-Context": json.dumps({"custom": {"k": "v"}, "client": {}}),
            "Lambda-Runtime-Cognito-Identity": json.dumps({"cognitoIdentityId": "id-1"}),
        },
    )
    ans = stub.wait_answer(rid)
    assert ans.kind == "response", ans
    assert ans.headers["Content-Type"] == "application/json"
    r = ans.json()
    assert r["event"] == {"hello": "world", "env_keys": ["TZ"]}
    assert r["requestId"] == rid
    assert 0 < r["remainingMs"] <= 30000
    assert r["functionName"] == "stub-fn"
    assert r["functionVersion"] == "1"
    assert r["memoryLimitInMB"] == "2048"
    assert r["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:stub-fn:1"
    assert r["logGroupName"] == "/aws/lambda/stub-fn"
    assert r["clientContextCustom"] == {"k": "v"}
    assert r["cognitoIdentityId"] == "id-1"
    env = r["env"]
    assert env["AWS_LAMBDA_MAX_CONCURRENCY"] == "1"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "lambda-managed-instances"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "2048"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["_X_AMZN_TRACE_ID"] == "Root=1-abc;Parent=def;Sampled=1"
    assert env["TZ"] == ":UTC"

    # The next invoke has no trace id: the variable is cleared, not left over.
    rid2 = stub.enqueue({"n": 2})
    r2 = stub.wait_answer(rid2).json()
    assert r2["env"]["_X_AMZN_TRACE_ID"] is None
    assert r2["pid"] == r["pid"]


def test_keep_alive_one_connection_per_worker(stub, start_shim):
    start_shim("echo.handler")
    for i in range(5):
        assert stub.wait_answer(stub.enqueue({"i": i})).kind == "response"
    stub.wait_parked(1)
    assert stub.connections == 1


def test_function_error_then_keeps_serving(stub, start_shim):
    shim = start_shim("errors.handler")
    rid = stub.enqueue({"value": 42})
    ans = stub.wait_answer(rid)
    assert ans.kind == "error"
    assert ans.headers["Lambda-Runtime-Function-Error-Type"] == "ValueError"
    assert ans.headers["Content-Type"] == ERROR_CT
    body = ans.json()
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "bad input: 42"
    assert body["requestId"] == rid
    assert body["stackTrace"] and "errors.py" in body["stackTrace"][0]
    assert "bootstrap.py" not in "".join(body["stackTrace"])
    # The error is also logged as one JSON line with the request id.
    stub.wait_answer(stub.enqueue({"value": 1}))
    assert shim.proc.poll() is None
    logged = [r for r in shim.stdout_records() if r.get("errorType") == "ValueError"]
    assert logged and logged[0]["requestId"] == rid and logged[0]["level"] == "ERROR"


def test_unmarshal_error(stub, start_shim):
    start_shim("echo.handler")
    ans = stub.wait_answer(stub.enqueue(raw=b"{not json"))
    assert ans.kind == "error"
    assert ans.headers["Lambda-Runtime-Function-Error-Type"] == "Runtime.UnmarshalError"
    assert ans.json()["errorType"] == "Runtime.UnmarshalError"


def test_marshal_error_and_special_results(stub, start_shim, tmp_path):
    root = tmp_path / "task"
    root.mkdir()
    (root / "results.py").write_text(
        "import decimal\n"
        "def handler(event, context):\n"
        "    kind = event['kind']\n"
        "    if kind == 'object': return object()\n"
        "    if kind == 'decimal': return {'d': decimal.Decimal('1.5'), 'i': decimal.Decimal('3')}\n"
        "    if kind == 'bytes': return b'raw-bytes'\n"
        "    if kind == 'str': return 'h\u00e9'\n"
    )
    start_shim("results.handler", task_root=str(root))
    ans = stub.wait_answer(stub.enqueue({"kind": "object"}))
    assert ans.kind == "error"
    assert ans.json()["errorType"] == "Runtime.MarshalError"
    assert ans.headers["Lambda-Runtime-Function-Error-Type"] == "Runtime.MarshalError"
    assert stub.wait_answer(stub.enqueue({"kind": "decimal"})).json() == {"d": 1.5, "i": 3}
    ans = stub.wait_answer(stub.enqueue({"kind": "bytes"}))
    assert ans.body == b"raw-bytes"
    assert json.loads(stub.wait_answer(stub.enqueue({"kind": "str"})).body) == "h\u00e9"


@pytest.mark.parametrize("handler,files,error_type,message", [
    ("init_error.handler", {}, "RuntimeError", "boom at init"),
    ("does_not_exist.handler", {}, "Runtime.ImportModuleError",
     "Unable to import module 'does_not_exist'"),
    ("echo.nope", {}, "Runtime.HandlerNotFound", "Handler 'nope' missing on module 'echo'"),
    ("nodot", {}, "Runtime.MalformedHandlerName", "Bad handler 'nodot'"),
    ("broken.handler", {"broken.py": "def handler(:\n"}, "Runtime.UserCodeSyntaxError",
     "Syntax error in module 'broken'"),
    ("pkg.mod.handler", {"pkg/__init__.py": "", "pkg/mod.py": "import missing_dep_xyz\n"},
     "Runtime.ImportModuleError", "No module named 'missing_dep_xyz'"),
])
def test_init_errors(stub, start_shim, tmp_path, handler, files, error_type, message):
    from conftest import FIXTURES
    root = FIXTURES
    if files:
        root = tmp_path / "task"
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        root = str(root)
    shim = start_shim(handler, concurrency=2, task_root=root)
    errs = stub.wait_init_errors(1)
    assert shim.wait() != 0
    first = errs[0]
    assert first.headers["Lambda-Runtime-Function-Error-Type"] == error_type
    assert first.headers["Content-Type"] == ERROR_CT
    body = first.json()
    assert body["errorType"] == error_type
    assert message in body["errorMessage"]
    assert isinstance(body["stackTrace"], list)
    assert stub.dispatched == set()


def test_init_error_stack_trace_points_at_user_code(stub, start_shim):
    start_shim("init_error.handler")
    body = stub.wait_init_errors(1)[0].json()
    assert any("init_error.py" in line for line in body["stackTrace"])
    assert not any("bootstrap.py" in line for line in body["stackTrace"])


def test_concurrency_four_workers_poll_and_overlap(stub, start_shim, tmp_path):
    shim = start_shim("sleeper.handler", concurrency=4)
    stub.wait_parked(4)
    d = tmp_path / "seen"
    d.mkdir()
    # wait_for=4: each handler holds until all 4 files exist (sleep_ms only bounds a failure).
    rids = [stub.enqueue({"dir": str(d), "wait_for": 4, "sleep_ms": 20000}) for _ in range(4)]
    results = [stub.wait_answer(r, timeout=30) for r in rids]
    assert all(a.kind == "response" for a in results), results
    bodies = [a.json() for a in results]
    for b in bodies:
        assert b["seen"] == sorted(rids)
    assert len({b["pid"] for b in bodies}) == 4
    assert shim.proc.pid not in {b["pid"] for b in bodies}


def test_worker_exit_code_propagates_and_others_die(stub, start_shim):
    shim = start_shim("crash.handler", concurrency=3)
    stub.wait_parked(3)
    pids = worker_pids(shim)
    assert len(pids) == 3
    stub.enqueue({"code": 3})
    assert shim.wait() == 3
    assert not any(alive(p) for p in pids)  # the main process killed and reaped the others


def test_worker_killed_by_signal_gives_128_plus_signal(stub, start_shim):
    shim = start_shim("crash.handler", concurrency=2)
    stub.wait_parked(2)
    stub.enqueue({"signal": 9})
    assert shim.wait() == 128 + 9
    err = shim.stderr_records()
    assert any(r.get("exitCode") == 137 for r in err)


def test_oom_like_kill_from_outside(stub, start_shim, tmp_path):
    shim = start_shim("sleeper.handler", concurrency=2)
    stub.wait_parked(2)
    d = tmp_path / "d"
    d.mkdir()
    stub.enqueue({"dir": str(d), "wait_for": 99, "sleep_ms": 20000})
    victim = int(eventually(lambda: os.listdir(d) and (d / os.listdir(d)[0]).read_text()))
    os.kill(victim, signal.SIGKILL)  # what the OOM killer does
    assert shim.wait() == 137


def test_main_killed_takes_workers_down(stub, start_shim):
    shim = start_shim("crash.handler", concurrency=2)
    stub.wait_parked(2)
    pids = worker_pids(shim)
    stub.enqueue({"kill_main": True})
    assert shim.wait() == -signal.SIGKILL
    eventually(lambda: not any(alive(p) for p in pids))  # workers die with the main process


def test_sigterm_exits_zero(stub, start_shim):
    shim = start_shim("echo.handler", concurrency=3)
    stub.wait_parked(3)
    pids = worker_pids(shim)
    shim.proc.send_signal(signal.SIGTERM)
    assert shim.wait() == 0
    assert not any(alive(p) for p in pids)


def test_next_500_means_exit(stub, start_shim):
    shim = start_shim("echo.handler", concurrency=2)
    stub.wait_parked(2)
    stub.fail_next(500)
    assert shim.wait() != 0


def test_410_on_response_is_logged_and_ignored(stub, start_shim):
    shim = start_shim("echo.handler")
    stub.response_status["late"] = 410
    stub.wait_answer(stub.enqueue({"n": 1}, request_id="late"))
    assert stub.wait_answer(stub.enqueue({"n": 2})).kind == "response"
    assert shim.proc.poll() is None
    assert any("410" in r["message"] for r in shim.stderr_records())


def test_logs_are_json_lines_with_request_id(stub, start_shim):
    shim = start_shim("logs.handler")
    rid = stub.enqueue({"n": 7})
    assert stub.wait_answer(rid).kind == "response"
    raw = shim.raw_stdout()
    recs = shim.stdout_records()  # every line parses as JSON
    assert len(recs) == len([l for l in raw.splitlines() if l.strip()])
    by_msg = {r["message"]: r for r in recs}
    assert "requestId" not in by_msg["init line"]
    for msg in ("hello from print", "two", "lines", "info message 7", "root warning", "caught"):
        assert by_msg[msg]["requestId"] == rid, msg
        assert by_msg[msg]["timestamp"].endswith("Z")
    assert "debug message" not in by_msg  # default level INFO
    assert by_msg["info message 7"]["level"] == "INFO"
    assert by_msg["info message 7"]["logger"] == "fixture.logs"
    assert by_msg["root warning"]["level"] == "WARN"
    assert by_msg["root warning"]["logger"] == "root"
    assert by_msg["caught"]["errorType"] == "KeyError"
    for r in shim.stderr_records():  # the shim's own diagnostics are JSON too
        assert r["logger"] == "lmi-runtime"


def test_log_level_from_env(stub, start_shim):
    shim = start_shim("logs.handler", env={"AWS_LAMBDA_LOG_LEVEL": "DEBUG"})
    rid = stub.enqueue({"n": 1})
    stub.wait_answer(rid)
    assert any(r["message"] == "debug message" and r["requestId"] == rid
               for r in shim.stdout_records())
    shim.proc.send_signal(signal.SIGTERM)  # one shim per stub at a time
    assert shim.wait() == 0
    shim2 = start_shim("logs.handler", env={"AWS_LAMBDA_LOG_LEVEL": "ERROR"})
    rid2 = stub.enqueue({"n": 2})
    stub.wait_answer(rid2)
    msgs = {r["message"] for r in shim2.stdout_records()}
    assert "info message 2" not in msgs and "root warning" not in msgs
    assert "caught" in msgs and "hello from print" in msgs


def test_workers_log_to_telemetry_socket(stub, start_shim, tmp_path):
    """With _LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET each worker connects twice (stdout, stderr)."""
    path, streams, close = listen_for_log_streams()
    try:
        shim = start_shim("logs.handler", concurrency=2,
                          env={"_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET": path})
        stub.wait_parked(2)
        rid = stub.enqueue({"n": 3})
        assert stub.wait_answer(rid).kind == "response"
        streams.wait_connections(4, 15)
        assert streams.connections() == 4
        streams.wait_for(lambda recs: any(r.get("message") == "hello from print" and r.get("requestId") == rid
                                          for r in recs), 15)
        assert shim.stdout_records() == []  # worker output went to the socket, not the pipe
    finally:
        close()


@pytest.mark.parametrize("refusal", [400, 410, 413, "close", "drop"])
def test_a_refused_answer_leaves_every_worker_polling(stub, start_shim, tmp_path, refusal):
    """400/410/413 after the body, 413 with the body unread and the connection closed, or the connection
    closed without an answer: the worker logs it and goes on polling; no worker is lost."""
    shim = start_shim("actions.handler", concurrency=4)
    pids = worker_pids(shim)
    gate = tmp_path / "gate"
    gate.mkdir()
    check_refused_answers_leave_every_poller(stub, shim, refusal, workers=4, gate_dir=gate)
    assert all(alive(p) for p in pids)

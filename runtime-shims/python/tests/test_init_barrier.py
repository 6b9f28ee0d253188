"""The init barrier: no worker polls before every worker has finished its init.

The handler module of these tests claims a slot per worker at import (slot 0 is the first worker to import)
and writes a marker file named after its pid as the last thing its import does. What slot 0 and the others do
before that marker is chosen per test through INIT_TEST_MODE.
"""
import os
import signal
import threading

from test_bootstrap import alive, eventually, worker_pids

WORKERS = 4

MODULE = '''
import os
import time

_dir = os.environ["INIT_TEST_DIR"]
_mode = os.environ["INIT_TEST_MODE"]
_others = int(os.environ["AWS_LAMBDA_MAX_CONCURRENCY"]) - 1


def _claim():
    for slot in range(64):
        try:
            os.close(os.open(os.path.join(_dir, "slot-%d" % slot), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return slot
        except FileExistsError:
            pass
    raise RuntimeError("no slot left")


def _done():
    return [n for n in os.listdir(_dir) if n.startswith("done-")]


slot = _claim()
if _mode == "slow_others" and slot != 0:
    time.sleep(1.5)  # slot 0 finishes its init well before the other workers
elif _mode == "fail_first" and slot == 0:
    end = time.monotonic() + 30  # only bounds a failure
    while len(_done()) < _others and time.monotonic() < end:
        time.sleep(0.01)  # raise once every other worker is waiting at the barrier
    raise RuntimeError("slot 0 fails its init")
elif _mode == "hang_first" and slot == 0:
    time.sleep(600)  # never finishes its init
open(os.path.join(_dir, "done-%d" % os.getpid()), "w").close()


def handler(event, context):
    return {"pid": os.getpid(), "slot": slot}
'''


def done_markers(d):
    return {n for n in os.listdir(d) if n.startswith("done-")}


def start(stub, start_shim, tmp_path, mode):
    """Starts the shim with WORKERS workers on the barrier module; returns (shim, markers dir, nexts), where
    nexts lists, for every GET /next the stub received, the init markers that existed when it arrived."""
    root, d = tmp_path / "task", tmp_path / "init"
    root.mkdir()
    d.mkdir()
    (root / "barrier.py").write_text(MODULE)
    nexts, lock = [], threading.Lock()
    plain_next = stub._next

    def recording_next(sock):
        with lock:
            nexts.append(done_markers(d))
        return plain_next(sock)

    stub._next = recording_next  # the stub's request handler looks it up on the instance
    shim = start_shim("barrier.handler", concurrency=WORKERS, task_root=str(root),
                      env={"INIT_TEST_DIR": str(d), "INIT_TEST_MODE": mode})
    return shim, d, nexts


def test_no_worker_polls_before_every_worker_finished_init(stub, start_shim, tmp_path):
    shim, d, nexts = start(stub, start_shim, tmp_path, "slow_others")
    stub.wait_parked(WORKERS)
    pids = worker_pids(shim)
    assert done_markers(d) == {"done-%d" % p for p in pids}
    # Every /next, the fast worker's first one included, arrived after all four imports had ended.
    assert len(nexts) == WORKERS
    assert all(len(seen) == WORKERS for seen in nexts), nexts
    assert any(r["message"] == "%d worker(s) finished init; polling" % WORKERS for r in shim.stderr_records())
    # Released, the workers serve.
    answers = [stub.wait_answer(stub.enqueue({"n": i})) for i in range(WORKERS)]
    assert all(a.kind == "response" and a.json()["pid"] in pids for a in answers), answers


def test_init_error_while_others_wait_at_the_barrier(stub, start_shim, tmp_path):
    shim, d, nexts = start(stub, start_shim, tmp_path, "fail_first")
    errs = stub.wait_init_errors(1)
    assert errs[0].json()["errorType"] == "RuntimeError"
    assert "slot 0 fails its init" in errs[0].json()["errorMessage"]
    assert shim.wait() == 1  # the failed worker's exit code; the timeout only bounds a hang
    assert len(done_markers(d)) == WORKERS - 1  # the others had finished init and were held
    assert nexts == [] and stub.dispatched == set()
    pids = worker_pids(shim)
    assert not any(alive(p) for p in pids)  # killed and reaped by the main process
    assert any(r.get("exitCode") == 1 for r in shim.stderr_records())


def test_sigterm_while_workers_wait_at_the_barrier(stub, start_shim, tmp_path):
    shim, d, nexts = start(stub, start_shim, tmp_path, "hang_first")
    pids = worker_pids(shim)
    eventually(lambda: len(done_markers(d)) == WORKERS - 1)  # three held at the barrier, one in init
    shim.proc.send_signal(signal.SIGTERM)
    assert shim.wait() == 0  # as a SIGTERM after init; the timeout only bounds a hang
    assert not any(alive(p) for p in pids)
    assert nexts == []

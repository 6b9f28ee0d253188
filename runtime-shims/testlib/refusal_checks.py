"""A check shared by the shims' tests: a refused or undeliverable answer costs no poller.

The fixtures of every shim have the "echo" (returns the event), "raise" and "gate" actions.
"""
import uuid

# Big enough that an answer cannot sit in the socket buffers: a stub that closes at once makes the writer
# see EPIPE/ECONNRESET, as a server that refuses before reading the body did.
PAD_BYTES = 8 * 1024 * 1024


def check_refused_answers_leave_every_poller(stub, shim, refusal, workers, gate_dir, timeout=60):
    """`refusal` (see StubRuntimeApi.refuse) hits three big answers and one error; afterwards the runtime
    still runs, logged the refusal, and serves `workers` invokes that each wait until all have started: only
    possible if no worker (poller) was lost."""
    stub.wait_parked(workers, timeout=timeout)
    rids = ["refused-%d-%s" % (i, uuid.uuid4()) for i in range(4)]
    with stub.cond:
        for rid in rids:
            stub.refuse[rid] = refusal
    pad = "x" * PAD_BYTES
    for rid in rids[:3]:
        stub.enqueue({"action": "echo", "pad": pad}, request_id=rid)
    stub.enqueue({"action": "raise", "message": "refused too"}, request_id=rids[3])
    stub.wait_for(lambda: all(stub.refused.get(r, 0) >= 1 for r in rids), timeout=timeout)

    gates = [stub.enqueue({"action": "gate", "dir": str(gate_dir), "count": workers, "max_s": timeout})
             for _ in range(workers)]
    for g in gates:
        answer = stub.wait_answer(g, timeout=timeout)
        assert answer.kind == "response", answer
        assert sorted(answer.json()["seen"]) == sorted(gates), answer
    assert shim.proc.poll() is None, "the runtime exited"
    warned = [r for r in shim.stderr_records() + shim.stdout_records()
              if r.get("level") == "WARN" and ("answered" in str(r.get("message"))
                                               or "not delivered" in str(r.get("message")))]
    assert warned, "the refusal was not logged"

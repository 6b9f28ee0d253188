"""Checks shared by the shims' tests: the Java and .NET fixtures have the same "log" and "raise" actions; every
shim can be given a log socket (listen_for_log_streams)."""
import json
import os
import socket
import tempfile
import threading


def check_concurrent_logs(stub, shim, invokes, lines):
    """`invokes` concurrent invokes each write `lines` lines: every record is whole and carries its own id."""
    rids = {stub.enqueue({"action": "log", "text": "t%d" % i, "lines": lines}): "t%d" % i for i in range(invokes)}
    for rid in rids:
        assert stub.wait_answer(rid, timeout=60).kind == "response"
    out, err = shim.stdout_records(), shim.stderr_records()
    for rid, text in rids.items():
        mine_out = [r for r in out if r.get("requestId") == rid]
        got = sorted(r["message"] for r in mine_out if r["message"].startswith("stdout: "))
        assert got == sorted("stdout: %s %d" % (text, i) for i in range(lines))
        assert all(r["level"] == "INFO" and r["timestamp"].endswith("Z") for r in mine_out)
        assert [r["message"] for r in mine_out if r["message"].startswith("logger: ")] == ["logger: " + text]
        assert [r["message"] for r in mine_out if r["message"].startswith("partial: ")] == ["partial: " + text]
        mine_err = [r for r in err if r.get("requestId") == rid]
        assert sorted(r["message"] for r in mine_err) == sorted("stderr: %s %d" % (text, i) for i in range(lines))
        assert all(r["level"] == "ERROR" for r in mine_err)
    # Nothing was attributed to the wrong invoke or lost its id.
    for r in out + err:
        if r["message"].startswith(("stdout: t", "stderr: t")):
            assert rids[r["requestId"]] == r["message"].split(" ")[1]


def check_error_is_logged(stub, shim, error_type):
    rid = stub.enqueue({"action": "raise", "message": "logged failure"})
    answer = stub.wait_answer(rid, timeout=60)
    assert answer.kind == "error"
    assert answer.headers.get("Lambda-Runtime-Function-Error-Type") == error_type
    body = answer.json()
    assert body["errorType"] == error_type and body["errorMessage"] == "logged failure"
    logged = [r for r in shim.stdout_records() if r.get("errorType") == error_type]
    assert len(logged) == 1 and logged[0]["requestId"] == rid and logged[0]["level"] == "ERROR"
    assert logged[0]["stackTrace"] == body["stackTrace"]


class Streams:
    """What a log socket received: one buffer a connection, read as JSON lines (a line not yet ended waits)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.buffers = []

    def _records(self):
        return [json.loads(line) for b in self.buffers for line in b.split(b"\n")[:-1] if line.strip()]

    def records(self):
        with self.cond:
            return self._records()

    def connections(self):
        with self.cond:
            return len(self.buffers)

    def wait_for(self, predicate, timeout=30):
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self._records()), timeout)
        assert ok, "log socket: expected records did not arrive"

    def wait_connections(self, count, timeout=30):
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.buffers) >= count, timeout)
        assert ok, "log socket: %d connection(s) expected, %d made" % (count, len(self.buffers))


def listen_for_log_streams():
    """A Unix socket like the agent's log socket: returns (path, Streams, close)."""
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "logs.sock")  # short: sun_path limit
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    streams = Streams()
    conns = []

    def read(conn, index):
        while True:
            data = conn.recv(65536)
            if not data:
                return
            with streams.cond:
                streams.buffers[index] += data
                streams.cond.notify_all()

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conns.append(conn)
            with streams.cond:
                streams.buffers.append(b"")
                index = len(streams.buffers) - 1
                streams.cond.notify_all()
            threading.Thread(target=read, args=(conn, index), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def close():
        srv.close()
        for c in conns:
            c.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))

    return path, streams, close

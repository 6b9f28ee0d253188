"""A tiny Lambda Runtime API (2018-06-01) stub for testing bootstrap.py.

Listens on 127.0.0.1 only. Events are queued with enqueue(); parked /next calls are counted; answers
(/response, /error, /init/error) are recorded. Every wait_* method blocks on a Condition with a
timeout that only bounds failure.
"""

import json
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01"


class Answer:
    def __init__(self, kind, body, headers):
        self.kind, self.body, self.headers = kind, body, headers

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Answer(%s, %r)" % (self.kind, self.body[:500])


class StubRuntimeApi:
    def __init__(self):
        self.cond = threading.Condition()
        self.events = []              # [(request_id, body, headers)]
        self.parked = 0               # /next calls currently waiting
        self.max_parked = 0
        self.dispatched = set()
        self.answers = {}             # request_id -> Answer
        self.init_errors = []         # [Answer]
        self.connections = 0
        self.next_status = None       # e.g. 500: answer every /next with it
        self.response_status = {}     # request_id -> forced status for its /response
        # request_id -> how every answer posted for it is refused:
        #   400 / 410 / 413: the body is read, the status sent, the connection kept (the agent's way);
        #   "close": 413 and Connection: close at once, the body left unread (the runtime may see EPIPE);
        #   "drop": the connection is closed without any answer.
        self.refuse = {}
        self.refused = {}             # request_id -> answers refused so far
        self.closing = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with stub.cond:
                    stub.connections += 1
                    stub.cond.notify_all()

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != PREFIX + "/runtime/invocation/next":
                    return self._send(404)
                status, event = stub._next(self.connection)
                if status is None:
                    self.close_connection = True  # the poller is gone; its event stays queued
                    return
                if status != 200:
                    return self._send(status, b'{"errorMessage":"stub","errorType":"Stub"}')
                rid, body, headers = event
                self._send(200, body, headers)

            def do_POST(self):
                how = stub._refusal(self.path[len(PREFIX):])
                if how in ("close", "drop"):
                    self.close_connection = True
                    if how == "close":
                        self.send_response(413)
                        self.send_header("Connection", "close")
                        self.send_header("Content-Length", "2")
                        self.end_headers()
                        self.wfile.write(b"{}")
                        self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if how is not None:
                    return self._send(how, b'{"errorMessage":"refused","errorType":"Stub"}')
                status = stub._post(self.path[len(PREFIX):], body, dict(self.headers))
                self._send(status, b'{"status":"OK"}' if status == 202 else b"{}")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # runtimes that are killed mid-request are expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    # -- server side ----------------------------------------------------------------------------
    @staticmethod
    def _peer_closed(sock):
        if not select.select([sock], [], [], 0)[0]:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _next(self, sock):
        with self.cond:
            self.parked += 1
            self.max_parked = max(self.max_parked, self.parked)
            self.cond.notify_all()
            try:
                while not self.events and not self.closing and self.next_status is None:
                    self.cond.wait()
                if self.closing or self.next_status is not None:
                    return self.next_status or 500, None
                if self._peer_closed(sock):  # a killed runtime must not swallow an event
                    return None, None
                event = self.events.pop(0)
                self.dispatched.add(event[0])
                return 200, event
            finally:
                self.parked -= 1
                self.cond.notify_all()

    def _refusal(self, path):
        """How an answer posted to path is refused (counted), or None."""
        parts = path.split("/")
        if len(parts) != 5 or parts[4] not in ("response", "error"):
            return None
        with self.cond:
            how = self.refuse.get(parts[3])
            if how is not None:
                self.refused[parts[3]] = self.refused.get(parts[3], 0) + 1
                self.cond.notify_all()
            return how

    def _post(self, path, body, headers):
        with self.cond:
            try:
                if path == "/runtime/init/error":
                    self.init_errors.append(Answer("init_error", body, headers))
                    return 202 if len(self.init_errors) == 1 else 403
                parts = path.split("/")  # ['', 'runtime', 'invocation', id, kind]
                if len(parts) != 5 or parts[4] not in ("response", "error"):
                    return 404
                rid, kind = parts[3], parts[4]
                if rid not in self.dispatched or rid in self.answers:
                    return 400
                self.answers[rid] = Answer(kind, body, headers)
                return self.response_status.get(rid, 202)
            finally:
                self.cond.notify_all()

    # -- test side ------------------------------------------------------------------------------
    def enqueue(self, event=None, raw=None, request_id=None, headers=None, deadline_ms=None):
        rid = request_id or str(uuid.uuid4())
        body = raw if raw is not None else json.dumps(event).encode()
        deadline = deadline_ms if deadline_ms is not None else int(time.time() * 1000) + 60000
        h = {
            "Lambda-Runtime-Aws-Request-Id": rid,
            "Lambda-Runtime-Deadline-Ms": str(deadline),
            "Lambda-Runtime-Invoked-Function-Arn":
                "arn:aws:lambda:us-east-1:123456789012:function:stub-fn:1",
            "Content-Type": "application/json",
        }
        h.update(headers or {})
        with self.cond:
            self.events.append((rid, body, h))
            self.cond.notify_all()
        return rid

    def wait_for(self, predicate, timeout=15):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError("stub: condition not met within %ss" % timeout)

    def wait_answer(self, rid, timeout=15):
        self.wait_for(lambda: rid in self.answers, timeout)
        return self.answers[rid]

    def wait_parked(self, n, timeout=15):
        self.wait_for(lambda: self.parked >= n, timeout)

    def wait_init_errors(self, n=1, timeout=15):
        self.wait_for(lambda: len(self.init_errors) >= n, timeout)
        return self.init_errors

    def fail_next(self, status=500):
        with self.cond:
            self.next_status = status
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

#!/usr/bin/env python3
"""Python runtime shim for lmi-agent (Lambda Runtime API 2018-06-01, LMI concurrency model).

The main process forks AWS_LAMBDA_MAX_CONCURRENCY worker processes. Each worker imports the
handler itself (its own init) and runs a synchronous loop: GET /runtime/invocation/next ->
handler(event, context) -> POST .../response or .../error. If any worker exits, the main process
kills the others and exits non-zero (128+signal when the worker died from a signal).

No worker sends its first GET /next before every worker has finished its init (an init barrier: each
worker tells the main process over a pipe, and the main process releases them all at once). The agent
declares the environment READY at the first /next, so READY means every worker has imported the handler
and an invoke never lands next to another worker's init. A worker whose init fails reports it at once.
Standard library only; Python 3.9+.
"""

import decimal
import http.client
import importlib
import io
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse

API_PREFIX = "/2018-06-01"
ERROR_CONTENT_TYPE = "application/vnd.aws.lambda.error+json"
MAX_ERROR_BODY = 1024 * 1024

_request_id = None  # id of the invoke this worker is running, for log lines
_write_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# JSON log lines
# ---------------------------------------------------------------------------------------------

def _timestamp(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def _emit(fd, record):
    """Write one JSON object as one line to fd (a single os.write when possible)."""
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8", "replace")
    with _write_lock:
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            pass  # nobody is reading our logs any more; never fail an invoke for it


def _record(level, message, logger=None, request_id=None, t=None):
    rec = {"timestamp": _timestamp(t), "level": level, "message": message}
    if logger:
        rec["logger"] = logger
    if request_id:
        rec["requestId"] = request_id
    return rec


def diag(level, message, **fields):
    """The shim's own diagnostics: JSON lines on stderr."""
    rec = _record(level, message, "lmi-runtime", _request_id)
    rec.update(fields)
    _emit(2, rec)


_LEVEL_NAMES = {logging.CRITICAL: "FATAL", logging.WARNING: "WARN"}
_ENV_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
               "WARN": logging.WARNING, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
               "FATAL": logging.CRITICAL, "CRITICAL": logging.CRITICAL}


class JsonLogHandler(logging.Handler):
    """Root logger handler: one JSON object per record on stdout."""

    def emit(self, record):
        try:
            rec = _record(_LEVEL_NAMES.get(record.levelno, record.levelname), record.getMessage(),
                          record.name, _request_id, record.created)
            if record.exc_info and record.exc_info[0] is not None:
                etype, value, tb = record.exc_info
                rec.update(errorType=etype.__name__, errorMessage=str(value),
                           stackTrace=traceback.format_list(traceback.extract_tb(tb)))
            _emit(1, rec)
        except Exception:
            self.handleError(record)


class JsonLineStream(io.TextIOBase):
    """Replacement for sys.stdout/sys.stderr: every complete line becomes one JSON log line."""

    MAX_PENDING = 256 * 1024

    def __init__(self, fd, level):
        super().__init__()
        self._fd, self._level, self._pending, self._lock = fd, level, "", threading.RLock()

    encoding = "utf-8"
    errors = "strict"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        with self._lock:
            self._pending += s
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                _emit(self._fd, _record(self._level, line, request_id=_request_id))
            if len(self._pending) > self.MAX_PENDING:
                self.drain()
        return len(s)

    def flush(self):
        pass  # partial lines wait for their newline (or the end of the invoke)

    def drain(self):
        with self._lock:
            if self._pending:
                line, self._pending = self._pending, ""
                _emit(self._fd, _record(self._level, line, request_id=_request_id))


def setup_logging():
    sys.stdout = JsonLineStream(1, "INFO")
    sys.stderr = JsonLineStream(2, "ERROR")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(JsonLogHandler())
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").strip().upper()
    root.setLevel(_ENV_LEVELS.get(level, logging.INFO))


def drain_streams():
    for s in (sys.stdout, sys.stderr):
        if isinstance(s, JsonLineStream):
            s.drain()


def connect_log_socket():
    """LMI: stdout and stderr of each worker are two connections to the agent's log socket."""
    path = os.environ.get("_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET")
    if not path:
        return
    try:
        for fd in (1, 2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                os.dup2(s.fileno(), fd)
    except OSError as e:
        diag("WARN", "cannot connect to log socket %s: %s" % (path, e))


# ---------------------------------------------------------------------------------------------
# Runtime API client
# ---------------------------------------------------------------------------------------------

class RuntimeApiError(Exception):
    pass


class RuntimeClient:
    """One persistent keep-alive connection per worker; reconnects on connection errors."""

    def __init__(self, address):
        self.address = address
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None):
        last = None
        for attempt in range(4):
            if attempt:
                time.sleep(0.05 * (2 ** attempt))  # back-off before reconnecting
            try:
                if self.conn is None:
                    # timeout=None: block forever (the /next read long-polls), whatever
                    # socket.setdefaulttimeout() user code may have called.
                    self.conn = http.client.HTTPConnection(self.address, timeout=None)
                    self.conn.connect()
                    self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    self.conn.request(method, API_PREFIX + path, body=body, headers=headers or {})
                except OSError:
                    # The server may have answered (a refusal) and closed while the body was still
                    # being written: its status can still be waiting in the socket.
                    salvaged = self._salvage()
                    if salvaged is None:
                        raise
                    self.close()
                    return salvaged
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, resp.headers, data
            except (OSError, http.client.HTTPException) as e:
                last = e
                self.close()
        raise RuntimeApiError("%s %s failed: %s" % (method, path, last))

    def _salvage(self):
        """The response to a request whose sending failed, if the server sent one before closing."""
        try:
            self.conn.sock.settimeout(5)
            resp = self.conn.getresponse()
            return resp.status, resp.headers, resp.read()
        except Exception:
            return None

    def post_error(self, path, error):
        body = json.dumps(error, ensure_ascii=False, default=str).encode("utf-8", "replace")
        if len(body) > MAX_ERROR_BODY:
            error = dict(error, errorMessage=error["errorMessage"][:65536], stackTrace=[])
            body = json.dumps(error, ensure_ascii=False, default=str).encode("utf-8", "replace")
        error_type = str(error["errorType"]).encode("ascii", "replace").decode("ascii")
        return self.request("POST", path, body, {
            "Content-Type": ERROR_CONTENT_TYPE,
            "Lambda-Runtime-Function-Error-Type": error_type,
        })[0]


# ---------------------------------------------------------------------------------------------
# Handler loading, context, marshalling
# ---------------------------------------------------------------------------------------------

class Fault(Exception):
    """An error the runtime reports with a Runtime.* type."""

    def __init__(self, error_type, message, stack_trace=None):
        super().__init__(message)
        self.error_type, self.message, self.stack_trace = error_type, message, stack_trace or []


def make_error(message, error_type, stack_trace, request_id=None):
    err = {"errorMessage": message or "", "errorType": error_type or "", "stackTrace": stack_trace or []}
    if request_id:
        err["requestId"] = request_id
    return err


def error_from_exception(exc_info, request_id=None):
    etype, value, tb = exc_info
    if isinstance(value, Fault):
        return make_error(value.message, value.error_type, value.stack_trace, request_id)
    frames = traceback.extract_tb(tb)
    hidden = (os.path.abspath(__file__), os.path.abspath(importlib.__file__))
    while frames and (os.path.abspath(frames[0].filename) in hidden
                      or frames[0].filename.startswith("<frozen importlib")):
        frames = frames[1:]  # hide the shim's (and the import machinery's) frames, as AWS does
    return make_error(str(value), etype.__name__, traceback.format_list(frames), request_id)


def load_handler(spec):
    try:
        modname, fname = spec.rsplit(".", 1)
    except ValueError as e:
        raise Fault("Runtime.MalformedHandlerName", "Bad handler '%s': %s" % (spec, e))
    modname = modname.replace("/", ".")
    if modname.split(".")[0] in sys.builtin_module_names:
        raise Fault("Runtime.BuiltInModuleConflict",
                    "Cannot use built-in module %s as a handler module" % modname)
    try:
        module = importlib.import_module(modname)
    except ImportError as e:
        raise Fault("Runtime.ImportModuleError", "Unable to import module '%s': %s" % (modname, e))
    except SyntaxError as e:
        raise Fault("Runtime.UserCodeSyntaxError", "Syntax error in module '%s': %s" % (modname, e),
                    ['  File "%s" Line %s\n    %s' % (e.filename, e.lineno, (e.text or "").strip())])
    try:
        return getattr(module, fname)
    except AttributeError:
        raise Fault("Runtime.HandlerNotFound", "Handler '%s' missing on module '%s'" % (fname, modname))


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, d=None):
        d = d or {}
        self.cognito_identity_id = d.get("cognitoIdentityId")
        self.cognito_identity_pool_id = d.get("cognitoIdentityPoolId")


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code",
                 "app_package_name")

    def __init__(self, d):
        for k in self.__slots__:
            setattr(self, k, d.get(k))


class ClientContext:
    __slots__ = ("custom", "env", "client")

    def __init__(self, d):
        self.custom, self.env = d.get("custom"), d.get("env")
        self.client = Client(d["client"]) if isinstance(d.get("client"), dict) else None


def _json_header(value, name):
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise Fault("Runtime.LambdaContextUnmarshalError", "Unable to parse %s JSON: %s" % (name, e))
    if not isinstance(parsed, dict):
        raise Fault("Runtime.LambdaContextUnmarshalError", "%s JSON is not an object" % name)
    return parsed


class LambdaContext:
    def __init__(self, request_id, headers):
        env = os.environ
        self.aws_request_id = request_id
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn")
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.tenant_id = headers.get("Lambda-Runtime-Aws-Tenant-Id")
        cc = _json_header(headers.get("Lambda-Runtime-Client-Context"), "Client Context")
        self.client_context = ClientContext(cc) if cc is not None else None
        self.identity = CognitoIdentity(
            _json_header(headers.get("Lambda-Runtime-Cognito-Identity"), "Cognito Identity"))
        try:
            self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
        except ValueError:
            self._deadline_ms = 0

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return "LambdaContext(aws_request_id=%r, function_name=%r, invoked_function_arn=%r)" % (
            self.aws_request_id, self.function_name, self.invoked_function_arn)


def _json_default(obj):
    if isinstance(obj, decimal.Decimal):
        return int(obj) if obj == obj.to_integral_value() and obj.is_finite() else float(obj)
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


def unmarshal_event(body, content_type):
    if content_type and content_type.split(";")[0].strip().lower() != "application/json":
        return body  # non-JSON payloads are passed through as bytes, like awslambdaric
    try:
        return json.loads(body)
    except ValueError as e:
        raise Fault("Runtime.UnmarshalError", "Unable to unmarshal input: %s" % e)


def marshal_result(result):
    if isinstance(result, bytes):
        return result, "application/unknown"
    try:
        return json.dumps(result, default=_json_default, ensure_ascii=False).encode("utf-8"), \
            "application/json"
    except Exception as e:
        raise Fault("Runtime.MarshalError", "Unable to marshal response: %s" % e)


# ---------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------

def log_error(error):
    _emit(1, dict(_record("ERROR", error["errorMessage"], request_id=_request_id), **error))


def check_post(path, status):
    if status == 202:
        return
    if status >= 500:
        raise RuntimeApiError("POST %s answered %d" % (path, status))
    # 400 (unknown id / answered twice), 410 (already timed out), 413 (too large), 403: the invoke is
    # over; the worker goes on polling.
    diag("WARN", "POST %s answered %d" % (path, status), status=status)


def handle_invoke(client, handler, headers, body):
    global _request_id
    request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
    if not request_id:
        diag("ERROR", "invoke without Lambda-Runtime-Aws-Request-Id header; dropped")
        return
    trace_id = headers.get("Lambda-Runtime-Trace-Id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    _request_id = request_id
    base = "/runtime/invocation/%s" % urllib.parse.quote(request_id, safe="")
    try:
        try:
            context = LambdaContext(request_id, headers)
            event = unmarshal_event(body, headers.get("Content-Type"))
            payload, content_type = marshal_result(handler(event, context))
            error = None
        except Exception:
            error = error_from_exception(sys.exc_info(), request_id)
        drain_streams()
        try:
            if error is None:
                path = base + "/response"
                status = client.request("POST", path, payload, {"Content-Type": content_type})[0]
            else:
                log_error(error)
                path = base + "/error"
                status = client.post_error(path, error)
        except RuntimeApiError as e:
            # The answer could not be delivered (the connection broke while it was posted): the invoke
            # is the Runtime API's to end; this worker goes on polling. If the Runtime API itself is
            # gone, the next /next says so.
            diag("WARN", "answer not delivered: %s" % e)
            return
        check_post(path, status)
    finally:
        drain_streams()
        _request_id = None


def pass_init_barrier(ready_w, go_r):
    """Tells the main process this worker's init is done, then blocks until every worker's is.

    Returns False when the main process is gone instead (it died, so nobody released the barrier)."""
    os.write(ready_w, b".")
    os.close(ready_w)
    os.read(go_r, 1)  # end of file: the main process closed its end, the release
    os.close(go_r)
    return os.getppid() == _main_pid


def worker_main(ready_w, go_r):
    """Runs in a forked worker; returns its exit code."""
    connect_log_socket()
    setup_logging()
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except Exception:
        error = error_from_exception(sys.exc_info())
        log_error(error)
        try:
            status = client.post_error("/runtime/init/error", error)
            if status not in (202, 403):  # 403: another worker reported first
                diag("WARN", "POST /runtime/init/error answered %d" % status, status=status)
        except RuntimeApiError as e:
            diag("ERROR", str(e))
        return 1
    if not pass_init_barrier(ready_w, go_r):
        return 1
    try:
        while True:
            status, headers, body = client.request("GET", "/runtime/invocation/next")
            if status != 200:
                diag("INFO" if status == 500 else "ERROR",
                     "GET /runtime/invocation/next answered %d; exiting" % status, status=status)
                return 1
            handle_invoke(client, handler, headers, body)
    except RuntimeApiError as e:
        diag("ERROR", "runtime API unavailable: %s" % e)
        return 1


def run_worker(ready_w, go_r):
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        _die_with_parent()
        code = worker_main(ready_w, go_r)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        diag("ERROR", "worker failed", stackTrace=traceback.format_exc().splitlines())
    finally:
        drain_streams()
        os._exit(code)


def _die_with_parent():
    """Linux: have the kernel SIGKILL this worker when the main process dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != _main_pid:
        os._exit(1)


# ---------------------------------------------------------------------------------------------
# Main process
# ---------------------------------------------------------------------------------------------

_main_pid = os.getpid()


def reap():
    """(pid, status) of every exited child not yet collected, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def await_init(workers, ready_r, go_w, terminating):
    """The init barrier, main process side: waits until every worker has written its byte to ready_r,
    then closes go_w, which releases them all (their read of the other end sees end of file).

    Returns (pid, status) of a worker that exits first, None once released or when every worker is gone
    during a shutdown. SIGCHLD (through a wakeup fd) wakes the wait, so a death is seen at once."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_handler = signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    pending, watched = len(workers), [ready_r, wake_r]
    try:
        while workers:
            # Reaped before every wait: a worker that exited before the handler was set is seen here.
            for pid, status in reap():
                if pid in workers:
                    workers.discard(pid)
                    if not terminating:
                        return pid, status
            if not workers:
                break
            if pending <= 0 and not terminating:
                os.close(go_w)
                diag("INFO", "%d worker(s) finished init; polling" % len(workers))
                return None
            readable = select.select(watched, [], [])[0]
            if wake_r in readable:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if ready_r in readable:
                data = os.read(ready_r, max(pending, 1))
                if not data:
                    watched.remove(ready_r)  # every worker closed its end; only deaths are left
                pending -= len(data)
        return None
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGCHLD, old_handler)
        for fd in (wake_r, wake_w, ready_r):
            os.close(fd)


def main():
    if not os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        diag("ERROR", "AWS_LAMBDA_RUNTIME_API is not set")
        return 1
    try:
        n = max(int(os.environ.get("AWS_LAMBDA_MAX_CONCURRENCY", "1")), 1)
    except ValueError:
        n = 1
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, task_root)

    workers = set()
    terminating = []

    def on_term(signum, _frame):
        terminating.append(signum)
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sys.stdout.flush()
    sys.stderr.flush()
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # The init barrier's two pipes, made before the forks: a worker writes one byte to ready when its
    # init is done; the main process closes go's write end once all have, and every worker reads its end
    # of file.
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    for _ in range(n):
        if terminating:
            break
        # Block SIGTERM/SIGINT across fork so a child never runs the parent's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            run_worker(ready_w, go_r)  # never returns
        workers.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    os.close(ready_w)
    os.close(go_r)
    diag("INFO", "started %d worker(s)" % len(workers), workers=sorted(workers))

    exited = await_init(workers, ready_r, go_w, terminating)
    exit_code = 0
    while workers or exited:
        if exited:
            (pid, status), exited = exited, None
        else:
            pid, status = os.waitpid(-1, 0)
            if pid not in workers:
                continue
            workers.discard(pid)
        if terminating:
            continue  # shutting down: collect the rest
        if os.WIFSIGNALED(status):
            exit_code = 128 + os.WTERMSIG(status)
        else:
            exit_code = os.WEXITSTATUS(status) or 1
        diag("ERROR", "worker %d exited (status %d); stopping the environment" % (pid, exit_code),
             exitCode=exit_code)
        for other in workers:
            try:
                os.kill(other, signal.SIGKILL)
            except OSError:
                pass
        while workers:
            pid, _ = os.waitpid(-1, 0)
            workers.discard(pid)
        break
    return 0 if terminating else exit_code


if __name__ == "__main__":
    sys.exit(main())

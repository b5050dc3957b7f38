"""Runs Lambda bootstraps as AWS Lambda does: each execution environment is one process of the
function's bootstrap with AWS_LAMBDA_RUNTIME_API pointing at its own Runtime API endpoint
(served here on 127.0.0.1), one invocation at a time, reused while it stays healthy.

Runtime API (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html), version
2018-06-01:
  GET  /2018-06-01/runtime/invocation/next           blocks until an invocation; the event as
                                                      the body, with Lambda-Runtime-Aws-Request-Id,
                                                      -Deadline-Ms, -Invoked-Function-Arn, -Trace-Id
  POST /2018-06-01/runtime/invocation/{id}/response  the result (202)
  POST /2018-06-01/runtime/invocation/{id}/error     a function error (202)
  POST /2018-06-01/runtime/init/error                 the function could not initialize (202)

An invocation fails with InvocationFailed when the bootstrap cannot be started, reports an init
error, exits, reports a function error, or does not answer by the deadline; a timed-out or
dead environment is killed and replaced by a fresh one on the next invocation, as Lambda does.
"""

import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

log = logging.getLogger("fleet.runtime")

API_PREFIX = "/2018-06-01/runtime"
MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous payload quota


class InvocationFailed(Exception):
    """kind: StartFailure, InitError, Crashed, Timeout or FunctionError."""

    def __init__(self, kind, message, error_type=None):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.error_type = error_type


class _Invocation:
    def __init__(self, event, deadline_ms):
        self.request_id = str(uuid.uuid4())
        self.event = event
        self.deadline_ms = deadline_ms
        self.done = threading.Event()
        self.result = None  # bytes
        self.error = None  # InvocationFailed


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    environment = None  # set on the per-environment subclass

    def log_message(self, format, *args):
        pass

    def _reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_PAYLOAD:
                    raise ValueError("payload too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD:
            raise ValueError("payload too large")
        return self.rfile.read(length)

    def do_GET(self):
        if self.path != f"{API_PREFIX}/invocation/next":
            return self._reply(404, b'{"errorType":"NotFound"}')
        invocation = self.environment.next_invocation()
        if invocation is None:  # the environment is being torn down
            return self._reply(500, b'{"errorType":"ServiceException"}')
        self._reply(200, invocation.event, {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.environment.function.arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
        })

    def do_POST(self):
        try:
            body = self._body()
        except ValueError:
            return self._reply(413, b'{"errorType":"RequestEntityTooLarge"}')
        path = self.path
        if path == f"{API_PREFIX}/init/error":
            self.environment.init_failed(_error_text(body, self.headers))
            return self._reply(202, b'{"status":"OK"}')
        prefix = f"{API_PREFIX}/invocation/"
        if path.startswith(prefix) and path.endswith(("/response", "/error")):
            request_id, _, outcome = path[len(prefix):].rpartition("/")
            if outcome == "response":
                known = self.environment.complete(request_id, result=body)
            else:
                error_type, message = _error_text(body, self.headers)
                known = self.environment.complete(
                    request_id, error=InvocationFailed("FunctionError", message, error_type))
            if not known:
                return self._reply(400, b'{"errorType":"InvalidRequestID"}')
            return self._reply(202, b'{"status":"OK"}')
        self._reply(404, b'{"errorType":"NotFound"}')


def _error_text(body, headers):
    error_type = headers.get("Lambda-Runtime-Function-Error-Type") or "Unhandled"
    try:
        parsed = json.loads(body)
        error_type = parsed.get("errorType") or error_type
        message = str(parsed.get("errorMessage", ""))
    except (ValueError, AttributeError):
        message = ""
    return error_type, message[:500]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A runtime killed mid-request (timeout, teardown) leaves a broken connection: expected.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            log.exception("Runtime API request from %s failed", client_address)


class _Environment:
    def __init__(self, function):
        self.function = function
        self._lock = threading.Condition()
        self._pending = None
        self._in_flight = {}
        self._init_error = None
        self.dead = False
        handler = type("Handler", (_Handler,), {"environment": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, name=f"runtime-api-{function.name}",
                         daemon=True).start()
        port = self._server.server_address[1]
        env = dict(function.env)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/{uuid.uuid4().hex}",
        })
        try:
            with open(function.log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    function.command, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as e:
            self._server.shutdown()
            self._server.server_close()
            raise InvocationFailed("StartFailure", f"cannot start {function.command[0]}: {e.strerror}")

    def next_invocation(self):
        with self._lock:
            while self._pending is None and not self.dead:
                self._lock.wait()
            if self.dead:
                return None
            invocation, self._pending = self._pending, None
            self._in_flight[invocation.request_id] = invocation
            return invocation

    def complete(self, request_id, result=None, error=None):
        with self._lock:
            invocation = self._in_flight.pop(request_id, None)
        if invocation is None:
            return False
        invocation.result, invocation.error = result, error
        invocation.done.set()
        return True

    def init_failed(self, error):
        error_type, message = error
        with self._lock:
            self._init_error = InvocationFailed("InitError", message, error_type)

    def run(self, invocation):
        """Runs one invocation to its end; raises InvocationFailed. The environment is dead
        afterwards unless the invocation ended with a result or a function error."""
        with self._lock:
            self._pending = invocation
            self._lock.notify_all()
        while not invocation.done.wait(0.02):
            exit_code = self.process.poll()
            if exit_code is not None or self._init_error is not None:
                self.kill()
                if self._init_error is not None:
                    raise self._init_error
                raise InvocationFailed("Crashed", f"the runtime exited with status {exit_code}")
            if time.time() * 1000 >= invocation.deadline_ms:
                self.kill()
                raise InvocationFailed("Timeout", "the function did not answer before its deadline")
        if invocation.error is not None:
            raise invocation.error
        return invocation.result

    def kill(self, stop_server=True):
        """Kills the runtime's process group; stop_server=False when the whole stand-in is
        exiting (the server threads are daemons, and shutdown() waits up to 0.5 s each)."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
            self._lock.notify_all()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        if stop_server:
            self._server.shutdown()
            self._server.server_close()


class LambdaFunction:
    """One function: its bootstrap command, environment and a pool of execution environments."""

    def __init__(self, name, command, env, arn, log_path, memory_mb=128, max_environments=8):
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.arn = arn
        self.log_path = log_path
        self.memory_mb = memory_mb
        self._max = max_environments
        self._idle = []
        self._all = set()
        self._count = 0
        self._lock = threading.Condition()

    def _acquire(self, deadline):
        with self._lock:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self._max:
                    self._count += 1
                    break
                left = deadline - time.time()
                if left <= 0:
                    raise InvocationFailed("Timeout", "no execution environment became free")
                self._lock.wait(left)
        try:
            environment = _Environment(self)
        except InvocationFailed:
            self._release(None)
            raise
        with self._lock:
            self._all.add(environment)
        return environment

    def _release(self, environment):
        with self._lock:
            if environment is None or environment.dead:
                self._count -= 1
                self._all.discard(environment)
            else:
                self._idle.append(environment)
            self._lock.notify()

    def invoke(self, event, timeout_seconds):
        """Invokes with a JSON-serializable event; returns the response bytes."""
        deadline = time.time() + timeout_seconds
        invocation = _Invocation(json.dumps(event).encode("utf-8"), int(deadline * 1000))
        environment = self._acquire(deadline)
        try:
            return environment.run(invocation)
        finally:
            self._release(environment)

    def close(self, exiting=False):
        """Kills every execution environment, busy ones included."""
        with self._lock:
            environments, self._all, self._idle = list(self._all), set(), []
        for environment in environments:
            environment.kill(stop_server=not exiting)

"""The Lambda Runtime API host, driven by small bootstraps written here (Python, stdlib only)."""

import json
import logging
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
logging.disable(logging.CRITICAL)  # the stand-in logs every refusal; the assertions say what matters

from standin.runtime import InvocationFailed, LambdaFunction  # noqa: E402

BOOTSTRAP = r'''
import json, os, sys, time, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
mode = sys.argv[1]
def post(path, body, headers={}):
    r = urllib.request.Request(api + path, data=json.dumps(body).encode(), method="POST", headers=headers)
    return urllib.request.urlopen(r).status
if mode == "init-error":
    post("/init/error", {"errorType": "Boot.Failed", "errorMessage": "no config"})
    sys.exit(1)
if mode == "exit-at-start":
    sys.exit(2)
while True:
    with urllib.request.urlopen(api + "/invocation/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        context = {k: r.headers[k] for k in ("Lambda-Runtime-Deadline-Ms", "Lambda-Runtime-Invoked-Function-Arn",
                                              "Lambda-Runtime-Trace-Id")}
        event = json.loads(r.read())
    if mode == "echo":
        env = {k: os.environ.get(k) for k in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
                                              "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "CUSTOM")}
        if event.get("sleep"):
            time.sleep(event["sleep"])
        status = post(f"/invocation/{rid}/response", {"event": event, "context": context, "env": env, "pid": os.getpid()})
        assert status == 202
    elif mode == "error":
        post(f"/invocation/{rid}/error", {"errorType": "Custom.Refused", "errorMessage": "no"},
             {"Lambda-Runtime-Function-Error-Type": "Custom.Refused"})
    elif mode == "hang":
        time.sleep(60)
    elif mode == "crash":
        sys.exit(3)
    elif mode == "wrong-id":
        try:
            post("/invocation/not-this-one/response", {})
        except urllib.error.HTTPError as e:
            post(f"/invocation/{rid}/response", {"wrong_id_status": e.code})
'''


class Runtime(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.script = os.path.join(self.dir.name, "bootstrap.py")
        with open(self.script, "w") as f:
            f.write(BOOTSTRAP)
        self.functions = []

    def tearDown(self):
        for function in self.functions:
            function.close()
        self.dir.cleanup()

    def function(self, mode, **kwargs):
        function = LambdaFunction(f"fn-{mode}", [sys.executable, self.script, mode], {"CUSTOM": "yes"},
                                  f"arn:aws:lambda:us-east-1:123456789012:function:fn-{mode}",
                                  os.path.join(self.dir.name, "lambda.log"), **kwargs)
        self.functions.append(function)
        return function

    def test_an_invocation_gets_the_event_headers_and_environment(self):
        before = time.time() * 1000
        answer = json.loads(self.function("echo").invoke({"hello": "world"}, 5))
        self.assertEqual(answer["event"], {"hello": "world"})
        deadline = int(answer["context"]["Lambda-Runtime-Deadline-Ms"])
        self.assertTrue(before + 4000 < deadline <= time.time() * 1000 + 5000)
        self.assertEqual(answer["context"]["Lambda-Runtime-Invoked-Function-Arn"],
                         "arn:aws:lambda:us-east-1:123456789012:function:fn-echo")
        self.assertTrue(answer["context"]["Lambda-Runtime-Trace-Id"].startswith("Root=1-"))
        self.assertEqual(answer["env"], {"AWS_LAMBDA_FUNCTION_NAME": "fn-echo", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                                         "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "CUSTOM": "yes"})

    def test_a_warm_environment_is_reused_and_concurrent_invocations_get_their_own(self):
        function = self.function("echo")
        first = json.loads(function.invoke({}, 5))["pid"]
        second = json.loads(function.invoke({}, 5))["pid"]
        self.assertEqual(first, second)
        pids = []
        threads = [threading.Thread(target=lambda: pids.append(json.loads(function.invoke({"sleep": 0.5}, 5))["pid"]))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(set(pids)), 2)

    def test_function_error(self):
        with self.assertRaises(InvocationFailed) as caught:
            self.function("error").invoke({}, 5)
        self.assertEqual((caught.exception.kind, caught.exception.error_type), ("FunctionError", "Custom.Refused"))

    def test_timeout_kills_the_environment_at_the_deadline(self):
        function = self.function("hang")
        started = time.monotonic()
        with self.assertRaises(InvocationFailed) as caught:
            function.invoke({}, 1.0)
        elapsed = time.monotonic() - started
        self.assertEqual(caught.exception.kind, "Timeout")
        self.assertTrue(0.9 < elapsed < 2.0, elapsed)
        self.assertEqual(function._count, 0)  # the environment was discarded

    def test_crash_init_error_and_missing_bootstrap(self):
        for mode, kind in (("crash", "Crashed"), ("exit-at-start", "Crashed"), ("init-error", "InitError")):
            with self.assertRaises(InvocationFailed) as caught:
                self.function(mode).invoke({}, 5)
            self.assertEqual(caught.exception.kind, kind, mode)
        missing = LambdaFunction("gone", [os.path.join(self.dir.name, "nope")], {}, "arn", os.path.join(self.dir.name, "l"))
        with self.assertRaises(InvocationFailed) as caught:
            missing.invoke({}, 5)
        self.assertEqual(caught.exception.kind, "StartFailure")

    def test_a_response_for_an_unknown_request_is_refused(self):
        answer = json.loads(self.function("wrong-id").invoke({}, 5))
        self.assertEqual(answer, {"wrong_id_status": 400})


if __name__ == "__main__":
    unittest.main()

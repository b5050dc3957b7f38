"""A scripted pre-provisioning hook for the stand-in's own tests (fault injection), run as a
Lambda bootstrap through the Runtime API like the real hook. Never used by the product.

    scripted_hook.py MODE

MODE:
  allow        allowProvisioning true; parameterOverrides ThingName = "scripted-" + SerialNumber,
               PolicyName = $SCRIPTED_HOOK_POLICY_NAME (exercises what RegisterThing creates)
  deny         allowProvisioning false
  error        a function error
  timeout      no answer (the stand-in's 5 s deadline passes)
  crash        the process exits during the invocation
  init-error   reports an init error and exits
  bad-answer   allowProvisioning "true" (a string, not the JSON true AWS expects)
"""

import json
import os
import sys
import time
import urllib.request

API = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"


def post(path, body, headers=None):
    request = urllib.request.Request(f"{API}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    urllib.request.urlopen(request).read()


def main(mode):
    if mode == "init-error":
        post("/init/error", {"errorType": "Scripted.InitError", "errorMessage": "scripted init failure"},
             {"Lambda-Runtime-Function-Error-Type": "Scripted.InitError"})
        sys.exit(1)
    while True:
        with urllib.request.urlopen(f"{API}/invocation/next") as response:
            request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(response.read())
        if mode == "allow":
            serial = event["parameters"].get("SerialNumber", "unknown")
            answer = {"allowProvisioning": True,
                      "parameterOverrides": {"ThingName": f"scripted-{serial}",
                                             "PolicyName": os.environ["SCRIPTED_HOOK_POLICY_NAME"]}}
        elif mode == "deny":
            answer = {"allowProvisioning": False}
        elif mode == "bad-answer":
            answer = {"allowProvisioning": "true"}
        elif mode == "error":
            post(f"/invocation/{request_id}/error", {"errorType": "Scripted.Refused", "errorMessage": "scripted"},
                 {"Lambda-Runtime-Function-Error-Type": "Scripted.Refused"})
            continue
        elif mode == "timeout":
            time.sleep(60)
            continue
        elif mode == "crash":
            sys.exit(3)
        else:
            raise SystemExit(f"unknown mode {mode}")
        post(f"/invocation/{request_id}/response", answer)


if __name__ == "__main__":
    main(sys.argv[1])

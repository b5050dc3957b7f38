#!/usr/bin/env bash
# The published contract (functions/cvm-http/openapi.json) against the running vend service,
# with schemathesis: generated requests (the document's examples, boundary values of every
# field, random fuzzing) must never get a 5xx, and every answer's status, content type,
# headers and body must be the documented ones.
#
# Generated requests alone stop at the parser (a random CSR is never a valid one), so the
# hooks below also send explicit cases that reach the workflow: serials enrolled for this run
# with cvm-admin (a token, a registered key, a revoked device, one to lock out, one renewed,
# one confirmed), each with real CSRs and signatures; and one generated vend body in three is
# sent for an enrolled serial with a valid CSR, so generated tokens meet a real record. After
# the run, the answers seen are summed up per operation, status and code, and the run fails
# unless the workflow answered (issue, replay, conflict, refusals, lockout, renewal,
# confirmation). Stateless only: the stateful phase's request chains add nothing the explicit
# cases do not cover, and would make the run order-dependent.
#
# Usage: tests/local-stack/schemathesis.sh [API_URL]   (default: $CVM_API_URL)
# Needs the local stack (`make up`) and its environment (`set -a; . .local/env; set +a`).
# Tunables: CVM_CONTRACT_EXAMPLES (generated cases per operation in the fuzzing phase,
# default 100), CVM_CONTRACT_SEED (default 20261201).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCAL="$ROOT/.local"
: "${CVM_API_CA:?load the local stack environment: set -a; . .local/env; set +a}"
: "${CVM_ADMIN:?load the local stack environment: set -a; . .local/env; set +a}"
API_URL=${1:-${CVM_API_URL:?load the local stack environment: set -a; . .local/env; set +a}}
SCHEMA="$ROOT/functions/cvm-http/openapi.json"
ST="$LOCAL/venv/bin/schemathesis"
PY="$LOCAL/venv/bin/python"
[ -x "$ST" ] || { echo "schemathesis: not installed; run tests/local-stack/install.sh" >&2; exit 1; }

WORK="$LOCAL/schemathesis"
rm -rf "$WORK"
mkdir -p -m 700 "$WORK"

cat >"$WORK/cvm_contract_hooks.py" <<'PYTHON'
"""Hooks for the contract run: explicit cases that reach the vend workflow, and a log of
every answer (operation, status, code; never a body) for the coverage summary."""

import base64
import json
import os
import subprocess
import time
from hashlib import sha256
from pathlib import Path

import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import requests

API = os.environ["CVM_CONTRACT_URL"].rstrip("/")
CA = os.environ["CVM_API_CA"]
ADMIN = os.environ["CVM_ADMIN"]
WORK = Path(os.environ["CVM_CONTRACT_WORK"])
ANSWERS = WORK / "answers.jsonl"
# Serials of this run: fresh records whatever earlier runs left in the table.
RUN = f"CT-{int(time.time())}-{os.getpid()}"

VEND, RENEW, CONFIRM = "/v1/certificates", "/v1/renewals", "/v1/renewals/confirm"
RENEWAL_LABEL = b"cvm-renewal-v1"
CONFIRMATION_LABEL = b"cvm-renewal-confirmation-v1"


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key, common_name):
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def csr_der(pem):
    return x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)


def signature(key, label, serial, subject):
    """What a device signs: label, serial and subject, each separated by a zero byte."""
    message = label + b"\0" + serial.encode() + b"\0" + subject
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


def admin(*args):
    done = subprocess.run([ADMIN, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cvm-admin {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def enroll(serial, *extra):
    """Enrolls `serial`; returns its token (None with --no-token). Never printed."""
    return json.loads(admin("enroll", "--serial", serial, "--json", *extra)).get("token")


def post(path, body, expect):
    answer = requests.post(API + path, json=body, verify=CA, timeout=30)
    if answer.status_code not in expect:
        raise RuntimeError(f"setup: POST {path} answered {answer.status_code}: {answer.text[:200]}")
    return answer


def renewal(key, serial, pem):
    """A renewal request for the CSR `pem`, signed with `key`."""
    return {"serial": serial, "csr": pem, "signature": signature(key, RENEWAL_LABEL, serial, csr_der(pem))}


class Workflow:
    """The records and requests of this run, made once, on first use.

    The engine does not promise to send explicit cases in the order given (4.32 sends them in
    reverse), so every case has one answer whatever the order: what a case needs happened
    before (issued, locked out, renewal proposed) is done here, directly, and cases whose
    answers depend on each other are identical (the second of two equal requests is a replay).
    """

    def __init__(self):
        names = ("fresh", "issued", "key", "revoked", "lock", "idle", "renew", "confirm")
        s = {name: f"{RUN}-{name}" for name in names}
        self.cases = {VEND: [], RENEW: [], CONFIRM: []}

        # A device with a token, enrolled and nothing more: issued.
        fresh_token = enroll(s["fresh"])
        self.cases[VEND].append({"serial": s["fresh"], "token": fresh_token, "csr": csr_pem(new_key(), s["fresh"])})

        # A device with its certificate: the same request again (replay), another key, a CSR
        # for another device, a wrong token.
        issued_token = enroll(s["issued"])
        issued_key = new_key()
        issued = {"serial": s["issued"], "token": issued_token, "csr": csr_pem(issued_key, s["issued"])}
        post(VEND, issued, {201})
        self.cases[VEND] += [
            issued,
            {**issued, "csr": csr_pem(new_key(), s["issued"])},
            {**issued, "csr": csr_pem(issued_key, "another-device")},
            {**issued, "token": "W" * 32},
        ]

        # A device whose key was registered at enrollment (with a token too): the right token
        # with another key is refused; the registered key needs no token.
        registered = new_key()
        public_key = WORK / "registered-key.pem"
        public_key.write_bytes(
            registered.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        key_token = enroll(s["key"], "--public-key", str(public_key))
        self.cases[VEND] += [
            {"serial": s["key"], "token": key_token, "csr": csr_pem(new_key(), s["key"])},
            {"serial": s["key"], "token": None, "csr": csr_pem(registered, s["key"])},
        ]

        # A revoked device, for all three operations.
        revoked_token = enroll(s["revoked"])
        admin("revoke", "--serial", s["revoked"])
        revoked_key = new_key()
        revoked_csr = csr_pem(revoked_key, s["revoked"])
        self.cases[VEND].append({"serial": s["revoked"], "token": revoked_token, "csr": revoked_csr})

        # Wrong tokens until the serial is slowed down (after the service's free attempts);
        # then even the right one waits.
        lock_token = enroll(s["lock"])
        lock_csr = csr_pem(new_key(), s["lock"])
        for _ in range(101):
            wrong = {"serial": s["lock"], "token": "W" * 32, "csr": lock_csr}
            if post(VEND, wrong, {403, 429}).status_code == 429:
                break
        self.cases[VEND].append({"serial": s["lock"], "token": lock_token, "csr": lock_csr})

        # Renewal: a device with a certificate (issued here), a new key signed with the old one.
        idle_key = new_key()
        enroll(s["idle"])
        renew_token = enroll(s["renew"])
        old, new, stranger = new_key(), new_key(), new_key()
        post(VEND, {"serial": s["renew"], "token": renew_token, "csr": csr_pem(old, s["renew"])}, {201})
        new_csr = csr_pem(new, s["renew"])
        idle_csr = csr_pem(idle_key, s["idle"])
        self.cases[RENEW] += [
            renewal(stranger, s["renew"], new_csr),
            renewal(old, s["renew"], new_csr),
            renewal(old, s["renew"], new_csr),
            renewal(idle_key, s["idle"], idle_csr),
            renewal(revoked_key, s["revoked"], revoked_csr),
        ]

        # Confirmation: a renewal proposed here; proofs by the wrong key, for another id, the
        # right one, and again.
        confirm_token = enroll(s["confirm"])
        c_old, c_new = new_key(), new_key()
        post(VEND, {"serial": s["confirm"], "token": confirm_token, "csr": csr_pem(c_old, s["confirm"])}, {201})
        proposal = renewal(c_old, s["confirm"], csr_pem(c_new, s["confirm"]))
        proposed = post(RENEW, proposal, {201}).json()["certificateId"]
        other_id = "f" * 64

        def proof(key, serial, certificate_id):
            # The id is signed as the server reads it: lowercase.
            return {
                "serial": serial,
                "certificateId": certificate_id,
                "signature": signature(key, CONFIRMATION_LABEL, serial, certificate_id.lower().encode()),
            }

        self.cases[CONFIRM] += [
            proof(c_old, s["confirm"], proposed),
            proof(c_new, s["confirm"], other_id),
            proof(c_new, s["confirm"], proposed),
            proof(c_new, s["confirm"], proposed),
            proof(c_new, s["confirm"], proposed.upper()),
            proof(idle_key, s["idle"], other_id),
            proof(revoked_key, s["revoked"], other_id),
        ]

        # For generated bodies: a real CSR of an enrolled serial, so that generated tokens meet
        # a real record (credentials check, lockout) instead of stopping at the CSR parser.
        self.fuzz_serial = s["idle"]
        self.fuzz_csr = idle_csr


_workflow = None


def workflow():
    global _workflow
    if _workflow is None:
        _workflow = Workflow()
    return _workflow


@schemathesis.hook
def before_add_examples(context, examples):
    path = context.operation.path
    for body in workflow().cases.get(path, []):
        examples.append(context.operation.Case(body=body, media_type="application/json"))


@schemathesis.hook
def map_body(context, body):
    """One generated vend body in three is sent for an enrolled serial with a real CSR."""
    if context.operation.path != VEND or not isinstance(body, dict) or "csr" not in body:
        return body
    if sha256(json.dumps(body, sort_keys=True).encode()).digest()[0] % 3:
        return body
    w = workflow()
    return {**body, "serial": w.fuzz_serial, "csr": w.fuzz_csr}


@schemathesis.hook
def after_call(context, case, response):
    try:
        answer = response.json()
    except ValueError:
        answer = None
    code = answer.get("code", "") if isinstance(answer, dict) else ""
    body = case.body if isinstance(case.body, dict) else {}
    serial = body.get("serial")
    # Which of this run's devices the request was for (a serial is no secret; a token is
    # never logged).
    device = serial[len(RUN) + 1 :] if isinstance(serial, str) and serial.startswith(RUN + "-") else ""
    with ANSWERS.open("a") as log:
        log.write(
            json.dumps({"operation": f"{case.method} {case.path}", "status": response.status_code, "code": code, "device": device})
            + "\n"
        )
PYTHON

# No 5xx for anything, and every answer as documented: status, content type, headers, body.
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance
CHECKS+=,response_headers_conformance,response_schema_conformance
# One worker, a fixed seed and no example database: the same cases every run. The request
# timeout is generous because the emulator behind the service slows down under load (what
# is under test is the contract, not latency).

echo "schemathesis $("$ST" --version | awk '{print $NF}') against $API_URL"
started=$(date +%s)
status=0
CVM_CONTRACT_URL="$API_URL" CVM_CONTRACT_WORK="$WORK" \
SCHEMATHESIS_HOOKS=cvm_contract_hooks PYTHONPATH="$WORK" \
  "$ST" run "$SCHEMA" \
    --url "$API_URL" \
    --tls-verify "$CVM_API_CA" \
    --checks "$CHECKS" \
    --phases examples,coverage,fuzzing \
    --max-examples "${CVM_CONTRACT_EXAMPLES:-100}" \
    --seed "${CVM_CONTRACT_SEED:-20261201}" \
    --generation-database none \
    --workers 1 \
    --request-timeout 60 \
    --no-color \
  || status=$?
elapsed=$(( $(date +%s) - started ))

# What the run reached: answers per operation, status and code.
"$PY" - "$WORK/answers.jsonl" "$elapsed" <<'PYTHON' || status=1
import collections
import json
import sys
from pathlib import Path

log, elapsed = Path(sys.argv[1]), sys.argv[2]
answers = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
seen = collections.Counter((a["operation"], a["status"], a["code"]) for a in answers)
print(f"\n== contract run: {len(answers)} requests in {elapsed} s")
for (operation, status, code), n in sorted(seen.items()):
    print(f"  {operation:28} {status}  {code or '-':38} {n}")

# The workflow must have answered, not only the parser: every outcome of it that a client can
# bring about (the rest, 5xx and 409 enrollment_in_progress, need faults or races).
VEND, RENEW, CONFIRM = "POST /v1/certificates", "POST /v1/renewals", "POST /v1/renewals/confirm"
required = {
    (VEND, 201, ""),
    (VEND, 200, ""),
    (VEND, 409, "already_issued"),
    (VEND, 403, "invalid_credentials"),
    (VEND, 403, "csr_subject_not_allowed"),
    (VEND, 403, "csr_key_not_registered"),
    (VEND, 403, "device_revoked"),
    (VEND, 429, "enrollment_locked"),
    (RENEW, 201, ""),
    (RENEW, 200, ""),
    (RENEW, 403, "invalid_signature"),
    (RENEW, 403, "device_revoked"),
    (RENEW, 409, "nothing_to_renew"),
    (CONFIRM, 200, ""),
    (CONFIRM, 403, "invalid_signature"),
    (CONFIRM, 403, "device_revoked"),
    (CONFIRM, 409, "nothing_to_renew"),
}
missing = sorted(required - set(seen))
if missing:
    print("contract run: the workflow did not answer as expected; never seen:", file=sys.stderr)
    for outcome in missing:
        print(f"  {outcome}", file=sys.stderr)
    sys.exit(1)
print(f"contract run: the workflow answered all {len(required)} expected outcomes")
PYTHON

exit "$status"

"""AWS IoT's side of the fleet-provisioning MQTT API
(https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html), JSON payload
format: CreateCertificateFromCsr through the account's certificate provider Lambda, and
RegisterThing through the template's pre-provisioning hook Lambda.

Answers are `(topic, payload dict)`; the broker bridge delivers them to the requesting
connection only. Rejections carry AWS's shape `{statusCode, errorCode, errorMessage}`. The
developer guide names the shape and, for hooks, ACCESS_DENIED; the codes used here are listed
in tests/local-stack/README.md. Nothing secret (CSR contents, parameters such as enrollment
tokens, ownership tokens) is logged.
"""

import json
import logging
import re
import secrets
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import principal, templates
from .runtime import InvocationFailed

log = logging.getLogger("fleet.provisioning")

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
_TEMPLATE_TOPIC = re.compile(r"\$aws/provisioning-templates/([^/]+)/provision/json")
# AWS IoT's message size quota.
MAX_PAYLOAD = 128 * 1024
# "the certificateOwnershipToken returned by CreateCertificateFromCsr expires after one hour"
TOKEN_TTL_SECONDS = 3600
# AWS IoT waits this long for the certificate provider and for a pre-provisioning hook.
LAMBDA_TIMEOUT_SECONDS = 5.0


class Rejected(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def payload(self):
        return {"statusCode": self.status, "errorCode": self.code, "errorMessage": self.message}


def _error_code(error):
    return getattr(error, "response", {}).get("Error", {}).get("Code")


class _Token:
    def __init__(self, certificate_id, certificate_arn, certificate_pem, claim_certificate_id, expires_at):
        self.certificate_id = certificate_id
        self.certificate_arn = certificate_arn
        self.certificate_pem = certificate_pem
        self.claim_certificate_id = claim_certificate_id
        self.expires_at = expires_at


class OwnershipTokens:
    """Opaque tokens bound to one new certificate and the claim certificate that asked for it,
    valid for TOKEN_TTL_SECONDS. Like AWS's, a token stays usable until it expires (a device
    that lost the RegisterThing answer can ask again)."""

    def __init__(self, ttl_seconds=TOKEN_TTL_SECONDS, clock=time.monotonic):
        self._ttl = ttl_seconds
        self._clock = clock
        self._tokens = {}
        self._lock = threading.Lock()

    def issue(self, certificate_id, certificate_arn, certificate_pem, claim_certificate_id):
        token = secrets.token_urlsafe(96)
        with self._lock:
            self._tokens[token] = _Token(certificate_id, certificate_arn, certificate_pem,
                                         claim_certificate_id, self._clock() + self._ttl)
        return token

    def get(self, token):
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None or self._clock() >= entry.expires_at:
                return None
            return entry

    def take_expired(self):
        """Removes and returns the expired entries."""
        now = self._clock()
        with self._lock:
            expired = [t for t, e in self._tokens.items() if now >= e.expires_at]
            return [self._tokens.pop(t) for t in expired]


class Requester:
    """Who sent the request: the MQTT client id and the certificate of the connection."""

    def __init__(self, client_id, certificate_id):
        self.client_id = client_id
        self.certificate_id = certificate_id


class Template:
    def __init__(self, name, body, hook, arn, enabled=True):
        self.name = name
        self.body = body
        self.hook = hook  # a runtime.LambdaFunction or None
        self.arn = arn
        self.enabled = enabled


class FleetProvisioning:
    def __init__(self, iot, provider, templates_by_name, tokens=None,
                 lambda_timeout_seconds=LAMBDA_TIMEOUT_SECONDS):
        self._iot = iot
        self._provider = provider
        self._templates = templates_by_name
        self.tokens = tokens or OwnershipTokens()
        self._lambda_timeout = lambda_timeout_seconds

    @staticmethod
    def handles(topic):
        return topic == CSR_TOPIC or _TEMPLATE_TOPIC.fullmatch(topic) is not None

    def handle(self, requester, topic, payload):
        """Answers one request: returns (topic, payload dict)."""
        if topic == CSR_TOPIC:
            operation, answer = "CreateCertificateFromCsr", self._create_certificate_from_csr
            args = ()
        else:
            operation, answer = "RegisterThing", self._register_thing
            args = (_TEMPLATE_TOPIC.fullmatch(topic).group(1),)
        started = time.monotonic()
        try:
            accepted = answer(requester, payload, *args)
            outcome, reply = "accepted", accepted
        except Rejected as e:
            outcome, reply = "rejected", e.payload()
        except Exception:
            log.exception("%s failed unexpectedly", operation)
            outcome = "rejected"
            reply = Rejected(500, "InternalFailure", "An internal error occurred").payload()
        log.info("%s from client %r (certificate %s): %s%s in %.0f ms", operation, requester.client_id,
                 requester.certificate_id[:12], outcome,
                 f" {reply['statusCode']} {reply['errorCode']}" if outcome == "rejected" else "",
                 (time.monotonic() - started) * 1000)
        return f"{topic}/{outcome}", reply

    # ---- CreateCertificateFromCsr ----

    def _create_certificate_from_csr(self, requester, payload):
        request = _json_object(payload)
        csr_pem = request.get("certificateSigningRequest")
        if not isinstance(csr_pem, str) or not csr_pem.strip():
            raise Rejected(400, "InvalidPayload", "certificateSigningRequest must be a non-empty string")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8"))
            valid = csr.is_signature_valid
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise Rejected(400, "InvalidCsr", "The certificate signing request is not a valid PKCS#10 CSR")
        if self._provider is None:
            raise Rejected(500, "InternalFailure", "No certificate provider is configured")

        event = {"certificateSigningRequest": csr_pem, "principalId": requester.certificate_id,
                 "clientId": requester.client_id}
        try:
            response = self._provider.invoke(event, self._lambda_timeout)
        except InvocationFailed as e:
            log.warning("certificate provider failed: %s%s", e.kind,
                        f" ({e.error_type})" if e.error_type else "")
            if e.kind == "Timeout":
                raise Rejected(500, "InternalFailure", "The certificate provider did not answer in time")
            raise Rejected(500, "InternalFailure", "The certificate provider did not return a certificate")
        certificate_pem = _provider_certificate(response, csr)

        try:
            registered = self._iot.register_certificate_without_ca(
                certificatePem=certificate_pem, status="PENDING_ACTIVATION")
            certificate_id, certificate_arn = registered["certificateId"], registered["certificateArn"]
        except Exception as e:
            if _error_code(e) != "ResourceAlreadyExistsException":
                raise
            # The provider is idempotent: a retried request can bring back the same certificate.
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
            certificate_id = principal.certificate_id(certificate.public_bytes(serialization.Encoding.DER))
            certificate_arn = self._iot.describe_certificate(
                certificateId=certificate_id)["certificateDescription"]["certificateArn"]
        token = self.tokens.issue(certificate_id, certificate_arn, certificate_pem, requester.certificate_id)
        return {"certificateId": certificate_id, "certificatePem": certificate_pem,
                "certificateOwnershipToken": token}

    # ---- RegisterThing ----

    def _register_thing(self, requester, payload, template_name):
        template = self._templates.get(template_name)
        if template is None or not template.enabled:
            raise Rejected(404, "ResourceNotFound", f"The provisioning template {template_name} does not exist")
        request = _json_object(payload)
        token = request.get("certificateOwnershipToken")
        if token is None or token == "":
            raise Rejected(400, "InvalidCertificateOwnershipToken", "Certificate ownership token cannot be empty.")
        if not isinstance(token, str):
            raise Rejected(400, "InvalidCertificateOwnershipToken", "Certificate ownership token is invalid.")
        parameters = request.get("parameters", {})
        if not isinstance(parameters, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()):
            raise Rejected(400, "InvalidPayload", "parameters must be an object of string values")
        entry = self.tokens.get(token)
        if entry is None or entry.claim_certificate_id != requester.certificate_id:
            raise Rejected(400, "InvalidCertificateOwnershipToken", "Certificate ownership token is invalid or expired.")

        merged = dict(parameters)
        if template.hook is not None:
            merged.update(self._ask_hook(template, requester, entry, parameters))

        try:
            plan = templates.plan(template.body, merged, entry.certificate_id)
        except templates.TemplateError as e:
            raise Rejected(400, "InvalidParameters", str(e))
        except templates.TemplateUnsupported as e:
            log.error("template %s uses what the stand-in does not implement: %s", template.name, e)
            raise Rejected(500, "InternalFailure", "The provisioning template could not be evaluated")
        self._provision(plan, entry)
        return {"deviceConfiguration": plan.device_configuration,
                "thingName": plan.thing.name if plan.thing else ""}

    def _ask_hook(self, template, requester, entry, parameters):
        event = {"claimCertificateId": requester.certificate_id, "certificateId": entry.certificate_id,
                 "certificatePem": entry.certificate_pem, "templateArn": template.arn,
                 "clientId": requester.client_id, "parameters": parameters}
        denied = Rejected(403, "AccessDenied", "The pre-provisioning hook denied the provisioning request")
        try:
            response = template.hook.invoke(event, self._lambda_timeout)
        except InvocationFailed as e:
            log.warning("pre-provisioning hook of %s failed: %s%s", template.name, e.kind,
                        f" ({e.error_type})" if e.error_type else "")
            raise denied
        try:
            answer = json.loads(response)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("allowProvisioning") is not True:
            log.info("pre-provisioning hook of %s did not allow provisioning", template.name)
            raise denied
        overrides = answer.get("parameterOverrides") or {}
        if not isinstance(overrides, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()):
            log.warning("pre-provisioning hook of %s returned parameterOverrides that are not strings", template.name)
            raise denied
        return overrides

    def _provision(self, plan, entry):
        """Creates what the plan says; on a failure undoes what this request did."""
        iot = self._iot
        undo = []
        try:
            if plan.certificate_id is None:
                raise Rejected(400, "InvalidParameters", "The template declares no certificate")
            status = iot.describe_certificate(certificateId=entry.certificate_id)["certificateDescription"]["status"]
            if status not in ("PENDING_ACTIVATION", "ACTIVE", "INACTIVE"):
                raise Rejected(400, "InvalidCertificateOwnershipToken", f"The certificate is {status}")
            for name in plan.policy_names:
                _registration(lambda: iot.get_policy(policyName=name), f"policy {name}")
            if plan.thing is not None:
                self._apply_thing(plan.thing, undo)
                _registration(lambda: iot.attach_thing_principal(
                    thingName=plan.thing.name, principal=entry.certificate_arn), "thing attachment")
                undo.append(lambda: iot.detach_thing_principal(thingName=plan.thing.name,
                                                               principal=entry.certificate_arn))
            for name in plan.policy_names:
                _registration(lambda: iot.attach_policy(policyName=name, target=entry.certificate_arn),
                              f"policy attachment {name}")
                undo.append(lambda name=name: iot.detach_policy(policyName=name, target=entry.certificate_arn))
            if status != plan.certificate_status:
                iot.update_certificate(certificateId=entry.certificate_id, newStatus=plan.certificate_status)
        except Exception:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("could not undo a RegisterThing step")
            raise

    def _apply_thing(self, thing, undo):
        iot = self._iot
        try:
            existing = iot.describe_thing(thingName=thing.name)
        except Exception as e:
            if _error_code(e) != "ResourceNotFoundException":
                raise
            existing = None
        if existing is None:
            kwargs = {"thingName": thing.name, "attributePayload": {"attributes": thing.attributes}}
            if thing.thing_type:
                kwargs["thingTypeName"] = thing.thing_type
            _registration(lambda: iot.create_thing(**kwargs), f"thing {thing.name}")
            undo.append(lambda: iot.delete_thing(thingName=thing.name))
            for group in thing.groups:
                _registration(lambda: iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing.name),
                              f"thing group {group}")
            return
        if "FAIL" in thing.overrides.values():
            raise Rejected(400, "ResourceRegistrationFailure", f"The thing {thing.name} already exists")
        action = thing.overrides["AttributePayload"]
        if action in ("MERGE", "REPLACE"):
            _registration(lambda: iot.update_thing(
                thingName=thing.name,
                attributePayload={"attributes": thing.attributes, "merge": action == "MERGE"}),
                f"thing {thing.name}")
        if thing.overrides["ThingTypeName"] in ("MERGE", "REPLACE") and thing.thing_type:
            _registration(lambda: iot.update_thing(thingName=thing.name, thingTypeName=thing.thing_type),
                          f"thing {thing.name}")
        if thing.overrides["ThingGroups"] in ("MERGE", "REPLACE"):
            for group in thing.groups:
                _registration(lambda: iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing.name),
                              f"thing group {group}")

    # ---- expiry ----

    def expire_tokens(self):
        """AWS: a certificate from CreateCertificateFromCsr that is neither activated nor
        attached to a policy or a thing when its token expires is deleted."""
        for entry in self.tokens.take_expired():
            try:
                description = self._iot.describe_certificate(certificateId=entry.certificate_id)["certificateDescription"]
                if description["status"] != "PENDING_ACTIVATION":
                    continue
                if self._iot.list_principal_things(principal=entry.certificate_arn).get("things"):
                    continue
                if self._iot.list_attached_policies(target=entry.certificate_arn).get("policies"):
                    continue
                self._iot.delete_certificate(certificateId=entry.certificate_id)
                log.info("deleted unused certificate %s (ownership token expired)", entry.certificate_id[:12])
            except Exception as e:
                if _error_code(e) != "ResourceNotFoundException":
                    log.warning("could not clean up certificate %s: %s", entry.certificate_id[:12], e)


def _json_object(payload):
    if len(payload) > MAX_PAYLOAD:
        raise Rejected(400, "InvalidPayload", "The payload exceeds the maximum size")
    try:
        request = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, "InvalidPayload", "The payload is not valid JSON")
    if not isinstance(request, dict):
        raise Rejected(400, "InvalidPayload", "The payload must be a JSON object")
    return request


def _provider_certificate(response, csr):
    """The certificate PEM from the provider's answer, checked as AWS IoT does: one X.509
    certificate carrying the CSR's public key."""
    failed = Rejected(500, "InternalFailure", "The certificate provider did not return a certificate")
    try:
        answer = json.loads(response)
    except ValueError:
        raise failed
    pem = answer.get("certificatePem") if isinstance(answer, dict) else None
    if not isinstance(pem, str):
        log.warning("certificate provider answer has no certificatePem")
        raise failed
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        log.warning("certificate provider answer is not a PEM certificate")
        raise failed
    der_spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*der_spki) != csr.public_key().public_bytes(*der_spki):
        log.warning("certificate provider returned a certificate for another key")
        raise failed
    return pem


def _registration(call, what):
    """Runs one IoT call of RegisterThing; the emulator's refusal becomes AWS's answer."""
    try:
        return call()
    except Exception as e:
        code = _error_code(e)
        if code in ("ResourceNotFoundException", "InvalidRequestException", "ResourceAlreadyExistsException",
                    "VersionConflictException"):
            raise Rejected(400, "ResourceRegistrationFailure", f"Could not register {what} ({code})")
        raise

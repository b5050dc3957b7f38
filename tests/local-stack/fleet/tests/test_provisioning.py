"""The two fleet-provisioning APIs against an in-memory IoT registry and scripted functions."""

import datetime
import hashlib
import json
import logging
import os
import sys
import unittest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
logging.disable(logging.CRITICAL)  # the stand-in logs every refusal; the assertions say what matters

from standin import templates  # noqa: E402
from standin.provisioning import (CSR_TOPIC, FleetProvisioning, OwnershipTokens, Requester,  # noqa: E402
                                  Template)
from standin.runtime import InvocationFailed  # noqa: E402

TEMPLATE_BODY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "infra", "fleet-provisioning",
                             "template.json")
CLAIM = Requester("claim-client", "c" * 64)
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])


class ClientError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class FakeIot:
    """The IoT calls the stand-in makes, on dicts."""

    def __init__(self):
        self.certificates = {}
        self.things = {}
        self.policies = {"device-policy": "{}"}
        self.thing_principals = set()
        self.policy_targets = set()
        self.fail = {}

    def _maybe_fail(self, operation):
        if operation in self.fail:
            raise ClientError(self.fail[operation])

    def register_certificate_without_ca(self, certificatePem, status):
        der = x509.load_pem_x509_certificate(certificatePem.encode()).public_bytes(serialization.Encoding.DER)
        cert_id = hashlib.sha256(der).hexdigest()
        if cert_id in self.certificates:
            raise ClientError("ResourceAlreadyExistsException")
        arn = f"arn:aws:iot:us-east-1:123456789012:cert/{cert_id}"
        self.certificates[cert_id] = {"certificateArn": arn, "status": status}
        return {"certificateId": cert_id, "certificateArn": arn}

    def describe_certificate(self, certificateId):
        if certificateId not in self.certificates:
            raise ClientError("ResourceNotFoundException")
        return {"certificateDescription": self.certificates[certificateId]}

    def update_certificate(self, certificateId, newStatus):
        self.certificates[certificateId]["status"] = newStatus

    def delete_certificate(self, certificateId):
        del self.certificates[certificateId]

    def get_policy(self, policyName):
        if policyName not in self.policies:
            raise ClientError("ResourceNotFoundException")
        return {"policyName": policyName, "policyDocument": self.policies[policyName]}

    def describe_thing(self, thingName):
        if thingName not in self.things:
            raise ClientError("ResourceNotFoundException")
        return {"thingName": thingName, "attributes": dict(self.things[thingName])}

    def create_thing(self, thingName, attributePayload):
        self._maybe_fail("create_thing")
        self.things[thingName] = dict(attributePayload["attributes"])

    def update_thing(self, thingName, attributePayload):
        if attributePayload["merge"]:
            self.things[thingName].update(attributePayload["attributes"])
        else:
            self.things[thingName] = dict(attributePayload["attributes"])

    def delete_thing(self, thingName):
        del self.things[thingName]

    def attach_thing_principal(self, thingName, principal):
        self.thing_principals.add((thingName, principal))

    def detach_thing_principal(self, thingName, principal):
        self.thing_principals.discard((thingName, principal))

    def attach_policy(self, policyName, target):
        self._maybe_fail("attach_policy")
        self.policy_targets.add((policyName, target))

    def detach_policy(self, policyName, target):
        self.policy_targets.discard((policyName, target))

    def list_principal_things(self, principal):
        return {"things": [t for t, p in self.thing_principals if p == principal]}

    def list_attached_policies(self, target):
        return {"policies": [{"policyName": n} for n, t in self.policy_targets if t == target]}


def sign(csr, key=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(CA_NAME)
            .public_key((key or csr).public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(CA_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


class Provider:
    """A certificate provider that signs, fails, or answers with someone else's key."""

    def __init__(self, mode="sign"):
        self.mode = mode
        self.events = []

    def invoke(self, event, timeout_seconds):
        self.events.append(event)
        if self.mode in ("Timeout", "FunctionError", "Crashed"):
            raise InvocationFailed(self.mode, "scripted", "Scripted" if self.mode == "FunctionError" else None)
        csr = x509.load_pem_x509_csr(event["certificateSigningRequest"].encode())
        if self.mode == "other-key":
            return json.dumps({"certificatePem": sign(csr, ec.generate_private_key(ec.SECP256R1()))}).encode()
        if self.mode == "no-pem":
            return b'{"certificate": "x"}'
        return json.dumps({"certificatePem": sign(csr)}).encode()


class Hook:
    def __init__(self, answer=None, failure=None):
        self.answer = answer
        self.failure = failure
        self.events = []

    def invoke(self, event, timeout_seconds):
        self.events.append(event)
        if self.failure:
            raise InvocationFailed(self.failure, "scripted")
        return json.dumps(self.answer).encode()


def csr_pem(cn="dev-1"):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


ALLOW = {"allowProvisioning": True, "parameterOverrides": {"ThingName": "thing-1", "PolicyName": "device-policy"}}


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


class Api(unittest.TestCase):
    def setUp(self):
        with open(TEMPLATE_BODY) as f:
            self.body = json.load(f)
        self.iot = FakeIot()
        self.provider = Provider()
        self.hook = Hook(ALLOW)
        self.clock = Clock()
        self.api = self.make(self.provider, self.hook)

    def make(self, provider, hook):
        template = Template("fleet", self.body, hook, "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/fleet")
        return FleetProvisioning(self.iot, provider, {"fleet": template}, OwnershipTokens(3600, self.clock))

    def csr(self, requester=CLAIM, payload=None, api=None):
        payload = payload if payload is not None else json.dumps({"certificateSigningRequest": csr_pem()}).encode()
        return (api or self.api).handle(requester, CSR_TOPIC, payload)

    def register(self, token, parameters=None, requester=CLAIM, template="fleet", api=None):
        body = {"certificateOwnershipToken": token, "parameters": parameters or {"SerialNumber": "S1"}}
        return (api or self.api).handle(requester, f"$aws/provisioning-templates/{template}/provision/json",
                                        json.dumps(body).encode())

    def assertRejected(self, answer, status, code):
        topic, payload = answer
        self.assertTrue(topic.endswith("/rejected"), answer)
        self.assertEqual((payload["statusCode"], payload["errorCode"]), (status, code), payload)
        self.assertEqual(set(payload), {"statusCode", "errorCode", "errorMessage"})

    def test_create_certificate_from_csr_registers_the_providers_certificate(self):
        topic, answer = self.csr()
        self.assertEqual(topic, CSR_TOPIC + "/accepted")
        self.assertEqual(set(answer), {"certificateId", "certificatePem", "certificateOwnershipToken"})
        der = x509.load_pem_x509_certificate(answer["certificatePem"].encode()).public_bytes(serialization.Encoding.DER)
        self.assertEqual(answer["certificateId"], hashlib.sha256(der).hexdigest())
        self.assertEqual(self.iot.certificates[answer["certificateId"]]["status"], "PENDING_ACTIVATION")
        event = self.provider.events[0]
        self.assertEqual((event["principalId"], event["clientId"]), (CLAIM.certificate_id, CLAIM.client_id))

    def test_bad_requests_never_reach_the_provider(self):
        self.assertRejected(self.csr(payload=b"not json"), 400, "InvalidPayload")
        self.assertRejected(self.csr(payload=b"[]"), 400, "InvalidPayload")
        self.assertRejected(self.csr(payload=b'{"certificateSigningRequest": 5}'), 400, "InvalidPayload")
        self.assertRejected(self.csr(payload=b'{"certificateSigningRequest": "garbage"}'), 400, "InvalidCsr")
        self.assertRejected(self.csr(payload=b"{" + b" " * 200_000 + b"}"), 400, "InvalidPayload")
        tampered = csr_pem().replace("\n", "", 1)
        tampered_csr = json.dumps({"certificateSigningRequest": tampered[:200] + ("A" if tampered[200] != "A" else "B")
                                   + tampered[201:]}).encode()
        self.assertRejected(self.csr(payload=tampered_csr), 400, "InvalidCsr")
        self.assertEqual(self.provider.events, [])

    def test_provider_failures_are_internal_failures_and_register_nothing(self):
        for mode in ("Timeout", "FunctionError", "Crashed", "other-key", "no-pem"):
            api = self.make(Provider(mode), self.hook)
            self.assertRejected(self.csr(api=api), 500, "InternalFailure")
        self.assertEqual(self.iot.certificates, {})

    def test_register_thing_creates_what_the_template_says(self):
        _, created = self.csr()
        topic, answer = self.register(created["certificateOwnershipToken"],
                                      {"SerialNumber": "S1", "EnrollmentToken": "secret", "Attribute_site": "lab"})
        self.assertEqual(topic, "$aws/provisioning-templates/fleet/provision/json/accepted")
        self.assertEqual(answer, {"deviceConfiguration": {}, "thingName": "thing-1"})
        arn = self.iot.certificates[created["certificateId"]]["certificateArn"]
        self.assertEqual(self.iot.certificates[created["certificateId"]]["status"], "ACTIVE")
        self.assertEqual(self.iot.things, {"thing-1": {"site": "lab"}})
        self.assertEqual(self.iot.thing_principals, {("thing-1", arn)})
        self.assertEqual(self.iot.policy_targets, {("device-policy", arn)})
        event = self.hook.events[0]
        self.assertEqual(event["parameters"], {"SerialNumber": "S1", "EnrollmentToken": "secret", "Attribute_site": "lab"})
        self.assertEqual((event["claimCertificateId"], event["certificateId"], event["clientId"]),
                         (CLAIM.certificate_id, created["certificateId"], CLAIM.client_id))
        self.assertEqual(event["certificatePem"], created["certificatePem"])
        self.assertTrue(event["templateArn"].endswith(":provisioningtemplate/fleet"))
        # A device that lost the answer asks again with the same token: same thing, no error.
        self.assertEqual(self.register(created["certificateOwnershipToken"])[1]["thingName"], "thing-1")

    def test_ownership_token_checks(self):
        self.assertRejected(self.register(""), 400, "InvalidCertificateOwnershipToken")
        self.assertEqual(self.register("")[1]["errorMessage"], "Certificate ownership token cannot be empty.")
        self.assertRejected(self.register("made-up"), 400, "InvalidCertificateOwnershipToken")
        _, created = self.csr()
        token = created["certificateOwnershipToken"]
        other_claim = Requester("claim-client", "d" * 64)
        self.assertRejected(self.register(token, requester=other_claim), 400, "InvalidCertificateOwnershipToken")
        self.clock.now += 3600
        self.assertRejected(self.register(token), 400, "InvalidCertificateOwnershipToken")
        self.assertEqual(self.hook.events, [])

    def test_unknown_template(self):
        _, created = self.csr()
        self.assertRejected(self.register(created["certificateOwnershipToken"], template="nope"), 404, "ResourceNotFound")

    def test_hook_refusals_are_access_denied_and_create_nothing(self):
        answers = [Hook({"allowProvisioning": False}), Hook({"allowProvisioning": "true"}), Hook("yes"),
                   Hook({"allowProvisioning": True, "parameterOverrides": {"ThingName": 5}}),
                   Hook(failure="Timeout"), Hook(failure="FunctionError"), Hook(failure="StartFailure"),
                   Hook(failure="InitError"), Hook(failure="Crashed")]
        for hook in answers:
            api = self.make(self.provider, hook)
            _, created = self.csr(api=api)
            self.assertRejected(self.register(created["certificateOwnershipToken"], api=api), 403, "AccessDenied")
            self.assertEqual(self.iot.certificates[created["certificateId"]]["status"], "PENDING_ACTIVATION")
        self.assertEqual((self.iot.things, self.iot.thing_principals, self.iot.policy_targets), ({}, set(), set()))

    def test_missing_parameters_and_bad_values(self):
        _, created = self.csr()
        token = created["certificateOwnershipToken"]
        self.assertRejected(self.register(token, {"SerialNumber": 5}), 400, "InvalidPayload")
        no_thing_name = self.make(self.provider, Hook({"allowProvisioning": True, "parameterOverrides": {"PolicyName": "p"}}))
        _, created = self.csr(api=no_thing_name)
        self.assertRejected(self.register(created["certificateOwnershipToken"], api=no_thing_name), 400, "InvalidParameters")
        # The device cannot name another certificate through the reserved parameter.
        _, created = self.csr()
        self.register(created["certificateOwnershipToken"], {"SerialNumber": "S1", "AWS::IoT::Certificate::Id": "f" * 64})
        self.assertEqual(self.iot.certificates[created["certificateId"]]["status"], "ACTIVE")

    def test_a_failure_midway_undoes_the_thing_and_attachments(self):
        self.iot.fail["attach_policy"] = "ResourceNotFoundException"
        _, created = self.csr()
        self.assertRejected(self.register(created["certificateOwnershipToken"]), 400, "ResourceRegistrationFailure")
        self.assertEqual((self.iot.things, self.iot.thing_principals, self.iot.policy_targets), ({}, set(), set()))
        self.assertEqual(self.iot.certificates[created["certificateId"]]["status"], "PENDING_ACTIVATION")
        missing_policy = self.make(self.provider, Hook({"allowProvisioning": True,
                                                        "parameterOverrides": {"ThingName": "t", "PolicyName": "nope"}}))
        self.iot.fail.clear()
        _, created = self.csr(api=missing_policy)
        self.assertRejected(self.register(created["certificateOwnershipToken"], api=missing_policy), 400,
                            "ResourceRegistrationFailure")
        self.assertEqual(self.iot.things, {})

    def test_expired_tokens_delete_certificates_nobody_activated(self):
        _, unused = self.csr()
        _, used = self.csr()
        self.register(used["certificateOwnershipToken"])
        self.clock.now += 3599
        self.api.expire_tokens()
        self.assertIn(unused["certificateId"], self.iot.certificates)
        self.clock.now += 1
        self.api.expire_tokens()
        self.assertNotIn(unused["certificateId"], self.iot.certificates)
        self.assertEqual(self.iot.certificates[used["certificateId"]]["status"], "ACTIVE")


class Templates(unittest.TestCase):
    def test_intrinsics_and_device_configuration(self):
        body = {"Parameters": {"A": {"Type": "String"}, "B": {"Type": "String", "Default": "x-y"}},
                "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {
                    "ThingName": {"Fn::Join": ["-", [{"Ref": "A"}, {"Fn::Select": [1, {"Fn::Split": ["-", {"Ref": "B"}]}]}]]}}}},
                "DeviceConfiguration": {"url": {"Fn::Sub": "https://${A}/cfg"}}}
        plan = templates.plan(body, {"A": "dev"}, "c" * 64)
        self.assertEqual(plan.thing.name, "dev-y")
        self.assertEqual(plan.device_configuration, {"url": "https://dev/cfg"})

    def test_refusals(self):
        base = {"Parameters": {"N": {"Type": "String"}},
                "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "N"}}}}}
        with self.assertRaises(templates.TemplateError):
            templates.plan(base, {}, "c" * 64)
        with self.assertRaises(templates.TemplateError):
            templates.plan(base, {"N": "bad name/with slash"}, "c" * 64)
        for unsupported in ({"Conditions": {}}, {"Resources": {"p": {"Type": "AWS::IoT::Policy",
                                                                       "Properties": {"PolicyDocument": "{}"}}}},
                            {"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::If": []}}}}}):
            with self.assertRaises(templates.TemplateUnsupported):
                templates.plan(dict(base, **unsupported), {"N": "n"}, "c" * 64)


if __name__ == "__main__":
    unittest.main()

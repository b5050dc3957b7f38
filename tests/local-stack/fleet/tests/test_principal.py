"""What the stand-in knows of a certificate, and how fresh."""

import datetime
import json
import logging
import os
import sys
import threading
import time
import unittest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
logging.disable(logging.CRITICAL)  # the stand-in logs every refusal; the assertions say what matters

from standin import principal  # noqa: E402


def certificate_der():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


class NotFound(Exception):
    response = {"Error": {"Code": "ResourceNotFoundException"}}


class Iot:
    def __init__(self, status="ACTIVE"):
        self.status = status
        self.calls = 0

    def describe_certificate(self, certificateId):
        self.calls += 1
        if self.status is None:
            raise NotFound()
        return {"certificateDescription": {"certificateArn": f"arn:cert/{certificateId}", "status": self.status}}

    def list_attached_policies(self, target, **kwargs):
        return {"policies": [{"policyName": "p"}]}

    def get_policy(self, policyName):
        return {"policyDocument": json.dumps({"Statement": []})}

    def list_principal_things(self, principal, **kwargs):
        return {"things": ["dev-1"]}

    def describe_thing(self, thingName):
        return {"thingName": thingName, "attributes": {"site": "lab"}}


class Cache(unittest.TestCase):
    def setUp(self):
        self.iot = Iot()
        self.refreshed = []
        self.done = threading.Event()

        def on_refreshed(cert_id, found):
            self.refreshed.append((cert_id, found and found.status))
            self.done.set()

        self.cache = principal.Cache(self.iot, 0.2, lambda cert_id: ["dev-1"], on_refreshed)
        self.der = certificate_der()

    def test_load_reads_status_policies_and_things(self):
        found = self.cache.for_connect(self.der, "dev-1")
        self.assertEqual((found.status, found.things, found.documents), ("ACTIVE", ["dev-1"], [{"Statement": []}]))
        self.assertEqual(found.certificate_id, principal.certificate_id(self.der))
        self.assertEqual(principal.thing_for(self.iot, found, "dev-1")["attributes"], {"site": "lab"})
        self.assertIsNone(principal.thing_for(self.iot, found, "dev-2"))

    def test_an_active_entry_is_reused_within_the_ttl_a_refusal_never(self):
        self.cache.for_connect(self.der, "dev-1")
        self.cache.for_connect(self.der, "dev-1")
        self.assertEqual(self.iot.calls, 1)
        self.iot.status = "INACTIVE"
        time.sleep(0.25)
        self.assertEqual(self.cache.for_connect(self.der, "dev-1").status, "INACTIVE")
        self.iot.status = "ACTIVE"
        self.assertEqual(self.cache.for_connect(self.der, "dev-1").status, "ACTIVE")
        self.iot.status = None
        time.sleep(0.25)
        self.assertIsNone(self.cache.for_connect(self.der, "dev-1"))

    def test_checks_use_what_is_known_and_refresh_in_the_background(self):
        self.cache.for_connect(self.der, "dev-1")
        self.iot.status = "REVOKED"
        self.assertEqual(self.cache.current(self.der).status, "ACTIVE")  # fresh: no re-read
        time.sleep(0.25)
        self.assertEqual(self.cache.current(self.der).status, "ACTIVE")  # stale: served, re-read started
        self.assertTrue(self.done.wait(2))
        self.assertEqual(self.refreshed, [(principal.certificate_id(self.der), "REVOKED")])
        self.assertEqual(self.cache.current(self.der).status, "REVOKED")


if __name__ == "__main__":
    unittest.main()

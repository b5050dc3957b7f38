"""The local stack's launcher: a local PKI, moto's server with the documented fixes below, and
the resources the vend service expects (table, default policy).

Subcommands:
  pki DIR                  create (once) the local device CA and the API's TLS certificate
  serve --port P --pki DIR run moto on 127.0.0.1:P with the fixes below
  provision --endpoint URL --table T --policy P
                           create the device table and the default IoT policy (idempotent)
  provision-pca --endpoint URL --ca-out FILE
                           create and activate a root AWS Private CA (ACM-PCA), write its
                           certificate to FILE and print its ARN (idempotent per moto run)

The main fix: moto's CreateCertificateFromCsr copies the CSR's subject but certifies a fresh
RSA key of its own, so the certificate does not carry the device's key. AWS IoT certifies the
CSR's key. The vend service checks that the certificate it got carries the CSR's key (and
refuses to deliver one that does not), so against unpatched moto every vend would fail, as it
should. We patch the emulator, never the check: `create_certificate_from_csr` below verifies
the CSR's self-signature and signs the CSR's public key with a stable local CA, whose
certificate the vend service returns in `caCertificates`. A CSR that is not PEM PKCS#10 or
whose signature does not verify gets AWS's 400 InvalidRequestException.

The other fixes, each where moto is less strict or less complete than AWS in a way the
product depends on (again the emulator is patched, never the product's checks):
- IoT CreateCertificateFromCsr reads its setAsActive flag, a query parameter, as the string
  moto received, so "false" (a non-empty string) made every certificate ACTIVE and the
  product's "inactive until the table knows it" step was never exercised. AWS creates the
  certificate ACTIVE only for setAsActive=true and INACTIVE otherwise (absent means false);
  the patch parses the flag the same way and refuses a value that is not a boolean
  (InvalidRequestException).
- ACM-PCA IssueCertificate knows only the RootCACertificate/V1 and EndEntityCertificate/V1
  templates and gives a certificate with no extensions at all for any other, so a
  certificate from EndEntityClientAuthCertificate/V1 (the vend's default) has no extended key
  usage and the product rightly refuses it. AWS's EndEntityClientAuthCertificate/V1 and
  EndEntityServerAuthCertificate/V1 are EndEntityCertificate/V1 with only clientAuth or only
  serverAuth as extended key usage; the patch issues exactly that.
- ACM-PCA IssueCertificate ignores IdempotencyToken, so a retried call issues a second
  certificate. AWS Private CA issues one certificate for all calls with the same token within
  five minutes; the patch does the same (per CA, token -> certificate ARN, five minutes).
- IoT GetRegistrationCode answers a new random code on every call; AWS answers one code per
  account and region. The patch keeps one code per backend.
- IoT RegisterCACertificate accepts any verification certificate, or none. AWS requires one
  whose subject CN is the registration code and which the CA certificate's key signed, a CA
  certificate (basic constraints CA:TRUE) that is currently valid, and refuses a CA that is
  already registered. The patch checks the same, with AWS's error codes, and keeps
  allowAutoRegistration (autoRegistrationStatus in DescribeCACertificate).
- IoT RegisterCertificate finds the given CA only if its PEM text is byte-identical to the
  registered one, and registers the device certificate anyway when the CA is unknown. AWS
  matches the certificate and refuses a CA that is not registered; the patch does both.
- DynamoDB TransactWriteItems deep-copies the whole table once per item of the transaction,
  as a backup to roll back to, and without a lock: a bulk enrollment of 10,000 serials in
  transactions of 100 copies the growing table a million times (the emulator died at 2,500),
  and concurrent transactions corrupt each other's backups (500s). The patch copies each
  table once per transaction, under a lock shared with the other DynamoDB writes. AWS
  applies transactions atomically; the patch only makes moto's own rollback affordable.
- ACM-PCA RevokeCertificate stores the serial as given (AWS's documented form is lowercase
  hex pairs, `aa:bb:...`), but GetCertificate looks revoked serials up in moto's own
  uppercase form without leading zeros, so a revoked certificate never looked revoked. The
  patch stores the serial in moto's form.
Known and left alone: moto's ACM-PCA CA key is always RSA-2048 whatever KeyAlgorithm says
(the launcher asks for RSA_2048 so DescribeCertificateAuthority tells the truth), it ignores
SigningAlgorithm and Validity, and GetCertificate never answers RequestInProgressException
(tests of delayed issuance wrap the product's Private CA port instead).
"""

import argparse
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import sys
import threading
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca(common_name, key):
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CVM local stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def pki(directory):
    """Creates the local PKI once; later runs keep it, so issued certificates stay valid."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    device_ca = os.path.join(directory, "device-ca.pem")
    if not os.path.exists(device_ca):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(os.path.join(directory, "device-ca.key"), _key_pem(key))
        _write(device_ca, _ca("CVM Local Device CA", key).public_bytes(serialization.Encoding.PEM), 0o644)
    api_ca = os.path.join(directory, "api-ca.pem")
    if not os.path.exists(api_ca):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _ca("CVM Local API CA", ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(os.path.join(directory, "api-server.key"), _key_pem(key))
        _write(os.path.join(directory, "api-server.pem"), cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(api_ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)


def _patch_moto(pki_dir):
    from moto.core.config import default_user_config
    from moto.core.responses import ActionResult
    from moto.iot import models as iot_models
    from moto.iot.responses import IoTResponse

    # Certificate ids as AWS computes them: SHA-256 of the DER certificate.
    default_user_config.setdefault("iot", {})["use_valid_cert"] = True

    with open(os.path.join(pki_dir, "device-ca.pem"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(pki_dir, "device-ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)

    def create_certificate_from_csr(self, csr, set_as_active):
        try:
            request = x509.load_pem_x509_csr(csr.encode("utf-8"))
        except ValueError:
            # AWS answers 400 InvalidRequestException, not a server error.
            raise iot_models.InvalidRequestException("The certificate signing request is not valid")
        if not request.is_signature_valid:
            raise iot_models.InvalidRequestException("The certificate signing request is not valid")
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(request.subject)
            .issuer_name(ca_cert.subject)
            .public_key(request.public_key())  # the device's key, as AWS IoT does
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return self.register_certificate(pem, ca_certificate_pem=None,
                                         set_as_active=set_as_active, status="INACTIVE")

    def create_certificate_from_csr_response(self):
        # setAsActive travels in the query string, where moto reads "false" as a (truthy)
        # string. Parse it as the boolean it is; absent means false, as in AWS.
        flag = self._get_param("setAsActive")
        if flag is None:
            set_as_active = False
        elif str(flag).lower() in ("true", "false"):
            set_as_active = str(flag).lower() == "true"
        else:
            raise iot_models.InvalidRequestException(f"setAsActive must be true or false, not {flag!r}")
        cert = self.iot_backend.create_certificate_from_csr(
            self._get_param("certificateSigningRequest"), set_as_active=set_as_active)
        return ActionResult({"certificateId": cert.certificate_id, "certificateArn": cert.arn,
                             "certificatePem": cert.certificate_pem})

    iot_models.IoTBackend.create_certificate_from_csr = create_certificate_from_csr
    IoTResponse.create_certificate_from_csr = create_certificate_from_csr_response
    _patch_ca_registration()
    _patch_pca_idempotency()
    _patch_pca_templates()
    _patch_pca_revocation_serials()
    _patch_dynamodb_transactions()


# AWS Private CA's single-purpose end-entity templates: EndEntityCertificate/V1's extensions
# with only the one extended key usage.
PCA_SINGLE_PURPOSE_TEMPLATES = {
    "EndEntityClientAuthCertificate/V1": ExtendedKeyUsageOID.CLIENT_AUTH,
    "EndEntityServerAuthCertificate/V1": ExtendedKeyUsageOID.SERVER_AUTH,
}


def _patch_dynamodb_transactions():
    import copy
    from moto.dynamodb import models as ddb

    writes = threading.RLock()

    class CopyOncePerObject:
        """copy, but deepcopy returns one copy per original object (per transaction)."""

        def __init__(self):
            self.copies = {}

        def deepcopy(self, obj, memo=None):
            key = id(obj)
            if key not in self.copies:
                self.copies[key] = copy.deepcopy(obj)
            return self.copies[key]

        def __getattr__(self, name):
            return getattr(copy, name)

    transact = ddb.DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        with writes:
            saved, ddb.copy = ddb.copy, CopyOncePerObject()
            try:
                return transact(self, transact_items)
            finally:
                ddb.copy = saved

    ddb.DynamoDBBackend.transact_write_items = transact_write_items
    for name in ("put_item", "update_item", "delete_item"):
        original = getattr(ddb.DynamoDBBackend, name)

        def locked(self, *args, _original=original, **kwargs):
            with writes:
                return _original(self, *args, **kwargs)

        setattr(ddb.DynamoDBBackend, name, locked)


def _patch_pca_revocation_serials():
    from moto.acmpca import models as pca

    revoke = pca.ACMPCABackend.revoke_certificate

    def revoke_certificate(self, certificate_authority_arn, certificate_serial, revocation_reason):
        try:
            n = int(certificate_serial.replace(":", ""), 16)
        except ValueError:
            n = None
        if n is not None:
            # Exactly as moto's GetCertificate formats the serial it looks up.
            digits = format(n, "X")
            certificate_serial = ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))
        return revoke(self, certificate_authority_arn, certificate_serial, revocation_reason)

    pca.ACMPCABackend.revoke_certificate = revoke_certificate


def _patch_pca_templates():
    from moto.acmpca import models as pca_models

    original = pca_models.CertificateAuthority._x509_extensions

    def x509_extensions(self, csr, template_arn):
        name = (template_arn or "").split(":template/", 1)[-1]
        usage = PCA_SINGLE_PURPOSE_TEMPLATES.get(name)
        if usage is None:
            return original(self, csr, template_arn)
        end_entity = original(self, csr, "arn:aws:acm-pca:::template/EndEntityCertificate/V1")
        return [(x509.ExtendedKeyUsage([usage]), critical)
                if isinstance(ext, x509.ExtendedKeyUsage) else (ext, critical)
                for ext, critical in end_entity]

    pca_models.CertificateAuthority._x509_extensions = x509_extensions


# AWS Private CA keeps an IssueCertificate idempotency token for five minutes.
PCA_IDEMPOTENCY_WINDOW_SECONDS = 300


def _patch_pca_idempotency():
    from moto.acmpca.responses import ACMPCAResponse

    original = ACMPCAResponse.issue_certificate
    issued = {}  # (account, region, CA ARN, token) -> (certificate ARN, time)
    lock = threading.Lock()

    def issue_certificate(self):
        params = json.loads(self.body)
        token = params.get("IdempotencyToken")
        if not token:
            return original(self)
        key = (self.current_account, self.region, params.get("CertificateAuthorityArn"), token)
        with lock:
            now = time.monotonic()
            known = issued.get(key)
            if known and now - known[1] < PCA_IDEMPOTENCY_WINDOW_SECONDS:
                return json.dumps({"CertificateArn": known[0]})
            body = original(self)
            issued[key] = (json.loads(body)["CertificateArn"], now)
            return body

    ACMPCAResponse.issue_certificate = issue_certificate


def _patch_ca_registration():
    from moto.core.responses import ActionResult
    from moto.iot import models as iot_models
    from moto.iot.exceptions import IoTClientError, ResourceAlreadyExistsException
    from moto.iot.responses import IoTResponse

    class CertificateValidationException(IoTClientError):
        def __init__(self, msg):
            super().__init__("CertificateValidationException", msg)

    def get_registration_code(self):
        if not getattr(self, "_registration_code", None):
            self._registration_code = secrets.token_hex(32)
        return self._registration_code

    def validate(backend, ca_pem, verification_pem, certificate_mode):
        try:
            ca = x509.load_pem_x509_certificate(ca_pem.encode("utf-8"))
        except ValueError:
            raise CertificateValidationException("The CA certificate is not a valid X.509 certificate")
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateValidationException("The certificate is not a CA certificate")
        now = datetime.datetime.now(datetime.timezone.utc)
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            raise CertificateValidationException("The CA certificate is expired or not yet valid")
        if certificate_mode == "SNI_ONLY" and not verification_pem:
            return
        if not verification_pem:
            raise CertificateValidationException("A verification certificate is required")
        try:
            verification = x509.load_pem_x509_certificate(verification_pem.encode("utf-8"))
        except ValueError:
            raise CertificateValidationException("The verification certificate is not a valid X.509 certificate")
        names = verification.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [get_registration_code(backend)]:
            raise CertificateValidationException(
                "The verification certificate's common name is not the registration code")
        try:
            verification.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as e:
            raise CertificateValidationException(
                f"The verification certificate is not signed by the CA certificate ({type(e).__name__})")

    def register_ca_certificate(self):
        ca_pem = self._get_param("caCertificate")
        verification_pem = self._get_param("verificationCertificate")
        mode = self._get_param("certificateMode") or "DEFAULT"
        set_as_active = self._get_bool_param("setAsActive", False)
        auto = self._get_bool_param("allowAutoRegistration", False)
        validate(self.iot_backend, ca_pem, verification_pem, mode)
        der = x509.load_pem_x509_certificate(ca_pem.encode("utf-8")).public_bytes(serialization.Encoding.DER)
        existing = self.iot_backend.ca_certificates.get(hashlib.sha256(der).hexdigest())
        if existing is not None:
            raise ResourceAlreadyExistsException(
                "The certificate is already provisioned or registered", existing.certificate_id, existing.arn)
        cert = self.iot_backend.register_ca_certificate(
            ca_certificate=ca_pem, set_as_active=set_as_active,
            registration_config=self._get_param("registrationConfig"))
        cert.auto_registration_status = "ENABLE" if auto else "DISABLE"
        return ActionResult({"certificateId": cert.certificate_id, "certificateArn": cert.arn})

    description = iot_models.FakeCaCertificate.to_description_dict

    def to_description_dict(self):
        d = description(self)
        d["autoRegistrationStatus"] = getattr(self, "auto_registration_status", "DISABLE")
        return d

    update_ca_response = IoTResponse.update_ca_certificate

    def update_ca_certificate_response(self):
        result = update_ca_response(self)
        auto = self._get_param("newAutoRegistrationStatus")
        if auto in ("ENABLE", "DISABLE"):
            cert = self.iot_backend.describe_ca_certificate(self.path.split("/")[-1])
            cert.auto_registration_status = auto
        return result

    def der_of(pem):
        return x509.load_pem_x509_certificate(pem.encode("utf-8")).public_bytes(serialization.Encoding.DER)

    def find_ca_certificate(self, ca_certificate_pem):
        if not ca_certificate_pem:
            return None
        wanted = der_of(ca_certificate_pem)
        for ca_cert in self.ca_certificates.values():
            if der_of(ca_cert.certificate_pem) == wanted:
                return ca_cert.certificate_id
        raise CertificateValidationException("The CA certificate is not registered")

    iot_models.IoTBackend._find_ca_certificate = find_ca_certificate
    iot_models.IoTBackend.get_registration_code = get_registration_code
    iot_models.FakeCaCertificate.to_description_dict = to_description_dict
    IoTResponse.register_ca_certificate = register_ca_certificate
    IoTResponse.update_ca_certificate = update_ca_certificate_response


def serve(port, pki_dir):
    _patch_moto(pki_dir)
    from moto.server import main
    main(["-H", "127.0.0.1", "-p", str(port)])


def provision(endpoint, table, policy, region):
    import boto3

    kwargs = dict(endpoint_url=endpoint, region_name=region,
                  aws_access_key_id="local", aws_secret_access_key="local")
    ddb = boto3.client("dynamodb", **kwargs)
    if table not in ddb.list_tables()["TableNames"]:
        ddb.create_table(TableName=table,
                         AttributeDefinitions=[{"AttributeName": "serial", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "serial", "KeyType": "HASH"}],
                         BillingMode="PAY_PER_REQUEST")
    iot = boto3.client("iot", **kwargs)
    names = [p["policyName"] for p in iot.list_policies()["policies"]]
    if policy not in names:
        # The same least-privilege shape as the deployed default policy.
        document = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "iot:Connect",
                 "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
                {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
                 "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"},
                {"Effect": "Allow", "Action": "iot:Subscribe",
                 "Resource": "arn:aws:iot:*:*:topicfilter/things/${iot:Connection.Thing.ThingName}/*"},
            ],
        }
        iot.create_policy(policyName=policy, policyDocument=json.dumps(document))


PCA_COMMON_NAME = "CVM Local Private CA"
ROOT_CA_TEMPLATE = "arn:aws:acm-pca:::template/RootCACertificate/V1"


def provision_pca(endpoint, ca_out, region):
    """A root Private CA, as the deployment's PrivateCa construct makes one: create it, have it
    sign its own CSR with the RootCACertificate template, import that certificate (the CA
    becomes ACTIVE). Reuses an active CA of the same name within one moto run."""
    import boto3

    pca = boto3.client("acm-pca", endpoint_url=endpoint, region_name=region,
                       aws_access_key_id="local", aws_secret_access_key="local")
    arn = None
    for ca in pca.list_certificate_authorities()["CertificateAuthorities"]:
        subject = ca["CertificateAuthorityConfiguration"].get("Subject", {})
        if ca["Status"] == "ACTIVE" and subject.get("CommonName") == PCA_COMMON_NAME:
            arn = ca["Arn"]
            break
    if arn is None:
        arn = pca.create_certificate_authority(
            CertificateAuthorityType="ROOT",
            CertificateAuthorityConfiguration={
                # moto's CA key is RSA-2048 whatever is asked: ask for what it has.
                "KeyAlgorithm": "RSA_2048",
                "SigningAlgorithm": "SHA256WITHRSA",
                "Subject": {"CommonName": PCA_COMMON_NAME, "Organization": "CVM local stack"},
            },
            UsageMode="GENERAL_PURPOSE",
        )["CertificateAuthorityArn"]
        csr = pca.get_certificate_authority_csr(CertificateAuthorityArn=arn)["Csr"]
        root_arn = pca.issue_certificate(
            CertificateAuthorityArn=arn, Csr=csr.encode("utf-8"), SigningAlgorithm="SHA256WITHRSA",
            TemplateArn=ROOT_CA_TEMPLATE, Validity={"Type": "YEARS", "Value": 10},
            IdempotencyToken="cvm-local-root",
        )["CertificateArn"]
        root = pca.get_certificate(CertificateAuthorityArn=arn, CertificateArn=root_arn)["Certificate"]
        pca.import_certificate_authority_certificate(CertificateAuthorityArn=arn, Certificate=root.encode("utf-8"))
    certificate = pca.get_certificate_authority_certificate(CertificateAuthorityArn=arn)["Certificate"]
    _write(ca_out, (certificate.strip() + "\n").encode("ascii"), 0o644)
    print(arn)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pki")
    p.add_argument("directory")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pki", required=True)
    v = sub.add_parser("provision")
    v.add_argument("--endpoint", required=True)
    v.add_argument("--table", required=True)
    v.add_argument("--policy", required=True)
    v.add_argument("--region", default="us-east-1")
    c = sub.add_parser("provision-pca")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--ca-out", required=True)
    c.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    if args.command == "pki":
        pki(args.directory)
    elif args.command == "serve":
        serve(args.port, args.pki)
    elif args.command == "provision-pca":
        provision_pca(args.endpoint, args.ca_out, args.region)
    else:
        provision(args.endpoint, args.table, args.policy, args.region)


if __name__ == "__main__":
    main(sys.argv[1:])

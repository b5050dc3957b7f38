"""The local stack's launcher: a local PKI, moto's server with one documented fix, and the
resources the vend service expects (table, default policy).

Subcommands:
  pki DIR                  create (once) the local device CA and the API's TLS certificate
  serve --port P --pki DIR run moto on 127.0.0.1:P with the CreateCertificateFromCsr fix
  provision --endpoint URL --table T --policy P
                           create the device table and the default IoT policy (idempotent)

Why the fix: moto's CreateCertificateFromCsr copies the CSR's subject but certifies a fresh
RSA key of its own, so the certificate does not carry the device's key. AWS IoT certifies the
CSR's key. The vend service checks that the certificate it got carries the CSR's key (and
refuses to deliver one that does not), so against unpatched moto every vend would fail, as it
should. We patch the emulator, never the check: `create_certificate_from_csr` below verifies
the CSR's self-signature and signs the CSR's public key with a stable local CA, whose
certificate the vend service returns in `caCertificates`.
"""

import argparse
import datetime
import ipaddress
import json
import os
import sys

from cryptography import x509
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
    from moto.iot import models as iot_models

    # Certificate ids as AWS computes them: SHA-256 of the DER certificate.
    default_user_config.setdefault("iot", {})["use_valid_cert"] = True

    with open(os.path.join(pki_dir, "device-ca.pem"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(pki_dir, "device-ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)

    def create_certificate_from_csr(self, csr, set_as_active):
        request = x509.load_pem_x509_csr(csr.encode("utf-8"))
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

    iot_models.IoTBackend.create_certificate_from_csr = create_certificate_from_csr


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
    args = parser.parse_args(argv)
    if args.command == "pki":
        pki(args.directory)
    elif args.command == "serve":
        serve(args.port, args.pki)
    else:
        provision(args.endpoint, args.table, args.policy, args.region)


if __name__ == "__main__":
    main(sys.argv[1:])

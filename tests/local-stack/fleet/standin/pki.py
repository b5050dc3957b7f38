"""The local broker's PKI and the local claim certificate.

- mqtt-ca.pem / mqtt-server.pem: the broker's server certificate (localhost, 127.0.0.1) and the
  CA devices trust for it (AWS IoT's is Amazon Root CA 1).
- claim-ca.pem / claim.pem / claim.key: a CA for claim certificates and the local stack's shared
  claim certificate, the one factory images would carry.
Created once and kept across runs (like stack.py's local CAs); keys are written 0600.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION = "CVM local stack"


def write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _ca(directory, stem, common_name):
    """Loads or creates a CA; returns (certificate, key)."""
    cert_path = os.path.join(directory, f"{stem}.pem")
    key_path = os.path.join(directory, f"{stem}.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if certificate.not_valid_after_utc > _now() + datetime.timedelta(days=30):
            return certificate, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write(key_path, _key_pem(key))
    write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certificate, key


def _leaf(directory, stem, ca, common_name, usage, san=None, cert_mode=0o644):
    """Loads or creates a certificate signed by ca = (certificate, key)."""
    cert_path = os.path.join(directory, f"{stem}.pem")
    key_path = os.path.join(directory, f"{stem}.key")
    ca_certificate, ca_key = ca
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        try:
            certificate.verify_directly_issued_by(ca_certificate)
            issued_by_ca = True
        except (ValueError, TypeError, InvalidSignature):
            issued_by_ca = False
        if issued_by_ca and certificate.not_valid_after_utc > _now() + datetime.timedelta(days=7):
            return certificate
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    write(key_path, _key_pem(key))
    write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), cert_mode)
    return certificate


def ensure(directory):
    """Creates what is missing or about to expire; returns the paths by role."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    mqtt_ca = _ca(directory, "mqtt-ca", "CVM Local MQTT Server CA")
    _leaf(directory, "mqtt-server", mqtt_ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
          san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    claim_ca = _ca(directory, "claim-ca", "CVM Local Claim CA")
    _leaf(directory, "claim", claim_ca, "cvm-local-claim", ExtendedKeyUsageOID.CLIENT_AUTH, cert_mode=0o600)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    return {
        "mqtt_ca": path("mqtt-ca.pem"),
        "mqtt_server_cert": path("mqtt-server.pem"),
        "mqtt_server_key": path("mqtt-server.key"),
        "claim_ca": path("claim-ca.pem"),
        "claim_cert": path("claim.pem"),
        "claim_key": path("claim.key"),
    }

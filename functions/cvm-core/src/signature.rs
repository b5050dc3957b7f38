//! Signatures a device makes with the key of a certificate it holds, to prove it is the
//! device that certificate names: a renewal request is signed with the current key, its
//! confirmation with the new one.
//!
//! The signed message is a fixed label, the serial and the subject of the request, each
//! separated by a zero byte (the label and serial cannot contain one), so a signature for one
//! purpose or one device never verifies for another. Signatures are ECDSA (ASN.1 DER) with
//! SHA-256 for P-256 keys and SHA-384 for P-384 keys, or RSA PKCS#1 v1.5 with SHA-256.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

use crate::csr::{certified_key, KeyKind};
use crate::domain::Serial;

const RENEWAL_LABEL: &[u8] = b"cvm-renewal-v1";
const CONFIRMATION_LABEL: &[u8] = b"cvm-renewal-confirmation-v1";

fn message(label: &[u8], serial: &Serial, subject: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + serial.as_str().len() + subject.len() + 2);
    m.extend_from_slice(label);
    m.push(0);
    m.extend_from_slice(serial.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(subject);
    m
}

/// What the current key signs to ask for a renewal: the new CSR's DER.
pub fn renewal_message(serial: &Serial, csr_der: &[u8]) -> Vec<u8> {
    message(RENEWAL_LABEL, serial, csr_der)
}

/// What the new key signs to prove the device holds the new certificate: its id.
pub fn confirmation_message(serial: &Serial, certificate_id: &str) -> Vec<u8> {
    message(CONFIRMATION_LABEL, serial, certificate_id.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature does not verify with the key of the certificate on record")]
    Invalid,
    #[error("the certificate on record cannot be read: {0}")]
    Certificate(String),
}

/// Verifies `signature` over `message` with the public key of `certificate_pem`.
pub fn verify_with_certificate(
    certificate_pem: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let key =
        certified_key(certificate_pem).map_err(|e| SignatureError::Certificate(e.to_string()))?;
    let algorithm: &'static dyn VerificationAlgorithm = match key.kind {
        KeyKind::EcP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyKind::EcP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyKind::Rsa { .. } => &signature::RSA_PKCS1_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(algorithm, &key.key_bytes)
        .verify(message, signature)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn device() -> (rcgen::KeyPair, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ZK-1");
        let cert = params.self_signed(&key).unwrap();
        (key, cert.pem())
    }

    fn sign(key: &rcgen::KeyPair, message: &[u8]) -> Vec<u8> {
        let pkcs8 = key.serialize_der();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        signer
            .sign(&ring::rand::SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn verifies_only_the_signed_message_with_the_certified_key() {
        let serial = Serial::parse("ZK-1").unwrap();
        let (key, cert) = device();
        let m = renewal_message(&serial, b"csr");
        let sig = sign(&key, &m);
        assert_eq!(verify_with_certificate(&cert, &m, &sig), Ok(()));

        // Another purpose, device or subject: refused.
        let other_serial = Serial::parse("ZK-2").unwrap();
        for wrong in [
            confirmation_message(&serial, "csr"),
            renewal_message(&other_serial, b"csr"),
            renewal_message(&serial, b"csr2"),
        ] {
            assert_eq!(
                verify_with_certificate(&cert, &wrong, &sig),
                Err(SignatureError::Invalid)
            );
        }
        // Another key: refused.
        let (_, other_cert) = device();
        assert_eq!(
            verify_with_certificate(&other_cert, &m, &sig),
            Err(SignatureError::Invalid)
        );
        // Garbage: refused, never a panic.
        for bad in [&[][..], &[0u8; 64][..], &[0x30, 0x02, 0x01][..]] {
            assert_eq!(
                verify_with_certificate(&cert, &m, bad),
                Err(SignatureError::Invalid)
            );
        }
        assert!(matches!(
            verify_with_certificate("not a certificate", &m, &sig),
            Err(SignatureError::Certificate(_))
        ));
    }

    #[test]
    fn labels_keep_purposes_apart() {
        let serial = Serial::parse("A").unwrap();
        assert_ne!(
            renewal_message(&serial, b"x"),
            confirmation_message(&serial, "x")
        );
    }
}

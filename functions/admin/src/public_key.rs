//! A device's public key, given by the factory, turned into the fingerprint the table stores
//! as its registered key. The server computes a CSR's fingerprint as SHA-256 of the DER
//! SubjectPublicKeyInfo, lowercase hex (`cvm_core::KeyFingerprint`); this module computes the
//! same from what ops have:
//!
//! - a file (`--public-key FILE`): PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as
//!   `openssl pkey -pubout` writes it), `CERTIFICATE` (its key) or `CERTIFICATE REQUEST`
//!   (its key, after its self-signature verifies, as the server checks it);
//! - a CSV cell: base64 of the DER SubjectPublicKeyInfo on one line
//!   (`openssl pkey -pubin -outform DER | base64 -w0`), or one of the PEM forms above with its
//!   line breaks written as `\n`.
//!
//! Only keys the server accepts are registered (EC P-256/P-384 with an uncompressed point,
//! as CSRs carry it, or RSA 2048 to 4096 bits): a key no CSR could ever match is refused here
//! rather than found out at the device's first boot. A private key is refused, and its
//! content never appears in a message.

use base64::Engine as _;
use cvm_core::{Csr, KeyFingerprint};

/// Largest public-key input read (an RSA-4096 certificate is under 2 KiB of PEM).
pub const MAX_INPUT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the public key is larger than {MAX_INPUT_BYTES} bytes")]
    TooLarge,
    #[error("this is a private key; give the device's public key instead (openssl pkey -in KEY -pubout)")]
    PrivateKey,
    #[error("not a PEM public key, certificate or certificate request (no BEGIN PUBLIC KEY, CERTIFICATE or CERTIFICATE REQUEST block)")]
    NoPem,
    #[error("not base64 of a DER SubjectPublicKeyInfo")]
    NotBase64,
    #[error("not a DER SubjectPublicKeyInfo: {0}")]
    Malformed(String),
    #[error("the certificate's key cannot be used: {0}")]
    Certificate(String),
    #[error("the certificate request cannot be used: {0}")]
    Request(String),
    #[error("key not accepted by the server: {0} (accepted: EC P-256, EC P-384, RSA 2048-4096)")]
    Unsupported(String),
}

/// The fingerprint of the key in a PEM text (a file's content).
pub fn fingerprint_from_pem(text: &str) -> Result<KeyFingerprint, KeyError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(KeyError::TooLarge);
    }
    let label = first_pem_label(text).ok_or(KeyError::NoPem)?;
    match label {
        "PUBLIC KEY" => {
            let block = pem_block(text, label).ok_or(KeyError::NoPem)?;
            let der = base64_body(block)?;
            fingerprint_from_spki_der(&der)
        }
        "CERTIFICATE" => {
            let block = pem_block(text, label).ok_or(KeyError::NoPem)?;
            cvm_core::csr::certified_key(block)
                .map(|k| k.fingerprint)
                .map_err(|e| KeyError::Certificate(e.to_string()))
        }
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
            let block = pem_block(text, label).ok_or(KeyError::NoPem)?;
            Csr::parse_pem(block)
                .map(|c| c.fingerprint().clone())
                .map_err(|e| KeyError::Request(e.to_string()))
        }
        l if l.contains("PRIVATE KEY") => Err(KeyError::PrivateKey),
        _ => Err(KeyError::NoPem),
    }
}

/// The fingerprint of the key in a CSV cell (see the module's documentation).
pub fn fingerprint_from_cell(cell: &str) -> Result<KeyFingerprint, KeyError> {
    let cell = cell.trim();
    if cell.len() > MAX_INPUT_BYTES {
        return Err(KeyError::TooLarge);
    }
    if cell.starts_with("-----BEGIN") {
        return fingerprint_from_pem(&cell.replace("\\n", "\n"));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(cell)
        .map_err(|_| KeyError::NotBase64)?;
    fingerprint_from_spki_der(&der)
}

/// SHA-256 of the DER SubjectPublicKeyInfo, exactly as the server computes a CSR's, for the
/// kinds of key the server accepts (`cvm_core::csr::public_key_fingerprint`).
pub fn fingerprint_from_spki_der(der: &[u8]) -> Result<KeyFingerprint, KeyError> {
    cvm_core::csr::public_key_fingerprint(der)
        .map(|(fingerprint, _)| fingerprint)
        .map_err(|e| match e {
            cvm_core::CsrError::UnsupportedKey(why) => KeyError::Unsupported(why),
            other => KeyError::Malformed(other.to_string()),
        })
}

/// The label of the first `-----BEGIN <label>-----` line.
fn first_pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let end = text[start..].find("-----")? + start;
    Some(&text[start..end])
}

/// The whole first block of this label, BEGIN to END lines included.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

/// The base64 body of a PEM block, decoded.
fn base64_body(block: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| KeyError::NotBase64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn csr_for(key: &rcgen::KeyPair, cn: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    /// The fingerprint the server computes for a CSR of this key.
    fn server_fingerprint(key: &rcgen::KeyPair) -> KeyFingerprint {
        Csr::parse_pem(&csr_for(key, "DEVICE-1"))
            .unwrap()
            .fingerprint()
            .clone()
    }

    #[test]
    fn every_accepted_form_gives_the_fingerprint_the_server_computes() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let expected = server_fingerprint(&key);
            let spki_pem = key.public_key_pem();
            assert_eq!(fingerprint_from_pem(&spki_pem).unwrap(), expected);
            assert_eq!(
                fingerprint_from_pem(&csr_for(&key, "FACTORY")).unwrap(),
                expected
            );
            let cert = rcgen::CertificateParams::new(vec!["x".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .pem();
            assert_eq!(fingerprint_from_pem(&cert).unwrap(), expected);
            // CSV cells: base64 DER, and PEM with escaped line breaks.
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(rcgen::PublicKeyData::subject_public_key_info(&key));
            assert_eq!(fingerprint_from_cell(&b64).unwrap(), expected);
            let escaped = spki_pem.trim_end().replace('\n', "\\n");
            assert_eq!(fingerprint_from_cell(&escaped).unwrap(), expected);
            // Text around the block (a comment, other blocks after) does not matter.
            let noisy =
                format!("device key\n{spki_pem}\n-----BEGIN FOO-----\nAA==\n-----END FOO-----\n");
            assert_eq!(fingerprint_from_pem(&noisy).unwrap(), expected);
        }
    }

    #[test]
    fn different_keys_different_fingerprints() {
        let a = rcgen::KeyPair::generate().unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        assert_ne!(
            fingerprint_from_pem(&a.public_key_pem()).unwrap(),
            fingerprint_from_pem(&b.public_key_pem()).unwrap()
        );
    }

    #[test]
    fn private_keys_are_refused_without_echoing_them() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = key.serialize_pem();
        let err = fingerprint_from_pem(&pem).unwrap_err();
        assert_eq!(err, KeyError::PrivateKey);
        let secret_line = pem.lines().nth(1).unwrap();
        assert!(!err.to_string().contains(secret_line));
        let err = fingerprint_from_cell(&pem.replace('\n', "\\n")).unwrap_err();
        assert_eq!(err, KeyError::PrivateKey);
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(
            fingerprint_from_pem(sec1).unwrap_err(),
            KeyError::PrivateKey
        );
    }

    #[test]
    fn refuses_what_no_csr_could_match() {
        // Ed25519: not an accepted key.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            fingerprint_from_pem(&ed.public_key_pem()),
            Err(KeyError::Unsupported(_))
        ));
        // A P-256 point in compressed form.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut der = rcgen::PublicKeyData::subject_public_key_info(&key);
        let n = der.len();
        let point = der[n - 65..].to_vec();
        let compressed_prefix = if point[64].is_multiple_of(2) {
            0x02
        } else {
            0x03
        };
        let mut spki = der[..n - 65].to_vec();
        // SEQUENCE and BIT STRING lengths shrink by 32.
        spki[1] -= 32;
        let bit_string_len_at = spki.len() - 2;
        spki[bit_string_len_at] -= 32;
        spki.push(compressed_prefix);
        spki.extend_from_slice(&point[1..33]);
        der = spki;
        assert!(matches!(
            fingerprint_from_spki_der(&der),
            Err(KeyError::Unsupported(_))
        ));
    }

    #[test]
    fn refuses_garbage_in_each_form() {
        for bad in [
            "",
            "hello",
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(fingerprint_from_pem(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            fingerprint_from_cell("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert!(matches!(
            fingerprint_from_cell("AAAA"),
            Err(KeyError::Malformed(_))
        ));
        let huge = "A".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(
            fingerprint_from_cell(&huge).unwrap_err(),
            KeyError::TooLarge
        );
        assert_eq!(fingerprint_from_pem(&huge).unwrap_err(), KeyError::TooLarge);
        // A CSR whose signature does not verify is refused, as the server would refuse it.
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = csr_for(&key, "X");
        let body: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        assert!(matches!(
            fingerprint_from_pem(&tampered),
            Err(KeyError::Request(_))
        ));
    }
}

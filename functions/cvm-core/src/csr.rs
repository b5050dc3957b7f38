//! PKCS#10 certificate signing requests from devices: parsed once, with proof of possession
//! (the self-signature verifies) and the key policy checked before anything else happens.

use std::fmt;

use der::asn1::ObjectIdentifier as Oid;
use der::pem::LineEnding;
use der::{Decode, DecodePem, Encode, EncodePem};
use ring::digest;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage};
use x509_cert::ext::Extension;
use x509_cert::request::CertReq;
use x509_cert::Certificate;

/// Largest CSR accepted, in bytes of PEM. An RSA-4096 CSR is under 2 KiB; the slack allows
/// a few extension requests without letting a client make us parse megabytes.
pub const MAX_CSR_PEM_BYTES: usize = 12 * 1024;

const ID_EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
/// PKCS#9 extensionRequest, and Microsoft's older attribute of the same meaning.
const EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.14");
const MS_EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.14");
const SUBJECT_ALT_NAME: Oid = Oid::new_unwrap("2.5.29.17");
const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
const EXTENDED_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
const CLIENT_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.2");
const SERVER_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.1");
const ANY_EXTENDED_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37.0");

/// Why a CSR was refused. Each variant has a stable code for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is larger than {MAX_CSR_PEM_BYTES} bytes")]
    TooLarge,
    #[error("CSR is not a PEM-encoded PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
    #[error("CSR signature algorithm is not supported (use ECDSA with SHA-256/384 or RSA PKCS#1 v1.5 with SHA-256/384/512)")]
    UnsupportedSignatureAlgorithm,
    #[error("CSR key is not accepted: {0}")]
    UnsupportedKey(String),
    #[error("CSR subject must have exactly one common name (CN)")]
    MissingCommonName,
    /// The certificate's names and usages are the server's to decide: a CSR that asks for
    /// alternative names, CA rights or key usages is refused rather than trimmed.
    #[error("CSR requests the {0} extension; the server decides a certificate's extensions (send a CSR with a subject and a key only)")]
    ExtensionNotAllowed(&'static str),
}

impl CsrError {
    /// Stable machine-readable code, part of the API contract.
    pub fn code(&self) -> &'static str {
        match self {
            CsrError::TooLarge => "csr_too_large",
            CsrError::Malformed(_) => "csr_malformed",
            CsrError::BadSignature => "csr_signature_invalid",
            CsrError::UnsupportedSignatureAlgorithm => "csr_signature_algorithm_unsupported",
            CsrError::UnsupportedKey(_) => "csr_key_unsupported",
            CsrError::MissingCommonName => "csr_subject_invalid",
            CsrError::ExtensionNotAllowed(_) => "csr_extension_not_allowed",
        }
    }
}

/// The kind of key a CSR carries; only these are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    EcP384,
    Rsa { bits: usize },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcP256 => f.write_str("EC P-256"),
            KeyKind::EcP384 => f.write_str("EC P-384"),
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex: identifies a device key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct KeyFingerprint(String);

impl KeyFingerprint {
    fn of_spki_der(spki_der: &[u8]) -> Self {
        Self(hex::encode(digest::digest(&digest::SHA256, spki_der)))
    }
    /// Accepts a stored fingerprint (64 lowercase hex characters).
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == 64
            && raw
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        ok.then(|| Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CSR whose self-signature verified, whose key passed the policy and which requests no
/// extension the server decides.
#[derive(Debug, Clone)]
pub struct Csr {
    /// The DER that was checked; what is sent on is re-encoded from it, never the text as
    /// received (which may carry anything around or between its PEM lines).
    der: Vec<u8>,
    pem: String,
    common_name: String,
    key_kind: KeyKind,
    fingerprint: KeyFingerprint,
    spki_der: Vec<u8>,
}

impl Csr {
    pub fn parse_pem(pem: &str) -> Result<Self, CsrError> {
        if pem.len() > MAX_CSR_PEM_BYTES {
            return Err(CsrError::TooLarge);
        }
        // Some tools write the legacy "NEW CERTIFICATE REQUEST" label; accept both.
        let normalized = pem
            .trim()
            .replace("NEW CERTIFICATE REQUEST", "CERTIFICATE REQUEST");
        let req = CertReq::from_pem(normalized.as_bytes())
            .map_err(|e| CsrError::Malformed(e.to_string()))?;

        let spki = &req.info.public_key;
        let spki_der = spki
            .to_der()
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let key_bytes = spki.subject_public_key.raw_bytes();
        let key_kind = key_kind(spki)?;

        let algorithm = verification_algorithm(key_kind, &req.algorithm.oid)?;
        // DER decoding is strict, so re-encoding the request info yields the exact signed bytes.
        let signed = req
            .info
            .to_der()
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let sig = req
            .signature
            .as_bytes()
            .ok_or_else(|| CsrError::Malformed("signature has unused bits".into()))?;
        UnparsedPublicKey::new(algorithm, key_bytes)
            .verify(&signed, sig)
            .map_err(|_| CsrError::BadSignature)?;

        let common_name = single_common_name(&req.info.subject)?;
        refuse_extension_requests(&req)?;

        let der = req
            .to_der()
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let pem = req
            .to_pem(LineEnding::LF)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        Ok(Self {
            der,
            pem,
            common_name,
            key_kind,
            fingerprint: KeyFingerprint::of_spki_der(&spki_der),
            spki_der,
        })
    }

    /// PEM re-encoded from the checked DER.
    pub fn pem(&self) -> &str {
        &self.pem
    }
    /// The checked DER of the whole request.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    pub fn common_name(&self) -> &str {
        &self.common_name
    }
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }
    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }

    /// Whether a certificate (PEM) certifies this CSR's public key. Issuers are checked with
    /// this before a certificate is ever delivered.
    pub fn is_certified_by(&self, certificate_pem: &str) -> Result<bool, CsrError> {
        let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
            .map_err(|e| CsrError::Malformed(format!("issued certificate: {e}")))?;
        let der = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| CsrError::Malformed(format!("issued certificate: {e}")))?;
        Ok(der == self.spki_der)
    }
}

/// The extension requests that would let a device choose what the server decides.
fn refuse_extension_requests(req: &CertReq) -> Result<(), CsrError> {
    for attribute in req.info.attributes.iter() {
        if attribute.oid != EXTENSION_REQUEST && attribute.oid != MS_EXTENSION_REQUEST {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: Vec<Extension> = value
                .decode_as()
                .map_err(|e| CsrError::Malformed(format!("extension request: {e}")))?;
            for extension in &extensions {
                let name = match extension.extn_id {
                    id if id == SUBJECT_ALT_NAME => "subjectAltName",
                    id if id == BASIC_CONSTRAINTS => "basicConstraints",
                    id if id == KEY_USAGE => "keyUsage",
                    id if id == EXTENDED_KEY_USAGE => "extendedKeyUsage",
                    // A critical extension we do not know could mean anything to a CA.
                    _ if extension.critical => "critical",
                    _ => continue,
                };
                return Err(CsrError::ExtensionNotAllowed(name));
            }
        }
    }
    Ok(())
}

/// Why an issued certificate is not what a device may hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateShapeError {
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate is a CA certificate (basicConstraints CA:TRUE)")]
    CaCertificate,
    #[error("the certificate carries subject alternative names")]
    AlternativeNames,
    #[error(
        "the certificate does not allow TLS client authentication (extendedKeyUsage clientAuth)"
    )]
    NotClientAuth,
    #[error("the certificate also allows {0}")]
    ExtraUsage(&'static str),
}

/// Checks what a private CA issued for a device: an end entity (no CA:TRUE), without
/// alternative names, for TLS client authentication only. The CA's template decides these,
/// so this catches a misconfigured or substituted template before a certificate is delivered.
pub fn check_device_certificate_shape(certificate_pem: &str) -> Result<(), CertificateShapeError> {
    let unreadable = |e: der::Error| CertificateShapeError::Unreadable(e.to_string());
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes()).map_err(unreadable)?;
    let tbs = cert.tbs_certificate();
    if let Some((_, constraints)) = tbs
        .get_extension::<BasicConstraints>()
        .map_err(unreadable)?
    {
        if constraints.ca {
            return Err(CertificateShapeError::CaCertificate);
        }
    }
    let extensions = tbs.extensions().map(|e| e.as_slice()).unwrap_or_default();
    if extensions.iter().any(|e| e.extn_id == SUBJECT_ALT_NAME) {
        return Err(CertificateShapeError::AlternativeNames);
    }
    let Some((_, usages)) = tbs
        .get_extension::<ExtendedKeyUsage>()
        .map_err(unreadable)?
    else {
        return Err(CertificateShapeError::NotClientAuth);
    };
    if !usages.0.contains(&CLIENT_AUTH) {
        return Err(CertificateShapeError::NotClientAuth);
    }
    if usages.0.contains(&SERVER_AUTH) {
        return Err(CertificateShapeError::ExtraUsage(
            "TLS server authentication",
        ));
    }
    if usages.0.contains(&ANY_EXTENDED_KEY_USAGE) {
        return Err(CertificateShapeError::ExtraUsage("any extended key usage"));
    }
    Ok(())
}

/// A certificate's public key: its kind, the raw key bytes (an EC point or a PKCS#1 RSA key,
/// as signature verification takes them) and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub kind: KeyKind,
    pub key_bytes: Vec<u8>,
    pub fingerprint: KeyFingerprint,
}

/// The public key a certificate (PEM) carries, if it is of a kind devices may hold.
pub fn certified_key(certificate_pem: &str) -> Result<CertifiedKey, CsrError> {
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    let der = spki
        .to_der()
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    Ok(CertifiedKey {
        kind: key_kind(spki)?,
        key_bytes: spki.subject_public_key.raw_bytes().to_vec(),
        fingerprint: KeyFingerprint::of_spki_der(&der),
    })
}

/// The single common name of a certificate's subject.
pub fn certificate_common_name(certificate_pem: &str) -> Result<String, CsrError> {
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    single_common_name(cert.tbs_certificate().subject())
}

/// A certificate's `notAfter`, in seconds since the Unix epoch.
pub fn certificate_not_after(certificate_pem: &str) -> Result<i64, CsrError> {
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    let t = cert
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration();
    i64::try_from(t.as_secs()).map_err(|_| CsrError::Malformed("certificate: notAfter".into()))
}

/// AWS IoT's id of a certificate: SHA-256 of its DER, lowercase hex.
pub fn certificate_id(certificate_pem: &str) -> Result<String, CsrError> {
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    let der = cert
        .to_der()
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    Ok(hex::encode(digest::digest(&digest::SHA256, &der)))
}

/// The fingerprint of a bare public key (DER SubjectPublicKeyInfo), computed exactly as for a
/// CSR's key, for registering a device's key before it ever sends a CSR. Only keys a CSR could
/// match are accepted: the kinds [`Csr::parse_pem`] accepts, EC points uncompressed (as CSRs
/// carry them).
pub fn public_key_fingerprint(spki_der: &[u8]) -> Result<(KeyFingerprint, KeyKind), CsrError> {
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
        .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
    let kind = key_kind(&spki)?;
    let point_len = match kind {
        KeyKind::EcP256 => Some(65),
        KeyKind::EcP384 => Some(97),
        KeyKind::Rsa { .. } => None,
    };
    if let Some(len) = point_len {
        let point = spki.subject_public_key.raw_bytes();
        if point.len() != len || point.first() != Some(&0x04) {
            return Err(CsrError::UnsupportedKey(
                "EC point not in uncompressed form (CSRs carry it uncompressed)".into(),
            ));
        }
    }
    // Re-encoded from the strict decoding, as the CSR's key is.
    let der = spki
        .to_der()
        .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
    Ok((KeyFingerprint::of_spki_der(&der), kind))
}

/// The fingerprint of the public key a certificate (PEM) carries.
pub fn certificate_key_fingerprint(certificate_pem: &str) -> Result<KeyFingerprint, CsrError> {
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    let der = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    Ok(KeyFingerprint::of_spki_der(&der))
}

fn key_kind(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Result<KeyKind, CsrError> {
    let oid = spki.algorithm.oid;
    if oid == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<Oid>().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        return match curve {
            c if c == SECP256R1 => Ok(KeyKind::EcP256),
            c if c == SECP384R1 => Ok(KeyKind::EcP384),
            other => Err(CsrError::UnsupportedKey(format!(
                "EC curve {other} (accepted: P-256, P-384)"
            ))),
        };
    }
    if oid == RSA_ENCRYPTION {
        let key = pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(
            spki.subject_public_key.raw_bytes(),
        )
        .map_err(|e| CsrError::Malformed(format!("RSA public key: {e}")))?;
        let modulus = key.modulus.as_bytes();
        let bits = match modulus.iter().position(|b| *b != 0) {
            Some(i) => (modulus.len() - i) * 8 - modulus[i].leading_zeros() as usize,
            None => 0,
        };
        if !(2048..=4096).contains(&bits) {
            return Err(CsrError::UnsupportedKey(format!(
                "RSA-{bits} (accepted: 2048 to 4096 bits)"
            )));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    Err(CsrError::UnsupportedKey(format!(
        "algorithm {oid} (accepted: EC P-256, EC P-384, RSA 2048-4096)"
    )))
}

fn verification_algorithm(
    key: KeyKind,
    sig_oid: &Oid,
) -> Result<&'static dyn VerificationAlgorithm, CsrError> {
    let alg: &'static dyn VerificationAlgorithm = match (key, *sig_oid) {
        (KeyKind::EcP256, o) if o == ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcP256, o) if o == ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcP384, o) if o == ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyKind::EcP384, o) if o == ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyKind::Rsa { .. }, o) if o == SHA256_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA256,
        (KeyKind::Rsa { .. }, o) if o == SHA384_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA384,
        (KeyKind::Rsa { .. }, o) if o == SHA512_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA512,
        _ => return Err(CsrError::UnsupportedSignatureAlgorithm),
    };
    Ok(alg)
}

fn single_common_name(subject: &x509_cert::name::Name) -> Result<String, CsrError> {
    let mut names = subject.iter().filter(|atv| atv.oid == COMMON_NAME);
    let first = names.next().ok_or(CsrError::MissingCommonName)?;
    if names.next().is_some() {
        return Err(CsrError::MissingCommonName);
    }
    let value = x509_cert::ext::pkix::name::DirectoryString::try_from(&first.value)
        .map_err(|_| CsrError::MissingCommonName)?;
    Ok(value.value().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn accepts_supported_keys() {
        for (file, kind) in [
            ("p256.csr.pem", KeyKind::EcP256),
            ("p256-sha384.csr.pem", KeyKind::EcP256),
            ("p384.csr.pem", KeyKind::EcP384),
            ("rsa2048.csr.pem", KeyKind::Rsa { bits: 2048 }),
        ] {
            let csr = Csr::parse_pem(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(csr.key_kind(), kind, "{file}");
            assert_eq!(csr.common_name(), "DEVICE-0001");
            assert_eq!(csr.fingerprint().as_str().len(), 64);
        }
    }

    #[test]
    fn same_key_same_fingerprint() {
        let a = Csr::parse_pem(&fixture("p256.csr.pem")).unwrap();
        let b = Csr::parse_pem(&fixture("p256-sha384.csr.pem")).unwrap();
        let c = Csr::parse_pem(&fixture("p384.csr.pem")).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn refuses_each_bad_shape_with_its_own_code() {
        let cases = [
            ("tampered.csr.pem", "csr_signature_invalid"),
            ("rsa1024.csr.pem", "csr_key_unsupported"),
            ("ed25519.csr.pem", "csr_key_unsupported"),
            ("p521.csr.pem", "csr_key_unsupported"),
            ("p256-no-cn.csr.pem", "csr_subject_invalid"),
        ];
        for (file, code) in cases {
            let err = Csr::parse_pem(&fixture(file)).unwrap_err();
            assert_eq!(err.code(), code, "{file}: {err}");
        }
    }

    #[test]
    fn refuses_garbage_and_oversize() {
        for bad in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
        ] {
            assert_eq!(
                Csr::parse_pem(bad).unwrap_err().code(),
                "csr_malformed",
                "{bad:?}"
            );
        }
        let huge = "A".repeat(MAX_CSR_PEM_BYTES + 1);
        assert_eq!(Csr::parse_pem(&huge).unwrap_err(), CsrError::TooLarge);
        // A certificate is not a request.
        let not_csr = fixture("p256.csr.pem").replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert_eq!(
            Csr::parse_pem(&not_csr).unwrap_err().code(),
            "csr_malformed"
        );
    }

    fn rcgen_csr(edit: &dyn Fn(&mut rcgen::CertificateParams)) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DEVICE-0001");
        edit(&mut params);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn extension_requests_the_server_decides_are_refused() {
        type Edit<'a> = &'a dyn Fn(&mut rcgen::CertificateParams);
        let cases: [(Edit, &str); 5] = [
            (
                &|p| {
                    p.subject_alt_names =
                        vec![rcgen::SanType::DnsName("bank.example".try_into().unwrap())]
                },
                "subjectAltName",
            ),
            (
                &|p| {
                    p.subject_alt_names =
                        vec![rcgen::SanType::URI("spiffe://x/y".try_into().unwrap())]
                },
                "subjectAltName",
            ),
            (
                &|p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
                "extendedKeyUsage",
            ),
            (
                &|p| p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign],
                "keyUsage",
            ),
            (
                &|p| {
                    p.custom_extensions = vec![{
                        let mut e = rcgen::CustomExtension::from_oid_content(
                            &[1, 3, 6, 1, 4, 1, 99999, 1],
                            vec![0x05, 0x00],
                        );
                        e.set_criticality(true);
                        e
                    }]
                },
                "critical",
            ),
        ];
        for (edit, name) in cases {
            let err = Csr::parse_pem(&rcgen_csr(edit)).unwrap_err();
            assert_eq!(err.code(), "csr_extension_not_allowed", "{name}: {err}");
            assert_eq!(err, CsrError::ExtensionNotAllowed(name));
        }
        // basicConstraints: rcgen does not put it in requests; build the attribute by hand.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DEVICE-0001");
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 19],
            // SEQUENCE { BOOLEAN TRUE }: CA:TRUE
            vec![0x30, 0x03, 0x01, 0x01, 0xff],
        )];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        assert_eq!(
            Csr::parse_pem(&pem).unwrap_err(),
            CsrError::ExtensionNotAllowed("basicConstraints")
        );
        // A harmless, non-critical request is no reason to refuse.
        let benign = rcgen_csr(&|p| {
            p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 2],
                vec![0x05, 0x00],
            )]
        });
        assert!(Csr::parse_pem(&benign).is_ok());
    }

    #[test]
    fn what_is_passed_on_is_re_encoded_from_the_checked_der() {
        let pem = fixture("p256.csr.pem");
        // Explanatory text before the block (RFC 7468 allows it) is never passed on...
        let noisy = format!("junk before\n{}\n", pem.trim());
        assert!(!Csr::parse_pem(&noisy).unwrap().pem().contains("junk"));
        // ...and what is accepted is sent on in one canonical form, not as received.
        let crlf = pem.trim().replace('\n', "\r\n");
        let csr = Csr::parse_pem(&crlf).unwrap();
        assert!(!csr.pem().contains('\r'));
        assert_ne!(csr.pem(), crlf);
        assert!(csr
            .pem()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        let again = Csr::parse_pem(csr.pem()).unwrap();
        assert_eq!(again.der(), csr.der());
        assert_eq!(again.fingerprint(), csr.fingerprint());
    }

    #[test]
    fn a_registered_public_key_has_the_fingerprint_of_its_csrs() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DEVICE-0001");
        let csr = Csr::parse_pem(&params.serialize_request(&key).unwrap().pem().unwrap()).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_pem(key.public_key_pem().as_bytes())
            .unwrap()
            .to_der()
            .unwrap();
        let (fingerprint, kind) = public_key_fingerprint(&spki).unwrap();
        assert_eq!(&fingerprint, csr.fingerprint());
        assert_eq!(kind, KeyKind::EcP256);
        assert!(public_key_fingerprint(b"garbage").is_err());
    }

    #[test]
    fn legacy_label_is_accepted() {
        let legacy =
            fixture("p256.csr.pem").replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert!(Csr::parse_pem(&legacy).is_ok());
    }

    #[test]
    fn every_single_byte_flip_is_refused_or_unchanged_in_meaning() {
        // Flip each byte of the DER: the result must never parse as a valid CSR with a
        // different key or subject than the original (proof of possession holds).
        use base64::Engine as _;
        let pem = fixture("p256.csr.pem");
        let original = Csr::parse_pem(&pem).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0x01;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&d);
            let p = format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
            );
            if let Ok(csr) = Csr::parse_pem(&p) {
                assert_eq!(csr.fingerprint(), original.fingerprint(), "byte {i}");
                assert_eq!(csr.common_name(), original.common_name(), "byte {i}");
            }
        }
    }
}

//! A PKCS#10 CSR signed inside the key store, and the encodings the store's raw values need
//! (SubjectPublicKeyInfo, DER ECDSA signatures) shared with the TLS client key.

use p256::ecdsa::Signature;
use rcgen::{CertificateParams, DnType, PublicKeyData, SignatureAlgorithm, SigningKey};
use sha2::{Digest, Sha256};

use crate::keystore::{KeyStore, KeyStoreError};

/// Presents a [`KeyStore`] to rcgen as a signing key: rcgen asks for a signature over the
/// request info, we hash it, let the store sign the digest and DER-encode `r || s`.
struct StoreSigner<'a> {
    store: &'a dyn KeyStore,
    public_key: [u8; 65],
}

/// A bare P-256 public point, for the encodings rcgen knows.
struct Point<'a>(&'a [u8; 65]);

impl PublicKeyData for Point<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl PublicKeyData for StoreSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for StoreSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        sign_message(self.store, msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// ECDSA P-256 with SHA-256 over `message`, by the store, DER-encoded (X.509, PKCS#10 and
/// TLS all want DER; the stores give `r || s`).
pub fn sign_message(store: &dyn KeyStore, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
    let digest: [u8; 32] = Sha256::digest(message).into();
    let raw = store.sign_digest(&digest)?;
    let signature = Signature::from_slice(&raw).map_err(|_| {
        KeyStoreError::Signing("the key store returned an invalid signature".into())
    })?;
    Ok(signature.to_der().as_bytes().to_vec())
}

/// The DER SubjectPublicKeyInfo of a P-256 point.
pub fn spki_der(public_key: &[u8; 65]) -> Vec<u8> {
    Point(public_key).subject_public_key_info()
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error("could not build the CSR: {0}")]
    Build(String),
}

/// A CSR in both encodings: PEM to send, DER to sign over (a renewal request signs it).
#[derive(Debug, Clone)]
pub struct SignedCsr {
    pub pem: String,
    pub der: Vec<u8>,
}

/// A CSR whose subject is `CN=<common_name>`, signed by the store's key.
pub fn build_csr(store: &dyn KeyStore, common_name: &str) -> Result<String, CsrError> {
    Ok(build_signed_csr(store, common_name)?.pem)
}

/// [`build_csr`], in both encodings.
pub fn build_signed_csr(store: &dyn KeyStore, common_name: &str) -> Result<SignedCsr, CsrError> {
    let signer = StoreSigner {
        store,
        public_key: store.public_key()?,
    };
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| CsrError::Build(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&signer)
        .map_err(|e| CsrError::Build(e.to_string()))?;
    Ok(SignedCsr {
        pem: csr.pem().map_err(|e| CsrError::Build(e.to_string()))?,
        der: csr.der().to_vec(),
    })
}

/// SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex: the same fingerprint the server
/// records, so a device can tell whether a stored certificate is for its key.
pub fn key_fingerprint(store: &dyn KeyStore) -> Result<String, KeyStoreError> {
    let spki = spki_der(&store.public_key()?);
    Ok(Sha256::digest(&spki)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

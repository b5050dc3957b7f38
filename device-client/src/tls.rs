//! TLS client authentication with the key store's key: a rustls signing key whose every
//! signature is made by the store (for Zymkey and PKCS#11, inside the module), and the HTTPS
//! client built on it for AWS IoT's endpoints.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ClientConfig, RootCertStore, SignatureAlgorithm, SignatureScheme};

use crate::csr::{sign_message, spki_der};
use crate::files::Sharing;
use crate::keystore::{KeyStore, KeyStoreError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path} is not the certificate of this device's key ({key}); enroll again")]
    KeyMismatch { path: PathBuf, key: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The store's key as rustls sees it: ECDSA P-256, one scheme.
#[derive(Clone)]
pub struct StoreSigningKey {
    store: Arc<dyn KeyStore>,
    spki: Vec<u8>,
}

impl StoreSigningKey {
    pub fn new(store: Arc<dyn KeyStore>) -> Result<Self, KeyStoreError> {
        let spki = spki_der(&store.public_key()?);
        Ok(Self { store, spki })
    }
}

impl std::fmt::Debug for StoreSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSigningKey")
            .field("store", &self.store.describe())
            .finish()
    }
}

impl SigningKey for StoreSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for StoreSigningKey {
    /// SHA-256 of the handshake message, signed by the store, DER-encoded.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        sign_message(self.store.as_ref(), message)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Always offers the client certificate when its key can sign with a scheme the server
/// accepts (the server decides whether the certificate is acceptable).
#[derive(Debug)]
struct DeviceIdentity(Arc<CertifiedKey>);

impl ResolvesClientCert for DeviceIdentity {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0
            .key
            .choose_scheme(schemes)
            .is_some()
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    certificates_from_pem(&pem, path)
}

/// The certificates of a PEM text (at least one), `origin` naming where it comes from in
/// messages.
pub fn certificates_from_pem(
    pem: &str,
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |message: String| TlsError::File {
        path: origin.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The text of a PEM file of CA certificates, checked to hold at least one.
pub fn pem_bundle(path: &Path) -> Result<String, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    certificates_from_pem(&pem, path)?;
    Ok(pem)
}

/// The key a TLS client authenticates with.
pub enum ClientKey {
    /// In a key store: every signature is made by the store (inside the module for Zymkey and
    /// PKCS#11).
    Store(Arc<dyn KeyStore>),
    /// A PEM private key file (PKCS#8, SEC1 or PKCS#1; EC or RSA), such as a fleet's claim
    /// key, readable by its owner only (or also by the group it is shared with).
    File { path: PathBuf, sharing: Sharing },
}

impl ClientKey {
    /// Which key this is, for messages; never key material.
    pub fn describe(&self) -> String {
        match self {
            Self::Store(store) => store.describe(),
            Self::File { path, .. } => format!("file:{}", path.display()),
        }
    }

    fn signing_key(&self) -> Result<Arc<dyn SigningKey>, TlsError> {
        match self {
            Self::Store(store) => Ok(Arc::new(StoreSigningKey::new(store.clone())?)),
            Self::File { path, sharing } => load_key_file(path, *sharing),
        }
    }
}

/// A private key file as rustls signs with it, after checking that only its owner (or the
/// group it is shared with) can read it.
fn load_key_file(path: &Path, sharing: Sharing) -> Result<Arc<dyn SigningKey>, TlsError> {
    let file_err = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    let allowed = if sharing.gid() == Some(meta.gid()) {
        0o640
    } else {
        0o600
    };
    if mode & !allowed != 0 {
        return Err(file_err(format!(
            "mode {mode:o} lets others read the private key; chmod 600 it"
        )));
    }
    // The parse error says nothing of the key's bytes.
    let der = PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_err(format!("not a PEM private key: {e}")))?;
    rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| file_err(format!("unusable private key: {e}")))
}

/// The PEM CA certificates in `path` as trust roots.
fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certificates(path)?);
    if added == 0 {
        return Err(TlsError::File {
            path: path.to_owned(),
            message: "no usable CA certificate in the file".into(),
        });
    }
    Ok(roots)
}

/// A TLS client config presenting `certificate` (PEM, the device certificate first, then any
/// chain) with the store's key, trusting only the roots in `server_ca` (PEM).
pub fn client_config(
    store: Arc<dyn KeyStore>,
    certificate: &Path,
    server_ca: &Path,
) -> Result<ClientConfig, TlsError> {
    identity_config(&ClientKey::Store(store), certificate, server_ca, &[])
}

/// A TLS client config presenting `certificate` (PEM, the client certificate first, then any
/// chain) with `key`, trusting only the roots in `server_ca` (PEM), offering the ALPN
/// protocols `alpn` (none when empty). The certificate must be `key`'s.
pub fn identity_config(
    key: &ClientKey,
    certificate: &Path,
    server_ca: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    identity_config_for(
        key,
        read_certificates(certificate)?,
        certificate,
        server_ca,
        alpn,
    )
}

/// [`identity_config`] for a certificate chain in memory; `origin` names it in messages.
pub fn identity_config_for(
    key: &ClientKey,
    chain: Vec<CertificateDer<'static>>,
    origin: &Path,
    server_ca: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let certificate = origin;
    let roots = roots(server_ca)?;
    let certified = CertifiedKey::new(chain, key.signing_key()?);
    certified.keys_match().map_err(|_| match key {
        ClientKey::Store(_) => TlsError::KeyMismatch {
            path: certificate.to_owned(),
            key: key.describe(),
        },
        ClientKey::File { path, .. } => TlsError::File {
            path: certificate.to_owned(),
            message: format!("not the certificate of the key in {}", path.display()),
        },
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(DeviceIdentity(Arc::new(certified))));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A public key only: what [`CertifiedKey::keys_match`] needs to compare a certificate with.
#[derive(Debug)]
struct PublicKeyOnly(Vec<u8>);

impl SigningKey for PublicKeyOnly {
    fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        None
    }
    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.as_slice()))
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

/// Whether the first certificate in `pem` carries the store's public key.
pub fn certificate_is_for(store: &dyn KeyStore, pem: &str) -> Result<bool, KeyStoreError> {
    let Some(Ok(cert)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return Ok(false);
    };
    let key = PublicKeyOnly(spki_der(&store.public_key()?));
    Ok(CertifiedKey::new(vec![cert], Arc::new(key))
        .keys_match()
        .is_ok())
}

/// An HTTPS-only client over [`client_config`].
pub fn mtls_client(
    store: Arc<dyn KeyStore>,
    certificate: &Path,
    server_ca: &Path,
) -> Result<reqwest::Client, TlsError> {
    let config = client_config(store, certificate, server_ca)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("cvm-device/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TlsError::Setup(e.to_string()))
}

/// `host[:port]` or `https://host[:port][/]` as `https://host:port`, with `default_port` when
/// none is given.
pub fn https_base(endpoint: &str, default_port: u16) -> Result<String, String> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let authority = match trimmed.split_once("://") {
        None => trimmed,
        Some(("https", rest)) => rest,
        Some((scheme, _)) => return Err(format!("endpoint {endpoint:?}: {scheme} is not https")),
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "endpoint {endpoint:?}: expected a host name, optionally with :port"
        ));
    }
    // A port is the digits after the last ':' outside an IPv6 literal's brackets.
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    });
    Ok(if has_port {
        format!("https://{authority}")
    } else {
        format!("https://{authority}:{default_port}")
    })
}

/// reqwest's errors say "error sending request"; the cause (refused, TLS, DNS) is deeper.
/// One line, whatever the causes contain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    // reqwest's own words ("error sending request for url (...)") repeat the URL the caller
    // already names; the causes say what happened.
    if let Some(cause) = source.filter(|_| message.starts_with("error sending request")) {
        message = cause.to_string();
        source = cause.source();
    }
    while let Some(s) = source {
        let next = s.to_string();
        if !message.contains(&next) {
            message.push_str(": ");
            message.push_str(&next);
        }
        source = s.source();
    }
    one_line(&message)
}

/// Control characters (newlines from a server's message, say) as spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_https_bases() {
        let cases = [
            (
                "abc-ats.iot.eu-west-1.amazonaws.com",
                "https://abc-ats.iot.eu-west-1.amazonaws.com:8443",
            ),
            ("https://abc.example.com/", "https://abc.example.com:8443"),
            ("127.0.0.1:4433", "https://127.0.0.1:4433"),
            ("[::1]", "https://[::1]:8443"),
            ("[::1]:9", "https://[::1]:9"),
        ];
        for (input, want) in cases {
            assert_eq!(https_base(input, 8443).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "http://a.example.com",
            "",
            "a.example.com/path",
            "user@host",
        ] {
            assert!(https_base(bad, 443).is_err(), "{bad}");
        }
    }

    /// A self-signed certificate for `key`, and a CA file to trust, written in `dir`; the key
    /// file 0600.
    fn claim_files(dir: &Path, key: &rcgen::KeyPair) -> (PathBuf, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let params = rcgen::CertificateParams::new(vec!["claim".to_owned()])
            .unwrap_or_else(|e| unreachable!("{e}"));
        let cert = params
            .self_signed(key)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let (cert_path, key_path, ca_path) = (
            dir.join("claim.pem"),
            dir.join("claim.key"),
            dir.join("ca.pem"),
        );
        let _ = std::fs::write(&cert_path, cert.pem());
        let _ = std::fs::write(&ca_path, cert.pem());
        let _ = std::fs::write(&key_path, key.serialize_pem());
        let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600));
        (cert_path, key_path, ca_path)
    }

    #[test]
    fn claim_keys_in_files_may_be_rsa_or_ec_and_must_match_and_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let alpn: &[&[u8]] = &[b"x-amzn-mqtt-ca"];
        for algorithm in [&rcgen::PKCS_RSA_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256] {
            let key =
                rcgen::KeyPair::generate_for(algorithm).unwrap_or_else(|e| unreachable!("{e}"));
            let (cert, key_path, ca) = claim_files(tmp.path(), &key);
            let claim = ClientKey::File {
                path: key_path.clone(),
                sharing: Sharing::PRIVATE,
            };
            let config = identity_config(&claim, &cert, &ca, alpn);
            assert!(config.is_ok(), "{algorithm:?}: {:?}", config.err());
            assert_eq!(
                config.map(|c| c.alpn_protocols).unwrap_or_default(),
                [b"x-amzn-mqtt-ca".to_vec()]
            );
            let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644));
            let err = identity_config(&claim, &cert, &ca, alpn)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("chmod 600"), "{err}");
        }
        // A certificate for another key than the file's.
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let (cert, _, ca) = claim_files(tmp.path(), &key);
        let other = rcgen::KeyPair::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let other_path = tmp.path().join("other.key");
        let _ = std::fs::write(&other_path, other.serialize_pem());
        let _ = std::fs::set_permissions(&other_path, std::fs::Permissions::from_mode(0o600));
        let claim = ClientKey::File {
            path: other_path,
            sharing: Sharing::PRIVATE,
        };
        let err = identity_config(&claim, &cert, &ca, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not the certificate of the key in"), "{err}");
        // Not a key at all.
        let junk = tmp.path().join("junk.key");
        let _ = std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let _ = std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600));
        let claim = ClientKey::File {
            path: junk,
            sharing: Sharing::PRIVATE,
        };
        let err = identity_config(&claim, &cert, &ca, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a PEM private key"), "{err}");
    }

    #[test]
    fn messages_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}

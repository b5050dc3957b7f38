//! A PKCS#8 PEM key file, for development and for devices without a security module.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;

use super::{KeyStore, KeyStoreError};

/// A PKCS#8 PEM key file, for development and for devices without a security module.
/// Created with mode 0600; refused if others can read it.
pub struct FileKeyStore {
    path: PathBuf,
    key: SigningKey,
}

impl FileKeyStore {
    pub fn open_or_create(path: &Path) -> Result<Self, KeyStoreError> {
        let err = |message: String| KeyStoreError::File {
            path: path.to_owned(),
            message,
        };
        if !path.exists() {
            create_key_file(path).map_err(|e| err(e.to_string()))?;
        }
        Self::open(path)
    }

    /// An existing key file; a missing one is an error (commands after `enroll` must not
    /// invent a key the certificate is not for).
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        let err = |message: String| KeyStoreError::File {
            path: path.to_owned(),
            message,
        };
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read the private key; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let pem = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| err("not a PKCS#8 PEM P-256 private key".into()))?;
        Ok(Self {
            path: path.to_owned(),
            key,
        })
    }
}

/// A fresh P-256 key, written to a temporary file with 0600 from its creation, then renamed
/// into place: an interrupted run leaves either no key or a whole one.
fn create_key_file(path: &Path) -> std::io::Result<()> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(std::io::Error::other)?;
    let pem = pair.serialize_pem();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::ensure_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

impl KeyStore for FileKeyStore {
    fn public_key(&self) -> Result<[u8; 65], KeyStoreError> {
        let point = self.key.verifying_key().to_sec1_point(false);
        point
            .as_bytes()
            .try_into()
            .map_err(|_| KeyStoreError::Signing("unexpected public key encoding".into()))
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], KeyStoreError> {
        let sig: Signature = self
            .key
            .sign_prehash(digest)
            .map_err(|e| KeyStoreError::Signing(e.to_string()))?;
        let bytes = sig.to_bytes();
        let mut out = [0u8; 64];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

//! A PKCS#8 PEM key file, for development and for devices without a security module.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;

use super::{KeyStore, KeyStoreError};
use crate::files::Sharing;

/// A PKCS#8 PEM key file, for development and for devices without a security module.
/// Created with mode 0600 (0640, group-owned, when shared with a group); refused if anyone
/// else can read it. The key is in this process's memory while it runs.
pub struct FileKeyStore {
    path: PathBuf,
    key: SigningKey,
}

impl FileKeyStore {
    /// The key file, created if absent; its mode and group are brought in line with `sharing`
    /// (enroll runs again after `group` was set or removed).
    pub fn open_or_create(path: &Path, sharing: Sharing) -> Result<Self, KeyStoreError> {
        let err = |message: String| KeyStoreError::File {
            path: path.to_owned(),
            message,
        };
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_key_file(path, sharing).map_err(|e| err(e.to_string()))?;
            }
            Err(e) => return Err(err(e.to_string())),
            // Between owner-only and group-readable: follow the configuration. A key that
            // others could read or write is not quietly repaired: `open` refuses it.
            Ok(meta) if meta.permissions().mode() & 0o777 & !0o640 == 0 => {
                crate::files::share_file(path, sharing).map_err(|e| err(e.to_string()))?;
            }
            Ok(_) => {}
        }
        Self::open(path, sharing)
    }

    /// An existing key file; a missing one is an error (commands after `enroll` must not
    /// invent a key the certificate is not for). Readable by the owner only, or also by the
    /// group it is shared with.
    pub fn open(path: &Path, sharing: Sharing) -> Result<Self, KeyStoreError> {
        let err = |message: String| KeyStoreError::File {
            path: path.to_owned(),
            message,
        };
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        let shared_with_its_group = sharing.gid() == Some(meta.gid());
        let allowed = if shared_with_its_group { 0o640 } else { 0o600 };
        if mode & !allowed != 0 {
            return Err(err(if shared_with_its_group {
                format!(
                    "mode {mode:o} lets others than its group read the private key; chmod 640 it"
                )
            } else {
                format!(
                    "mode {mode:o} lets others read the private key; chmod 600 it (or set \
                     `group` to share it with the file's group)"
                )
            }));
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

/// A fresh P-256 key, written to a temporary file that no one else can read from its creation,
/// then renamed into place: an interrupted run leaves either no key or a whole one.
fn create_key_file(path: &Path, sharing: Sharing) -> std::io::Result<()> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(std::io::Error::other)?;
    let pem = pair.serialize_pem();
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        crate::files::ensure_dir(dir, sharing)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    if let Some(gid) = sharing.gid() {
        std::os::unix::fs::fchown(&file, None, Some(gid))?;
    }
    file.set_permissions(fs::Permissions::from_mode(sharing.file_mode()))?;
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

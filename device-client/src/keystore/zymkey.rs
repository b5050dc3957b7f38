//! Zymbit Zymkey 4i, HSM4, HSM6 and Secure Compute Module: the key is made and kept in the
//! module; this process only ever sees the public point and signatures.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Mutex;

use super::{KeyStore, KeyStoreError};

mod ffi;

/// Names tried, in order, when no library path is given: the versioned name Zymbit's
/// packages install, then the development symlink.
pub const DEFAULT_LIBRARIES: [&str; 2] = ["libzk_app_utils.so.3", "libzk_app_utils.so"];

pub struct ZymkeyStore {
    zymkey: Mutex<ffi::Zymkey>,
    slot: i32,
    public_key: [u8; 65],
}

fn err(message: String) -> KeyStoreError {
    KeyStoreError::Zymkey(message)
}

/// Loads the library (the given path, or the default names) and opens a context.
fn connect(library: Option<&Path>) -> Result<ffi::Zymkey, KeyStoreError> {
    let candidates: Vec<OsString> = match library {
        Some(path) => vec![path.as_os_str().to_owned()],
        None => DEFAULT_LIBRARIES.iter().map(OsString::from).collect(),
    };
    let mut failures = Vec::new();
    for candidate in &candidates {
        match ffi::Zymkey::open(candidate) {
            Ok(zymkey) => return Ok(zymkey),
            Err(ffi::LoadError::Library(message)) => failures.push(message),
            Err(ffi::LoadError::Symbol(name, detail)) => {
                return Err(err(format!(
                    "{} is not Zymbit's libzk_app_utils: {name} is missing ({detail})",
                    candidate.to_string_lossy()
                )))
            }
            Err(ffi::LoadError::Open(rc)) => {
                return Err(err(format!(
                    "zkOpen failed ({rc}): no Zymbit module answered; check that it is \
                     connected and bound and that the zkifc service is running"
                )))
            }
        }
    }
    Err(err(format!(
        "cannot load the Zymkey library ({}): install Zymbit's libzk packages, or point \
         --zymkey-lib or CVM_ZYMKEY_LIB at libzk_app_utils.so",
        failures.join("; ")
    )))
}

impl ZymkeyStore {
    /// Opens the module and reads the public key in `slot`, so a missing library, a missing
    /// module or an empty slot is reported here, before anything else happens.
    pub fn open(library: Option<&Path>, slot: i32) -> Result<Self, KeyStoreError> {
        let mut zymkey = connect(library)?;
        let raw = zymkey.export_pub_key(slot).map_err(|rc| {
            err(format!(
                "zkExportPubKey failed for slot {slot} ({rc}): is there a key in that slot?"
            ))
        })?;
        if raw.len() != 64 {
            return Err(err(format!(
                "the key in Zymkey slot {slot} is not a P-256 key ({} bytes, expected 64)",
                raw.len()
            )));
        }
        let mut public_key = [0u8; 65];
        public_key[0] = 0x04;
        public_key[1..].copy_from_slice(&raw);
        if !super::is_p256_point(&public_key) {
            return Err(err(format!(
                "the key in Zymkey slot {slot} is not a point on P-256"
            )));
        }
        Ok(Self {
            zymkey: Mutex::new(zymkey),
            slot,
            public_key,
        })
    }

    /// Makes a new persistent P-256 key pair in the module (HSM6 and SCM only); its slot.
    pub fn generate_key_pair(library: Option<&Path>) -> Result<i32, KeyStoreError> {
        let mut zymkey = connect(library)?;
        match zymkey.gen_key_pair(ffi::ZK_NISTP256) {
            None => Err(err(
                "this Zymbit library cannot generate key pairs (zkGenKeyPair is HSM6/SCM only); \
                 use the module's factory key, e.g. --key zymkey:0"
                    .into(),
            )),
            Some(rc) if rc < 0 => Err(err(format!(
                "zkGenKeyPair failed ({rc}): key generation needs an HSM6 or SCM with a free slot"
            ))),
            Some(slot) => Ok(slot),
        }
    }

    pub fn slot(&self) -> i32 {
        self.slot
    }
}

impl KeyStore for ZymkeyStore {
    fn public_key(&self) -> Result<[u8; 65], KeyStoreError> {
        Ok(self.public_key)
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], KeyStoreError> {
        let mut zymkey = self
            .zymkey
            .lock()
            .map_err(|_| KeyStoreError::Signing("the Zymkey context was poisoned".into()))?;
        let raw = zymkey.sign_digest(digest, self.slot).map_err(|rc| {
            KeyStoreError::Signing(format!(
                "zkGenECDSASigFromDigest failed for slot {} ({rc})",
                self.slot
            ))
        })?;
        raw.as_slice().try_into().map_err(|_| {
            KeyStoreError::Signing(format!(
                "zkGenECDSASigFromDigest returned {} bytes, expected 64 (r || s)",
                raw.len()
            ))
        })
    }

    fn describe(&self) -> String {
        format!("zymkey:{}", self.slot)
    }
}

//! Where the device key lives. Every backend speaks the security modules' language: a P-256
//! public point out, a SHA-256 digest in, a raw `r || s` signature out. That is what Zymbit's
//! `zkGenECDSASigFromDigest` and PKCS#11 `CKM_ECDSA` both produce, so hardware backends slot
//! in behind the same trait without the key ever leaving the module.
//!
//! A key store is named by a spec, on the command line (`--key`), in the config file (`key`)
//! and in `enrollment.json` (so later commands find the key enrollment used):
//!
//! - `file:PATH`: a PKCS#8 PEM file, created 0600 if absent (0640 and group-owned when a
//!   group is configured), for development only: the private key is in the file and in this
//!   process's memory.
//! - `zymkey` or `zymkey:SLOT`: a Zymbit Zymkey 4i, HSM4, HSM6 or SCM through
//!   `libzk_app_utils`; slot 0 by default. With `--generate-key` (HSM6/SCM) a key pair is
//!   made in the module on first use and its slot remembered in `<dir>/zymkey-slot`.
//! - `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-file=PATH`: any PKCS#11 module (Zymbit's
//!   `zkpkcs11`, an HSM, SoftHSM2). `enroll` generates the key pair on the token when the
//!   label names none; the other commands only use an existing one. The RFC 7512 names
//!   `module-path`, `object` and `pin-source=file:PATH` are accepted too; values may be
//!   percent-encoded. Without `pin-file` the PIN comes from the environment variable
//!   `CVM_PKCS11_PIN`.

use std::path::PathBuf;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::files::Sharing;

mod file;
pub mod pkcs11;
pub mod zymkey;

pub use file::FileKeyStore;
pub use pkcs11::{Pkcs11Spec, Pkcs11Store};
pub use zymkey::ZymkeyStore;

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Zymkey(String),
    #[error("{0}")]
    Pkcs11(String),
    /// The PIN is missing, wrong or locked: trying again would only count more failures
    /// against it, until the token locks.
    #[error("{0}")]
    Pin(String),
    /// No key where the spec points, and this command may not make one (only `enroll` may).
    #[error("{0}")]
    NoKey(String),
    #[error("--key {spec:?}: {message}")]
    Spec { spec: String, message: String },
    #[error("signing failed: {0}")]
    Signing(String),
}

pub trait KeyStore: Send + Sync {
    /// The public key as an uncompressed SEC1 point: `0x04 || X || Y`.
    fn public_key(&self) -> Result<[u8; 65], KeyStoreError>;

    /// ECDSA P-256 over a SHA-256 digest; raw `r || s`.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], KeyStoreError>;

    /// Which key this is, as a spec that opens it again; never key material or a PIN.
    fn describe(&self) -> String;
}

/// A parsed `--key` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    File(PathBuf),
    /// `None`: slot 0, or the generated key's slot with `--generate-key`.
    Zymkey(Option<i32>),
    Pkcs11(Pkcs11Spec),
}

impl KeySpec {
    pub fn parse(spec: &str) -> Result<Self, KeyStoreError> {
        let bad = |message: &str| KeyStoreError::Spec {
            spec: spec.to_owned(),
            message: message.to_owned(),
        };
        match spec.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            None if spec == "zymkey" => Ok(Self::Zymkey(None)),
            Some(("zymkey", slot)) => slot
                .parse::<i32>()
                .ok()
                .filter(|s| *s >= 0)
                .map(|s| Self::Zymkey(Some(s)))
                .ok_or_else(|| bad("the Zymkey slot must be a number, e.g. zymkey:0")),
            Some(("pkcs11", attributes)) => Pkcs11Spec::parse(attributes)
                .map(Self::Pkcs11)
                .map_err(|m| bad(&m)),
            _ => Err(bad(
                "expected file:PATH, zymkey[:SLOT] or pkcs11:module=PATH;token=LABEL;key=LABEL",
            )),
        }
    }
}

/// The suffix a renewal's new key gets: `device` → `device-r2` → `device-r3`.
const GENERATION: &str = "-r";

/// A name and its renewal generation: `device-r3` → (`device`, 3); `device` → (`device`, 1).
fn split_generation(name: &str) -> (&str, u32) {
    match name.rsplit_once(GENERATION) {
        Some((base, n))
            if !base.is_empty()
                && !n.is_empty()
                && n.len() <= 6
                && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            match n.parse::<u32>() {
                Ok(generation) if generation >= 2 => (base, generation),
                _ => (name, 1),
            }
        }
        _ => (name, 1),
    }
}

fn with_generation(base: &str, generation: u32) -> String {
    if generation <= 1 {
        base.to_owned()
    } else {
        format!("{base}{GENERATION}{generation}")
    }
}

/// A file name's stem and extension: `device-r2.key` → (`device-r2`, `.key`).
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

impl KeySpec {
    /// Where a renewal makes the device's next key: a new file beside a key file, a new label
    /// on the same PKCS#11 token (`device` → `device-r2` → `device-r3`). `None` for a Zymkey
    /// slot: its renewal keeps the key, or (HSM6/SCM with `--generate-key`) makes a pair in a
    /// slot the module chooses.
    pub fn successor(&self) -> Option<KeySpec> {
        match self {
            Self::File(path) => {
                let name = path.file_name()?.to_str()?;
                let (stem, extension) = split_extension(name);
                let (base, generation) = split_generation(stem);
                let next = format!("{}{extension}", with_generation(base, generation + 1));
                Some(Self::File(path.with_file_name(next)))
            }
            Self::Pkcs11(spec) => {
                let (base, generation) = split_generation(&spec.key);
                Some(Self::Pkcs11(Pkcs11Spec {
                    key: with_generation(base, generation + 1),
                    ..spec.clone()
                }))
            }
            Self::Zymkey(_) => None,
        }
    }

    /// This spec as first configured, before any renewal: the generation suffix
    /// [`KeySpec::successor`] adds, removed.
    pub fn lineage(&self) -> KeySpec {
        match self {
            Self::File(path) => {
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    return self.clone();
                };
                let (stem, extension) = split_extension(name);
                let (base, _) = split_generation(stem);
                Self::File(path.with_file_name(format!("{base}{extension}")))
            }
            Self::Pkcs11(spec) => Self::Pkcs11(Pkcs11Spec {
                key: split_generation(&spec.key).0.to_owned(),
                ..spec.clone()
            }),
            Self::Zymkey(_) => self.clone(),
        }
    }
}

/// What opening a key store needs besides its spec.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// `libzk_app_utils` to load instead of the default names.
    pub zymkey_lib: Option<PathBuf>,
    /// Make a key pair in the module (HSM6/SCM) if none was made yet.
    pub generate_key: bool,
    /// Where the generated key's slot is remembered (the enrollment directory).
    pub state_dir: PathBuf,
    /// Whether this command may generate a key (enroll may; credentials and publish may not).
    pub may_generate: bool,
    /// Who may read the files the store writes (a key file, `zymkey-slot`).
    pub sharing: Sharing,
}

pub const ZYMKEY_SLOT_FILE: &str = "zymkey-slot";

/// Opens the key store a spec names.
pub fn open(spec: &KeySpec, options: &OpenOptions) -> Result<Box<dyn KeyStore>, KeyStoreError> {
    match spec {
        KeySpec::File(path) if options.may_generate => Ok(Box::new(FileKeyStore::open_or_create(
            path,
            options.sharing,
        )?)),
        KeySpec::File(path) => Ok(Box::new(FileKeyStore::open(path, options.sharing)?)),
        KeySpec::Pkcs11(p) if options.may_generate => {
            Ok(Box::new(Pkcs11Store::open_or_generate(p)?))
        }
        KeySpec::Pkcs11(p) => Ok(Box::new(Pkcs11Store::open(p)?)),
        KeySpec::Zymkey(Some(_)) if options.generate_key && options.may_generate => {
            Err(KeyStoreError::Spec {
                spec: format!("{spec:?}"),
                message: "--generate-key picks the slot itself; use `zymkey` without a slot".into(),
            })
        }
        KeySpec::Zymkey(Some(slot)) => Ok(Box::new(ZymkeyStore::open(
            options.zymkey_lib.as_deref(),
            *slot,
        )?)),
        KeySpec::Zymkey(None) if options.generate_key => open_generated_zymkey(options),
        KeySpec::Zymkey(None) => Ok(Box::new(ZymkeyStore::open(
            options.zymkey_lib.as_deref(),
            0,
        )?)),
    }
}

/// The key made by `--generate-key`: its slot is read from `<dir>/zymkey-slot`, or, the
/// first time, a key pair is made and the slot written there before anything else happens,
/// so a retry after an interruption uses the same key.
fn open_generated_zymkey(options: &OpenOptions) -> Result<Box<dyn KeyStore>, KeyStoreError> {
    let slot_file = options.state_dir.join(ZYMKEY_SLOT_FILE);
    let lib = options.zymkey_lib.as_deref();
    match std::fs::read_to_string(&slot_file) {
        Ok(text) => {
            let slot = text.trim().parse::<i32>().map_err(|_| {
                KeyStoreError::Zymkey(format!(
                    "{}: not a slot number; remove it to generate a new key",
                    slot_file.display()
                ))
            })?;
            Ok(Box::new(ZymkeyStore::open(lib, slot)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && options.may_generate => {
            let slot = ZymkeyStore::generate_key_pair(lib)?;
            let io = |e: std::io::Error| {
                KeyStoreError::Zymkey(format!(
                    "generated a key in slot {slot} but could not record it in {}: {e}",
                    slot_file.display()
                ))
            };
            crate::files::ensure_dir(&options.state_dir, options.sharing).map_err(io)?;
            crate::files::write_atomic(&slot_file, format!("{slot}\n").as_bytes(), options.sharing)
                .map_err(io)?;
            Ok(Box::new(ZymkeyStore::open(lib, slot)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyStoreError::NoKey(format!(
            "no generated Zymkey key yet ({} is missing): run `cvm-device enroll` first",
            slot_file.display()
        ))),
        Err(e) => Err(KeyStoreError::Zymkey(format!(
            "{}: {e}",
            slot_file.display()
        ))),
    }
}

/// Characters escaped in spec values: the separators and anything not printable.
const SPEC_VALUE: &AsciiSet = &CONTROLS
    .add(b';')
    .add(b'%')
    .add(b'?')
    .add(b'&')
    .add(b'=')
    .add(b' ');

pub(crate) fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, SPEC_VALUE).to_string()
}

pub(crate) fn decode_value(value: &str) -> Result<String, String> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| format!("{value:?} is not valid UTF-8 once percent-decoded"))
}

/// Whether `point` is an encoded point on P-256 (what every store checks before trusting
/// what a module returned).
pub fn is_p256_point(point: &[u8]) -> bool {
    p256::PublicKey::from_sec1_bytes(point).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            KeySpec::parse("file:/a/b").ok(),
            Some(KeySpec::File("/a/b".into()))
        );
        assert_eq!(KeySpec::parse("zymkey").ok(), Some(KeySpec::Zymkey(None)));
        assert_eq!(
            KeySpec::parse("zymkey:2").ok(),
            Some(KeySpec::Zymkey(Some(2)))
        );
        for bad in [
            "",
            "file:",
            "zymkey:x",
            "zymkey:-1",
            "tpm:0",
            "/path/key.pem",
        ] {
            assert!(KeySpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewals_number_their_keys_and_lineage_undoes_it() {
        let file = |p: &str| KeySpec::File(PathBuf::from(p));
        let cases = [
            ("/var/lib/cvm/device.key", "/var/lib/cvm/device-r2.key"),
            ("/var/lib/cvm/device-r2.key", "/var/lib/cvm/device-r3.key"),
            ("/var/lib/cvm/device-r9.key", "/var/lib/cvm/device-r10.key"),
            ("/k/devkey", "/k/devkey-r2"),
            ("/k/my-router.key", "/k/my-router-r2.key"),
            ("/k/a-r1.key", "/k/a-r1-r2.key"),
            ("/k/.key", "/k/.key-r2"),
        ];
        for (current, next) in cases {
            assert_eq!(file(current).successor(), Some(file(next)), "{current}");
            assert_eq!(file(next).lineage(), file(current).lineage(), "{next}");
        }
        assert_eq!(file("/k/device-r3.key").lineage(), file("/k/device.key"));
        let pkcs11 = |key: &str| {
            KeySpec::parse(&format!(
                "pkcs11:module=/m.so;token=t;key={key};pin-file=/p"
            ))
            .unwrap_or_else(|e| unreachable!("{e}"))
        };
        assert_eq!(pkcs11("device").successor(), Some(pkcs11("device-r2")));
        assert_eq!(pkcs11("device-r2").successor(), Some(pkcs11("device-r3")));
        assert_eq!(pkcs11("device-r7").lineage(), pkcs11("device"));
        assert_ne!(pkcs11("other-r2").lineage(), pkcs11("device"));
        assert_eq!(KeySpec::Zymkey(Some(0)).successor(), None);
        assert_eq!(KeySpec::Zymkey(Some(3)).lineage(), KeySpec::Zymkey(Some(3)));
    }

    #[test]
    fn values_round_trip_through_encoding() {
        let v = "my token; 100% =?&";
        assert_eq!(decode_value(&encode_value(v)).ok().as_deref(), Some(v));
        assert!(!encode_value(v).contains(';'));
    }
}

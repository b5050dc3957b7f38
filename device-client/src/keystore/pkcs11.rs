//! Any PKCS#11 module: Zymbit's `zkpkcs11`, an HSM, or SoftHSM2 for tests. The key pair is
//! found on the token by label or, at enrollment only, generated there: sensitive and not
//! extractable, so it never leaves the token. Every other command opens an existing key and
//! names the token and label when there is none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::{decode_value, encode_value, KeyStore, KeyStoreError};

/// Where the PIN comes from when the spec names no file.
pub const PIN_ENV: &str = "CVM_PKCS11_PIN";

/// DER of the named curve prime256v1 (OID 1.2.840.10045.3.1.7), the `CKA_EC_PARAMS` of a
/// P-256 key.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-file=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Spec {
    pub module: PathBuf,
    pub token: String,
    pub key: String,
    pub pin_file: Option<PathBuf>,
}

impl Pkcs11Spec {
    /// The part after `pkcs11:`. Attributes are separated by `;` (or `&` after a `?`, as in
    /// RFC 7512 URIs); values may be percent-encoded.
    pub fn parse(attributes: &str) -> Result<Self, String> {
        let (mut module, mut token, mut key, mut pin_file) = (None, None, None, None);
        for part in attributes.split([';', '?', '&']).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=value"))?;
            let value = decode_value(value)?;
            if value.is_empty() {
                return Err(format!("{name} is empty"));
            }
            match name {
                "module" | "module-path" => module = Some(PathBuf::from(value)),
                "token" => token = Some(value),
                "key" | "object" => key = Some(value),
                "pin-file" => pin_file = Some(PathBuf::from(value)),
                "pin-source" => {
                    pin_file = Some(PathBuf::from(value.strip_prefix("file:").unwrap_or(&value)))
                }
                "pin-value" => {
                    return Err(format!(
                    "no PIN on the command line (others can read it): use pin-file= or {PIN_ENV}"
                ))
                }
                // RFC 7512 attributes that do not change which key this is.
                "type"
                | "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id"
                | "id" => {}
                other => return Err(format!("unknown attribute {other:?}")),
            }
        }
        Ok(Self {
            module: module.ok_or("module= (the PKCS#11 library) is required")?,
            token: token.ok_or("token= (the token label) is required")?,
            key: key.ok_or("key= (the key label) is required")?,
            pin_file,
        })
    }

    fn pin(&self) -> Result<AuthPin, KeyStoreError> {
        let pin = match &self.pin_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| KeyStoreError::Pin(format!("PIN file {}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            None => std::env::var(PIN_ENV).map_err(|_| {
                KeyStoreError::Pin(format!(
                    "no PIN for token {:?}: add pin-file=PATH to the key spec or set {PIN_ENV}",
                    self.token
                ))
            })?,
        };
        Ok(SecretString::from(pin))
    }
}

impl std::fmt::Display for Pkcs11Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pkcs11:module={};token={};key={}",
            encode_value(&self.module.to_string_lossy()),
            encode_value(&self.token),
            encode_value(&self.key)
        )?;
        if let Some(pin_file) = &self.pin_file {
            write!(f, ";pin-file={}", encode_value(&pin_file.to_string_lossy()))?;
        }
        Ok(())
    }
}

fn err(message: String) -> KeyStoreError {
    KeyStoreError::Pkcs11(message)
}

/// The PKCS#11 return value's name (`CKR_PIN_INCORRECT`, ...) or the error itself.
fn cause(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function}: {rv:?} ({rv})"),
        other => other.to_string(),
    }
}

pub struct Pkcs11Store {
    spec: Pkcs11Spec,
    /// `Option` only so that `Drop` can close the session before finalizing the module.
    session: Mutex<Option<Session>>,
    private_key: ObjectHandle,
    public_key: [u8; 65],
    context: Pkcs11,
    /// Whether this store counts among the module's users (see [`ModuleUsers`]).
    registered: bool,
}

/// How many stores of this process use each PKCS#11 module. `C_Initialize` and
/// `C_Finalize` act on the whole process, so the module is initialized by its first store and
/// finalized when its last one closes: a device key and a claim key on the same token, or a
/// renewal's current and new keys, do not pull the module from under each other.
struct ModuleUsers;

static MODULE_USERS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

impl ModuleUsers {
    /// Initializes the module unless a store of this process did. `false` when something
    /// else in the process had initialized it: it is then not ours to finalize.
    fn join(context: &Pkcs11, module: &Path) -> Result<bool, KeyStoreError> {
        let mut users = MODULE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        let count = users.entry(module.to_owned()).or_insert(0);
        if *count == 0 {
            match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                Ok(()) => {}
                Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                    users.remove(module);
                    return Ok(false);
                }
                Err(e) => {
                    users.remove(module);
                    return Err(err(format!(
                        "PKCS#11 module {} failed to initialize: {}",
                        module.display(),
                        cause(&e)
                    )));
                }
            }
        }
        *count += 1;
        Ok(true)
    }

    /// One store fewer; the last one finalizes the module.
    fn leave(context: &Pkcs11, module: &Path) {
        let mut users = MODULE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        let last = match users.get_mut(module) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                users.remove(module);
                true
            }
            None => false,
        };
        if last {
            let _ = context.clone().finalize();
        }
    }
}

/// What to do when the token has no key pair with the spec's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfMissing {
    Generate,
    Fail,
}

impl Pkcs11Store {
    /// The existing key pair the spec names; none is an error naming the token and the label.
    pub fn open(spec: &Pkcs11Spec) -> Result<Self, KeyStoreError> {
        Self::open_with(spec, IfMissing::Fail)
    }

    /// The key pair the spec names, generated on the token if there is none (enrollment).
    pub fn open_or_generate(spec: &Pkcs11Spec) -> Result<Self, KeyStoreError> {
        Self::open_with(spec, IfMissing::Generate)
    }

    fn open_with(spec: &Pkcs11Spec, if_missing: IfMissing) -> Result<Self, KeyStoreError> {
        let module = &spec.module;
        let context = Pkcs11::new(module).map_err(|e| {
            err(format!(
                "cannot load the PKCS#11 module {}: {}",
                module.display(),
                match &e {
                    CkError::LibraryLoading(inner) => inner.to_string(),
                    other => other.to_string(),
                }
            ))
        })?;
        let registered = ModuleUsers::join(&context, module)?;
        match Self::open_key(&context, spec, if_missing) {
            Ok((session, private_key, public_key)) => Ok(Self {
                spec: spec.clone(),
                session: Mutex::new(Some(session)),
                private_key,
                public_key,
                context,
                registered,
            }),
            Err(e) => {
                if registered {
                    ModuleUsers::leave(&context, module);
                }
                Err(e)
            }
        }
    }

    fn open_key(
        context: &Pkcs11,
        spec: &Pkcs11Spec,
        if_missing: IfMissing,
    ) -> Result<(Session, ObjectHandle, [u8; 65]), KeyStoreError> {
        let slot = find_token(context, spec)?;
        let session = context.open_rw_session(slot).map_err(|e| {
            err(format!(
                "cannot open a session on token {:?}: {}",
                spec.token,
                cause(&e)
            ))
        })?;
        match session.login(UserType::User, Some(&spec.pin()?)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(KeyStoreError::Pin(format!(
                    "wrong PIN for PKCS#11 token {:?} (CKR_PIN_INCORRECT)",
                    spec.token
                )))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(KeyStoreError::Pin(format!(
                    "the PIN of PKCS#11 token {:?} is locked (CKR_PIN_LOCKED)",
                    spec.token
                )))
            }
            Err(CkError::Pkcs11(
                rv @ (RvError::PinInvalid | RvError::PinLenRange | RvError::PinExpired),
                _,
            )) => {
                return Err(KeyStoreError::Pin(format!(
                    "PKCS#11 token {:?} does not accept the PIN ({rv:?})",
                    spec.token
                )))
            }
            Err(e) => {
                return Err(err(format!(
                    "login to PKCS#11 token {:?} failed: {}",
                    spec.token,
                    cause(&e)
                )))
            }
        }
        let (private_key, public_key) = match (find_key_pair(&session, &spec.key)?, if_missing) {
            (Some(pair), _) => pair,
            (None, IfMissing::Generate) => generate_key_pair(&session, &spec.key)?,
            (None, IfMissing::Fail) => {
                return Err(KeyStoreError::NoKey(format!(
                    "no key labelled {:?} on PKCS#11 token {:?} ({}): `cvm-device enroll` \
                     generates it; check key= and token= in the key spec",
                    spec.key,
                    spec.token,
                    spec.module.display()
                )))
            }
        };
        let public_key = read_public_point(&session, public_key, &spec.key)?;
        Ok((session, private_key, public_key))
    }
}

/// The slot holding the token labelled `spec.token`. Tokens move between slots (SoftHSM2
/// moves a token when it is initialized), so the label is what identifies one.
fn find_token(context: &Pkcs11, spec: &Pkcs11Spec) -> Result<cryptoki::slot::Slot, KeyStoreError> {
    let slots = context.get_slots_with_initialized_token().map_err(|e| {
        err(format!(
            "cannot list the tokens of {}: {}",
            spec.module.display(),
            cause(&e)
        ))
    })?;
    let mut labels = Vec::new();
    for slot in slots {
        let Ok(info) = context.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim_end().to_owned();
        if label == spec.token {
            return Ok(slot);
        }
        labels.push(format!("{label:?}"));
    }
    Err(err(format!(
        "no PKCS#11 token labelled {:?} in {} (tokens: {})",
        spec.token,
        spec.module.display(),
        if labels.is_empty() {
            "none".to_owned()
        } else {
            labels.join(", ")
        }
    )))
}

fn key_template(class: ObjectClass, label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn find_one(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, KeyStoreError> {
    let found = session
        .find_objects(&key_template(class, label))
        .map_err(|e| err(format!("cannot search the token: {}", cause(&e))))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(err(format!(
            "{} EC {class} objects are labelled {label:?}; give the key a unique label",
            found.len()
        ))),
    }
}

/// The existing P-256 pair labelled `label`: (private, public).
fn find_key_pair(
    session: &Session,
    label: &str,
) -> Result<Option<(ObjectHandle, ObjectHandle)>, KeyStoreError> {
    let Some(private) = find_one(session, ObjectClass::PRIVATE_KEY, label)? else {
        return Ok(None);
    };
    let public = find_one(session, ObjectClass::PUBLIC_KEY, label)?.ok_or_else(|| {
        err(format!(
            "the token has a private key labelled {label:?} but no public key with that label"
        ))
    })?;
    let params = session
        .get_attributes(private, &[AttributeType::EcParams])
        .map_err(|e| err(format!("cannot read the key's curve: {}", cause(&e))))?;
    match params.first() {
        Some(Attribute::EcParams(p)) if p.as_slice() == P256_PARAMS => {}
        _ => {
            return Err(err(format!(
                "the key labelled {label:?} is not a P-256 key; only P-256 is supported"
            )))
        }
    }
    Ok(Some((private, public)))
}

/// A new P-256 pair on the token (`CKA_TOKEN`), the private half sensitive and not
/// extractable.
fn generate_key_pair(
    session: &Session,
    label: &str,
) -> Result<(ObjectHandle, ObjectHandle), KeyStoreError> {
    let id = Sha256::digest(label.as_bytes())[..16].to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    let (public, private) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(|e| {
            err(format!(
                "cannot generate a P-256 key pair on the token: {}",
                cause(&e)
            ))
        })?;
    Ok((private, public))
}

/// `CKA_EC_POINT` is a DER OCTET STRING around `04 || X || Y`; some modules return the bare
/// point, which is accepted too.
fn read_public_point(
    session: &Session,
    public: ObjectHandle,
    label: &str,
) -> Result<[u8; 65], KeyStoreError> {
    let attributes = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|e| err(format!("cannot read public key {label:?}: {}", cause(&e))))?;
    let Some(Attribute::EcPoint(encoded)) = attributes.first() else {
        return Err(err(format!("public key {label:?} has no CKA_EC_POINT")));
    };
    let point = match encoded.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        bare if bare.len() == 65 => bare,
        _ => &[][..],
    };
    let point: [u8; 65] = point
        .try_into()
        .ok()
        .filter(|p: &[u8; 65]| super::is_p256_point(p))
        .ok_or_else(|| {
            err(format!(
                "public key {label:?} is not an uncompressed P-256 point"
            ))
        })?;
    Ok(point)
}

impl KeyStore for Pkcs11Store {
    fn public_key(&self) -> Result<[u8; 65], KeyStoreError> {
        Ok(self.public_key)
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], KeyStoreError> {
        let guard = self
            .session
            .lock()
            .map_err(|_| KeyStoreError::Signing("the PKCS#11 session was poisoned".into()))?;
        let session = guard
            .as_ref()
            .ok_or_else(|| KeyStoreError::Signing("the PKCS#11 session is closed".into()))?;
        let signature = session
            .sign(&Mechanism::Ecdsa, self.private_key, digest)
            .map_err(|e| KeyStoreError::Signing(format!("PKCS#11 CKM_ECDSA: {}", cause(&e))))?;
        signature.as_slice().try_into().map_err(|_| {
            KeyStoreError::Signing(format!(
                "PKCS#11 CKM_ECDSA returned {} bytes, expected 64 (r || s)",
                signature.len()
            ))
        })
    }

    fn describe(&self) -> String {
        self.spec.to_string()
    }
}

impl Drop for Pkcs11Store {
    fn drop(&mut self) {
        if let Ok(mut session) = self.session.lock() {
            // Closing the session logs out.
            drop(session.take());
        }
        if self.registered {
            ModuleUsers::leave(&self.context, &self.spec.module);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn spec_parses_both_spellings_and_round_trips() {
        let a =
            Pkcs11Spec::parse("module=/usr/lib/m.so;token=dev;key=device;pin-file=/etc/pin").ok();
        let b = Pkcs11Spec::parse(
            "token=dev;object=device?module-path=/usr/lib/m.so&pin-source=file:/etc/pin",
        )
        .ok();
        assert!(a.is_some());
        assert_eq!(a, b);
        let spec = a.unwrap();
        let again = spec.to_string();
        let parsed = again
            .strip_prefix("pkcs11:")
            .and_then(|s| Pkcs11Spec::parse(s).ok());
        assert_eq!(parsed.as_ref(), Some(&spec));
    }

    #[test]
    fn spec_needs_module_token_and_key_and_refuses_pin_values() {
        for bad in [
            "token=a;key=b",
            "module=/m;key=b",
            "module=/m;token=a",
            "module=/m;token=a;key=b;pin-value=1234",
            "module=/m;token=a;key=b;colour=red",
            "module=/m;token=;key=b",
        ] {
            assert!(Pkcs11Spec::parse(bad).is_err(), "{bad}");
        }
    }
}

//! One module per command: its arguments (clap) and what it does. Values from the command
//! line are parsed here into the domain's types before anything else happens.

pub mod bulk;
pub mod claim;
pub mod enroll;
pub mod history;
pub mod list;
pub mod reenroll;
pub mod register_ca;
pub mod report;
pub mod revoke;
pub mod show;
pub mod unlock;

use crate::output::say;
use std::path::Path;

use cvm_core::{Attributes, KeyFingerprint, PolicyName, Serial, ThingName};

use crate::error::AdminError;
use crate::public_key::{self, MAX_INPUT_BYTES};

/// How many times an operation on one record is run again when the record changed under it
/// (each run reads the record afresh; every step accepts "already done").
pub const CHANGED_RETRIES: usize = 3;

pub fn serial(raw: &str) -> Result<Serial, AdminError> {
    Serial::parse(raw).map_err(|e| AdminError::Usage(format!("--serial: {e}")))
}

pub fn thing_name(raw: Option<&str>, serial: &Serial) -> Result<ThingName, AdminError> {
    match raw {
        Some(t) => ThingName::parse(t).map_err(|e| AdminError::Usage(format!("--thing-name: {e}"))),
        None => Ok(ThingName::from(serial)),
    }
}

pub fn policy(raw: Option<&str>) -> Result<Option<PolicyName>, AdminError> {
    raw.map(PolicyName::parse)
        .transpose()
        .map_err(|e| AdminError::Usage(format!("--policy: {e}")))
}

/// `name=value` pairs into thing attributes.
pub fn attributes<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Attributes, String> {
    let pairs = pairs
        .into_iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("attribute {a:?} is not NAME=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Attributes::parse(pairs).map_err(|e| e.to_string())
}

/// The registered-key fingerprint of a public-key file (see [`crate::public_key`]).
pub fn public_key_file(path: &Path) -> Result<KeyFingerprint, AdminError> {
    let bytes =
        std::fs::read(path).map_err(AdminError::io("could not read the public key", path))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(public_key::KeyError::TooLarge.into());
    }
    let text = String::from_utf8(bytes).map_err(|_| public_key::KeyError::NoPem)?;
    Ok(public_key::fingerprint_from_pem(&text)?)
}

pub fn print_json(value: &serde_json::Value) -> Result<(), AdminError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| AdminError::Usage(format!("could not print JSON: {e}")))?;
    say!("{text}");
    Ok(())
}

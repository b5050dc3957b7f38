//! Values that cross the trust boundary, each parsed once into a type that cannot hold a bad value.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// Why a value from outside was refused. The message names the rule, never the value when the
/// value could be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("serial must be 1 to 128 characters of A-Z a-z 0-9 : _ -")]
    InvalidSerial,
    #[error("token must be 16 to 128 characters of A-Z a-z 0-9 _ -")]
    InvalidToken,
    #[error("thing name must be 1 to 128 characters of A-Z a-z 0-9 : _ -")]
    InvalidThingName,
    #[error("policy name must be 1 to 128 characters of A-Z a-z 0-9 + = , . @ _ -")]
    InvalidPolicyName,
    #[error("token hash must be 64 lowercase hex characters")]
    InvalidTokenHash,
    #[error("attribute {0}")]
    InvalidAttribute(String),
}

/// AWS IoT thing names and our serials share one alphabet, so a serial is always a valid
/// thing name (the default thing name is the serial).
fn is_thing_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
}

/// A device serial number, e.g. the Zymkey's serial. It is the table key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Serial(String);

impl Serial {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.is_empty() || raw.len() > 128 || !raw.chars().all(is_thing_name_char) {
            return Err(DomainError::InvalidSerial);
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An AWS IoT thing name. Chosen by ops at enrollment, never by the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ThingName(String);

impl ThingName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.is_empty() || raw.len() > 128 || !raw.chars().all(is_thing_name_char) {
            return Err(DomainError::InvalidThingName);
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Serial> for ThingName {
    fn from(serial: &Serial) -> Self {
        // Serial and thing name share one alphabet and one length limit.
        Self(serial.0.clone())
    }
}

impl fmt::Display for ThingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An AWS IoT policy name. Comes from the enrollment record or the deployment, never a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PolicyName(String);

impl PolicyName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
        if !ok {
            return Err(DomainError::InvalidPolicyName);
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Thing attributes from the enrollment record. AWS IoT allows three attributes on a thing
/// without a thing type, with names and values from a small alphabet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Attributes(BTreeMap<String, String>);

impl Attributes {
    pub const MAX: usize = 3;

    pub fn parse(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, DomainError> {
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            let name_ok = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c));
            if !name_ok {
                return Err(DomainError::InvalidAttribute(format!(
                    "name {name:?} must be 1 to 128 characters of A-Z a-z 0-9 _ . , @ / : # -"
                )));
            }
            let value_ok = value.len() <= 800
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c));
            if !value_ok {
                return Err(DomainError::InvalidAttribute(format!(
                    "value of {name:?} must be at most 800 characters of A-Z a-z 0-9 _ . , @ / : # = [ ] -"
                )));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(DomainError::InvalidAttribute(format!(
                    "{name:?} given twice"
                )));
            }
        }
        if map.len() > Self::MAX {
            return Err(DomainError::InvalidAttribute(format!(
                "count {} exceeds {} (the AWS IoT limit for things without a type)",
                map.len(),
                Self::MAX
            )));
        }
        Ok(Self(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A one-time enrollment token, as presented by a device or printed once at enrollment.
/// Its `Debug` never shows the value, so it cannot leak through a log line.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// 24 random bytes: 192 bits, comfortably above the 128-bit floor.
    const RANDOM_BYTES: usize = 24;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let ok = (16..=128).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(DomainError::InvalidToken);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh token from the system's CSPRNG, URL-safe base64 without padding.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; Self::RANDOM_BYTES];
        SystemRandom::new().fill(&mut bytes)?;
        Ok(Self(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// The only way to read the secret: to print it once for the factory.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        let d = digest::digest(&digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenHash(out)
    }
}

/// SHA-256 of a token. Tokens carry 192 random bits, so a plain hash is not guessable and
/// needs no salt; only this hash is ever stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

impl TokenHash {
    pub fn parse_hex(raw: &str) -> Result<Self, DomainError> {
        if raw.len() != 64 || raw.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(DomainError::InvalidTokenHash);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(raw, &mut out).map_err(|_| DomainError::InvalidTokenHash)?;
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A hash no token produces in practice; compared against when the serial is unknown so
    /// that unknown serials and wrong tokens take the same path.
    pub fn placeholder() -> Self {
        Self([0u8; 32])
    }

    /// Constant-time: the comparison takes the same time wherever the first differing byte is.
    pub fn matches(&self, token: &Token) -> bool {
        self.matches_hash(&token.hash())
    }

    /// Constant-time comparison of two hashes.
    pub fn matches_hash(&self, other: &TokenHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_rules() {
        assert!(Serial::parse("ZK-1234:ab_C").is_ok());
        for bad in ["", "has space", "slash/", "é", &"a".repeat(129)] {
            assert_eq!(
                Serial::parse(bad),
                Err(DomainError::InvalidSerial),
                "{bad:?}"
            );
        }
        assert!(Serial::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn token_rules_and_redaction() {
        let t = Token::generate().unwrap();
        assert_eq!(t.expose_secret().len(), 32);
        assert!(Token::parse(t.expose_secret()).is_ok());
        assert!(!format!("{t:?}").contains(t.expose_secret()));
        for bad in [
            "short",
            "has space in it but long",
            &"a".repeat(129),
            "aaaaaaaaaaaaaaaa+",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
        assert_ne!(
            Token::generate().unwrap().expose_secret(),
            t.expose_secret()
        );
    }

    #[test]
    fn token_hash_round_trip_and_match() {
        let t = Token::parse("abcdefghijklmnopqrstuvwx").unwrap();
        let h = t.hash();
        assert_eq!(TokenHash::parse_hex(&h.to_hex()).unwrap(), h);
        assert!(h.matches(&t));
        assert!(!h.matches(&Token::parse("abcdefghijklmnopqrstuvwy").unwrap()));
        assert!(!TokenHash::placeholder().matches(&t));
        assert!(TokenHash::parse_hex("zz").is_err());
        assert!(TokenHash::parse_hex(&h.to_hex().to_uppercase()).is_err());
    }

    #[test]
    fn attributes_limits() {
        let ok = Attributes::parse([("site".into(), "lab-1".into())]).unwrap();
        assert_eq!(ok.iter().count(), 1);
        let four = (0..4).map(|i| (format!("k{i}"), "v".to_string()));
        assert!(Attributes::parse(four).is_err());
        assert!(Attributes::parse([("bad name".into(), "v".into())]).is_err());
        assert!(Attributes::parse([("k".into(), "bad value".into())]).is_err());
        assert!(Attributes::parse([("k".into(), "a".into()), ("k".into(), "b".into())]).is_err());
    }

    #[test]
    fn policy_names() {
        assert!(PolicyName::parse("cvm-device-default").is_ok());
        assert!(PolicyName::parse("a b").is_err());
        assert!(PolicyName::parse("").is_err());
    }
}

//! The device's config file (TOML, `/etc/cvm/device.toml` by default; see
//! `packaging/device.toml` for every option). Command-line flags and `CVM_*` environment
//! variables override it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/cvm/device.toml";
pub const DEFAULT_DIR: &str = "/var/lib/cvm";

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Enrollment directory: key file (for `file:`), certificate, CA, enrollment.json.
    pub dir: Option<PathBuf>,
    /// Key store spec (see the keystore module).
    pub key: Option<String>,
    /// `libzk_app_utils` to load instead of the default names.
    pub zymkey_lib: Option<PathBuf>,
    /// Generate the key pair in the module (HSM6/SCM) on first enrollment.
    pub generate_key: Option<bool>,
    /// CA certificates (PEM) to trust for AWS IoT's endpoints; default `<dir>/ca.pem`.
    pub server_ca: Option<PathBuf>,
    /// A group (name or number) that may read the enrollment: directory 0750, files 0640,
    /// group-owned, so that a service user in it can run `credentials` and `publish`.
    pub group: Option<String>,
    #[serde(default)]
    pub enroll: EnrollConfig,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub publish: PublishConfig,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    pub url: Option<String>,
    pub serial: Option<String>,
    pub serial_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub api_ca: Option<PathBuf>,
    pub max_attempts: Option<u32>,
    /// Seconds to wait for time synchronization when the clock is not set yet.
    pub time_sync_wait: Option<u64>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    pub endpoint: Option<String>,
    pub role_alias: Option<String>,
    pub thing_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    pub endpoint: Option<String>,
}

impl DeviceConfig {
    /// The file named (which must exist), else the default path if it exists, else nothing.
    /// Only a default file that does not exist is skipped: one that cannot be read (permission
    /// denied) or parsed is an error, never silently ignored.
    pub fn load(explicit: Option<&Path>) -> Result<Self, String> {
        match explicit {
            Some(path) => Self::load_file(path, false),
            None => Self::load_file(Path::new(DEFAULT_PATH), true),
        }
    }

    fn load_file(path: &Path, missing_is_default: bool) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if missing_is_default && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(e) => return Err(format!("config {}: {e}", path.display())),
        };
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| crate::tls::one_line(e.message()))
    }
}

/// A serial number read from a file: `/sys/firmware/devicetree/base/serial-number` on a
/// Raspberry Pi ends in a NUL byte; whitespace and NULs around it are dropped.
pub fn read_serial_file(path: &Path) -> Result<String, String> {
    let raw = std::fs::read(path).map_err(|e| format!("serial file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let serial = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if serial.is_empty() {
        return Err(format!("serial file {} is empty", path.display()));
    }
    Ok(serial.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let shipped = include_str!("../packaging/device.toml");
        let config = DeviceConfig::parse(shipped);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn typos_are_refused() {
        assert!(DeviceConfig::parse("dri = \"/var/lib/cvm\"").is_err());
        assert!(DeviceConfig::parse("[enroll]\nurll = \"https://x\"").is_err());
        let ok = DeviceConfig::parse("key = \"zymkey:1\"\n[enroll]\nmax_attempts = 3\n");
        assert_eq!(
            ok.map(|c| (c.key, c.enroll.max_attempts)),
            Ok((Some("zymkey:1".to_owned()), Some(3)))
        );
    }

    #[test]
    fn only_a_missing_default_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let missing = dir.path().join("device.toml");
        assert_eq!(
            DeviceConfig::load_file(&missing, true),
            Ok(DeviceConfig::default())
        );
        // Named explicitly, a missing file is an error.
        let err = DeviceConfig::load_file(&missing, false)
            .err()
            .unwrap_or_default();
        assert!(err.contains("No such file"), "{err}");
        // A default path that exists but cannot be read (here: a directory) is an error.
        let err = DeviceConfig::load_file(dir.path(), true)
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("config "), "{err}");
        // So is one that is not valid TOML, or has an unknown option.
        let bad = dir.path().join("bad.toml");
        let _ = std::fs::write(&bad, "group = [\n");
        let err = DeviceConfig::load_file(&bad, true)
            .err()
            .unwrap_or_default();
        assert!(err.contains("bad.toml"), "{err}");
        let _ = std::fs::write(&bad, "group = \"cvm\"\n[enroll]\ntime_sync_wait = 60\n");
        let ok = DeviceConfig::load_file(&bad, true);
        assert_eq!(
            ok.map(|c| (c.group, c.enroll.time_sync_wait)),
            Ok((Some("cvm".to_owned()), Some(60)))
        );
    }

    #[test]
    fn serial_files_lose_their_nul_and_newline() {
        let dir = std::env::temp_dir().join(format!("cvm-serial-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("serial-number");
        let _ = std::fs::write(&path, b"10000000abcdef12\0");
        assert_eq!(read_serial_file(&path).as_deref(), Ok("10000000abcdef12"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

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
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub provision: ProvisionConfig,
    #[serde(default)]
    pub renew: RenewConfig,
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

/// AWS IoT's MQTT endpoint, for `provision` and for the proof of a renewed certificate.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `host[:port]`; port 8883, or 443 with ALPN `x-amzn-mqtt-ca`.
    pub endpoint: Option<String>,
    /// CA certificates (PEM) to verify the broker with.
    pub ca: Option<PathBuf>,
    /// Offer ALPN `x-amzn-mqtt-ca` on a port other than 443.
    pub alpn: Option<bool>,
    /// The topic of the message that proves a new certificate works; `{thingName}` is
    /// replaced.
    pub proof_topic: Option<String>,
}

/// Fleet provisioning by claim. The serial and token are `[enroll]`'s.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    pub template: Option<String>,
    pub claim_certificate: Option<PathBuf>,
    /// A PEM key file (path or `file:PATH`), or a key store spec (`pkcs11:...`, `zymkey:N`).
    pub claim_key: Option<String>,
    pub client_id_prefix: Option<String>,
    /// The device's key was registered at enrollment: send no token.
    pub no_token: Option<bool>,
    pub data_endpoint: Option<String>,
    pub credentials_endpoint: Option<String>,
    pub role_alias: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub max_attempts: Option<u32>,
}

/// Renewal without a token. The API's URL and CA default to `[enroll]`'s.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenewConfig {
    pub url: Option<String>,
    pub api_ca: Option<PathBuf>,
    /// With `--if-due`: renew this many days before the certificate expires.
    pub window_days: Option<u32>,
    pub max_attempts: Option<u32>,
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
    fn the_door_and_renewal_sections_parse_and_refuse_typos() {
        let text = "[mqtt]\nendpoint = \"a-ats.iot.eu-west-1.amazonaws.com:443\"\nalpn = true\n\
                    [provision]\ntemplate = \"cvm-fleet\"\nclaim_key = \"pkcs11:module=/m;token=t;key=claim\"\n\
                    no_token = true\n[renew]\nwindow_days = 14\n";
        let config = DeviceConfig::parse(text);
        assert_eq!(
            config.map(|c| (
                c.mqtt.endpoint,
                c.mqtt.alpn,
                c.provision.template,
                c.provision.no_token,
                c.renew.window_days
            )),
            Ok((
                Some("a-ats.iot.eu-west-1.amazonaws.com:443".to_owned()),
                Some(true),
                Some("cvm-fleet".to_owned()),
                Some(true),
                Some(14)
            ))
        );
        for typo in [
            "[mqtt]\nendpont = \"x\"",
            "[provision]\nclaim_cert = \"x\"",
            "[renew]\nwindow = 3",
            "[renew]\nwindow_days = -1",
        ] {
            assert!(DeviceConfig::parse(typo).is_err(), "{typo}");
        }
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

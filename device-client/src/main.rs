//! `cvm-device`: enroll this device with the certificate vending machine, then use the
//! identity: AWS credentials for a `credential_process`, HTTPS publish to AWS IoT.
//!
//! Settings come from flags (and `CVM_*` variables), then the config file, then
//! `enrollment.json` (for what enrollment learned), then defaults.
//!
//! The exit status says what a supervisor should do (see `cvm_device::exit`): 0 done, 1 try
//! again later, 2 fix the configuration, 3 refused for good (needs ops).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cvm_device::clock::{ClockCheck, Reference};
use cvm_device::config::{read_serial_file, DeviceConfig, DEFAULT_DIR};
use cvm_device::enroll::{
    enroll, Backoff, EnrollOptions, Enrollment, Outcome, CA_FILE, CERTIFICATE_FILE,
};
use cvm_device::exit::{ExitStatus, Failure};
use cvm_device::files::Sharing;
use cvm_device::iot::{fetch_credentials, publish, CredentialsRequest};
use cvm_device::keystore::{self, KeySpec, KeyStore, OpenOptions};
use cvm_device::tls::{mtls_client, one_line};
use secrecy::SecretString;

/// How long `enroll` waits for the clock to be set by default, before failing (transient).
const DEFAULT_TIME_SYNC_WAIT: u64 = 300;

/// Why `enroll` refuses to make a software key unasked.
const NO_KEY_STORE: &str = "no key store chosen: pass --key zymkey (Zymkey 4i, HSM4, HSM6, SCM; \
     `zymkey:SLOT` for another slot) or --key 'pkcs11:module=PATH;token=LABEL;key=LABEL;pin-file=PATH' \
     (Zymbit's libzk_pkcs11.so, any HSM), or set `key` in the config file; the one-time token is \
     spent on that key. For a development run without a module, --insecure-software-key makes a \
     key file instead";

#[derive(Parser)]
#[command(
    name = "cvm-device",
    version,
    about = "Device client of the certificate vending machine",
    after_help = "Exit status: 0 done; 1 transient or unexpected (try again later); 2 usage or \
                  configuration error; 3 refused for good by the server (needs ops)."
)]
struct Cli {
    /// Config file (TOML). Default: /etc/cvm/device.toml if it exists.
    #[arg(long, global = true, env = "CVM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// Enrollment directory (certificate, CA chain, enrollment.json). Default: /var/lib/cvm.
    #[arg(long, visible_alias = "out")]
    dir: Option<PathBuf>,
    /// Key store: zymkey[:SLOT], pkcs11:module=PATH;token=LABEL;key=LABEL[;pin-file=PATH]
    /// (PIN otherwise from CVM_PKCS11_PIN), or file:PATH.
    #[arg(long, env = "CVM_KEY")]
    key: Option<String>,
    /// Zymbit's libzk_app_utils to load. Default: libzk_app_utils.so.3, then libzk_app_utils.so.
    #[arg(long, env = "CVM_ZYMKEY_LIB")]
    zymkey_lib: Option<PathBuf>,
    /// Let this group (name or number) read the enrollment: directory 0750, files 0640 (a key
    /// file too), group-owned, so a service user in it can run `credentials` and `publish`.
    /// Default: owner only (0700, 0600).
    #[arg(long)]
    group: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Get this device's certificate: make or reuse the key, send a CSR, store the result.
    Enroll {
        #[command(flatten)]
        common: Common,
        /// Base URL of the vending API (https).
        #[arg(long, env = "CVM_API_URL")]
        url: Option<String>,
        /// The device serial (also the CSR's common name).
        #[arg(long, env = "CVM_SERIAL", conflicts_with = "serial_file")]
        serial: Option<String>,
        /// File holding the serial (e.g. /sys/firmware/devicetree/base/serial-number).
        #[arg(long)]
        serial_file: Option<PathBuf>,
        /// The one-time enrollment token. Prefer --token-file or the environment: command
        /// lines are visible to other users.
        #[arg(
            long,
            env = "CVM_ENROLL_TOKEN",
            hide_env_values = true,
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// File holding the enrollment token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM file of the CA(s) to trust for the API instead of the system roots.
        #[arg(long, visible_alias = "api-ca", env = "CVM_API_CA")]
        ca: Option<PathBuf>,
        /// HSM6/SCM: generate the key pair in the module (slot remembered in <dir>/zymkey-slot).
        #[arg(long)]
        generate_key: bool,
        /// Attempts before giving up on network errors, 429 and 5xx. Default: 6.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Development only: without --key (or `key` in the config), make a software key in
        /// <dir>/device.key and spend the one-time token on it. The private key is then in a
        /// file and in this process's memory.
        #[arg(long)]
        insecure_software_key: bool,
        /// Seconds to wait for time synchronization when the clock is not set yet (before this
        /// program's build date, or far from the API's Date), before failing with status 1.
        /// Default: 300.
        #[arg(long, value_name = "SECONDS")]
        time_sync_wait: Option<u64>,
    },
    /// Print temporary AWS credentials from the AWS IoT credentials provider, in the format of
    /// an AWS `credential_process`.
    Credentials {
        #[command(flatten)]
        common: Common,
        /// Credentials provider endpoint (host[:port]). Default: from enrollment.json.
        #[arg(long)]
        endpoint: Option<String>,
        /// IoT role alias. Default: from enrollment.json.
        #[arg(long)]
        role_alias: Option<String>,
        /// Thing name sent as x-amzn-iot-thingname. Default: from enrollment.json.
        #[arg(long)]
        thing_name: Option<String>,
        /// PEM CA(s) to trust for the endpoint. Default: <dir>/ca.pem.
        #[arg(long)]
        server_ca: Option<PathBuf>,
    },
    /// Publish a message to an AWS IoT topic over HTTPS (port 8443) with the device identity.
    Publish {
        #[command(flatten)]
        common: Common,
        /// The topic, e.g. devices/DEVICE-0001/hello.
        #[arg(long)]
        topic: String,
        /// The message.
        #[arg(
            long,
            conflicts_with = "message_file",
            required_unless_present = "message_file"
        )]
        message: Option<String>,
        /// A file holding the message.
        #[arg(long)]
        message_file: Option<PathBuf>,
        /// MQTT quality of service: 0 or 1.
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Data endpoint (host[:port], port 8443 by default). Default: from enrollment.json.
        #[arg(long)]
        endpoint: Option<String>,
        /// PEM CA(s) to trust for the endpoint. Default: <dir>/ca.pem.
        #[arg(long)]
        server_ca: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitStatus::Success.into(),
        Err(failure) => {
            eprintln!("cvm-device: {}", one_line(&failure.to_string()));
            failure.exit_status().into()
        }
    }
}

fn first<T>(options: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    options.into_iter().flatten().next()
}

/// Where the enrollment lives, who may read it, and how to open its key.
struct Device {
    dir: PathBuf,
    open: OpenOptions,
}

impl Device {
    fn new(
        common: &Common,
        config: &DeviceConfig,
        generate_key: bool,
        may_generate: bool,
    ) -> Result<Self, Failure> {
        let dir = first([common.dir.clone(), config.dir.clone()])
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let sharing = match first([common.group.as_ref(), config.group.as_ref()]) {
            Some(group) => Sharing::resolve(group).map_err(Failure::Config)?,
            None => Sharing::PRIVATE,
        };
        let open = OpenOptions {
            zymkey_lib: first([common.zymkey_lib.clone(), config.zymkey_lib.clone()]),
            generate_key: generate_key || config.generate_key.unwrap_or(false),
            state_dir: dir.clone(),
            may_generate,
            sharing,
        };
        Ok(Self { dir, open })
    }

    fn default_key(&self) -> KeySpec {
        KeySpec::File(self.dir.join("device.key"))
    }

    fn store(&self, spec: &KeySpec) -> Result<Box<dyn KeyStore>, Failure> {
        Ok(keystore::open(spec, &self.open)?)
    }
}

/// Fails at once, with status 1, when the clock has obviously not been set: TLS would fail
/// with a message about certificates instead.
async fn clock_is_set() -> Result<(), Failure> {
    Ok(ClockCheck::system(Duration::ZERO)
        .settle(&Reference::Build)
        .await?)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let config = DeviceConfig::load(cli.config.as_deref()).map_err(Failure::Config)?;
    match cli.command {
        Command::Enroll {
            common,
            url,
            serial,
            serial_file,
            token,
            token_file,
            ca,
            generate_key,
            max_attempts,
            insecure_software_key,
            time_sync_wait,
        } => {
            let e = &config.enroll;
            let url = first([url, e.url.clone()]).ok_or_else(|| {
                Failure::Config(
                    "no API URL: pass --url, set CVM_API_URL or enroll.url in the config".into(),
                )
            })?;
            // Flags first, then the file; a serial before a serial file at each level.
            let serial = match (serial, serial_file, &e.serial, &e.serial_file) {
                (Some(s), ..) => s,
                (None, Some(path), ..) => read_serial_file(&path).map_err(Failure::Config)?,
                (None, None, Some(s), _) => s.clone(),
                (None, None, None, Some(path)) => {
                    read_serial_file(path).map_err(Failure::Config)?
                }
                (None, None, None, None) => {
                    return Err(Failure::Config(
                        "no serial: pass --serial or --serial-file, or set enroll.serial \
                         or enroll.serial_file in the config"
                            .into(),
                    ))
                }
            };
            let token =
                match (token, token_file.or_else(|| e.token_file.clone())) {
                    (Some(t), _) => t,
                    (None, Some(path)) => std::fs::read_to_string(&path)
                        .map_err(|err| {
                            Failure::Config(format!("token file {}: {err}", path.display()))
                        })?
                        .trim()
                        .to_owned(),
                    (None, None) => return Err(Failure::Config(
                        "no token: pass --token-file, set CVM_ENROLL_TOKEN or enroll.token_file"
                            .into(),
                    )),
                };
            let device = Device::new(&common, &config, generate_key, true)?;
            let spec = match first([common.key, config.key.clone()]) {
                Some(spec) => KeySpec::parse(&spec)?,
                None if insecure_software_key => device.default_key(),
                None => return Err(Failure::Config(NO_KEY_STORE.into())),
            };
            if let KeySpec::File(path) = &spec {
                eprintln!(
                    "cvm-device: warning: software key {}: the private key is in that file and \
                     in this process's memory; use a security module (--key zymkey or pkcs11:...) \
                     on devices in the field",
                    path.display()
                );
            }
            let store = device.store(&spec)?;
            let wait = first([time_sync_wait, e.time_sync_wait]).unwrap_or(DEFAULT_TIME_SYNC_WAIT);
            let options = EnrollOptions {
                url,
                serial,
                token: SecretString::from(token),
                ca: first([ca, e.api_ca.clone()]),
                out: device.dir.clone(),
                max_attempts: first([max_attempts, e.max_attempts]).unwrap_or(6),
                backoff: Backoff::default(),
                clock: ClockCheck::system(Duration::from_secs(wait)),
                sharing: device.open.sharing,
            };
            match enroll(store.as_ref(), &options).await? {
                Outcome::AlreadyEnrolled(e) => println!(
                    "already enrolled as {} (certificate {}); nothing to do",
                    e.thing_name, e.certificate_id
                ),
                Outcome::Enrolled { enrollment: e, new } => {
                    let how = if new {
                        "new certificate"
                    } else {
                        "certificate re-delivered"
                    };
                    println!(
                        "enrolled as {} ({how} {}, key {}); files in {}",
                        e.thing_name,
                        e.certificate_id,
                        e.key,
                        device.dir.display()
                    );
                }
            }
            Ok(())
        }
        Command::Credentials {
            common,
            endpoint,
            role_alias,
            thing_name,
            server_ca,
        } => {
            clock_is_set().await?;
            let device = Device::new(&common, &config, false, false)?;
            let (enrollment, why) = split(Enrollment::load(&device.dir));
            let c = &config.credentials;
            let recorded = |f: fn(&Enrollment) -> Option<String>| enrollment.as_ref().and_then(f);
            let request = CredentialsRequest {
                endpoint: first([
                    endpoint,
                    c.endpoint.clone(),
                    recorded(|e| Some(e.endpoints.credentials.clone())),
                ])
                .ok_or_else(|| missing("credentials endpoint", "--endpoint", &why))?,
                role_alias: first([
                    role_alias,
                    c.role_alias.clone(),
                    recorded(|e| e.role_alias.clone()),
                ])
                .ok_or_else(|| missing("role alias", "--role-alias", &why))?,
                thing_name: first([
                    thing_name,
                    c.thing_name.clone(),
                    recorded(|e| Some(e.thing_name.clone())),
                ])
                .ok_or_else(|| missing("thing name", "--thing-name", &why))?,
            };
            let client =
                identity_client(&device, &config, common.key, enrollment.as_ref(), server_ca)?;
            let credentials = fetch_credentials(&client, &request).await?;
            // The one place secrets are shown: the credential_process document on stdout.
            println!("{}", credentials.to_credential_process_json());
            Ok(())
        }
        Command::Publish {
            common,
            topic,
            message,
            message_file,
            qos,
            endpoint,
            server_ca,
        } => {
            clock_is_set().await?;
            let device = Device::new(&common, &config, false, false)?;
            let (enrollment, why) = split(Enrollment::load(&device.dir));
            let endpoint = first([
                endpoint,
                config.publish.endpoint.clone(),
                enrollment.as_ref().map(|e| e.endpoints.data.clone()),
            ])
            .ok_or_else(|| missing("data endpoint", "--endpoint", &why))?;
            let payload = match (message, message_file) {
                (Some(m), _) => m.into_bytes(),
                (None, Some(path)) => std::fs::read(&path).map_err(|e| {
                    Failure::Config(format!("message file {}: {e}", path.display()))
                })?,
                (None, None) => {
                    return Err(Failure::Config(
                        "no message: pass --message or --message-file".into(),
                    ))
                }
            };
            let size = payload.len();
            let client =
                identity_client(&device, &config, common.key, enrollment.as_ref(), server_ca)?;
            publish(&client, &endpoint, &topic, payload, qos).await?;
            println!("published {size} bytes to {topic}");
            Ok(())
        }
    }
}

/// The enrollment, or why there is none (for messages).
fn split(loaded: Result<Enrollment, String>) -> (Option<Enrollment>, String) {
    match loaded {
        Ok(e) => (Some(e), "enrollment.json does not give one".into()),
        Err(why) => (None, why),
    }
}

fn missing(what: &str, flag: &str, why: &str) -> Failure {
    Failure::Config(format!("no {what}: {why}; or pass {flag}"))
}

/// The mTLS client of an enrolled device: its certificate, the key it was issued for (flag,
/// then enrollment.json, then config), the server CA (flag, config, then <dir>/ca.pem).
fn identity_client(
    device: &Device,
    config: &DeviceConfig,
    key_flag: Option<String>,
    enrollment: Option<&Enrollment>,
    server_ca: Option<PathBuf>,
) -> Result<reqwest::Client, Failure> {
    let spec = match first([
        key_flag,
        enrollment.map(|e| e.key.clone()),
        config.key.clone(),
    ]) {
        Some(spec) => KeySpec::parse(&spec)?,
        None => device.default_key(),
    };
    let store: Arc<dyn KeyStore> = Arc::from(device.store(&spec)?);
    let server_ca =
        first([server_ca, config.server_ca.clone()]).unwrap_or_else(|| device.dir.join(CA_FILE));
    Ok(mtls_client(
        store,
        &device.dir.join(CERTIFICATE_FILE),
        &server_ca,
    )?)
}

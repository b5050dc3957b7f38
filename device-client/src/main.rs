//! `cvm-device`: enroll this device with the certificate vending machine, then use the
//! identity: AWS credentials for a `credential_process`, HTTPS publish to AWS IoT.
//!
//! Settings come from flags (and `CVM_*` variables), then the config file, then
//! `enrollment.json` (for what enrollment learned), then defaults.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use cvm_device::config::{read_serial_file, DeviceConfig, DEFAULT_DIR};
use cvm_device::enroll::{
    enroll, Backoff, EnrollOptions, Enrollment, Outcome, CA_FILE, CERTIFICATE_FILE,
};
use cvm_device::iot::{fetch_credentials, publish, CredentialsRequest};
use cvm_device::keystore::{self, KeySpec, KeyStore, OpenOptions};
use cvm_device::tls::mtls_client;
use secrecy::SecretString;

#[derive(Parser)]
#[command(
    name = "cvm-device",
    version,
    about = "Device client of the certificate vending machine"
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
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cvm-device: {}", cvm_device::tls::one_line(&message));
            ExitCode::FAILURE
        }
    }
}

fn first<T>(options: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    options.into_iter().flatten().next()
}

/// Where the enrollment lives and how to open its key.
struct Device {
    dir: PathBuf,
    open: OpenOptions,
}

impl Device {
    fn new(common: &Common, config: &DeviceConfig, generate_key: bool, may_generate: bool) -> Self {
        let dir = first([common.dir.clone(), config.dir.clone()])
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let open = OpenOptions {
            zymkey_lib: first([common.zymkey_lib.clone(), config.zymkey_lib.clone()]),
            generate_key: generate_key || config.generate_key.unwrap_or(false),
            state_dir: dir.clone(),
            may_generate,
        };
        Self { dir, open }
    }

    fn store(&self, spec: Option<String>) -> Result<Box<dyn KeyStore>, String> {
        let spec = match spec {
            Some(spec) => KeySpec::parse(&spec).map_err(|e| e.to_string())?,
            None => KeySpec::File(self.dir.join("device.key")),
        };
        keystore::open(&spec, &self.open).map_err(|e| e.to_string())
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = DeviceConfig::load(cli.config.as_deref())?;
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
        } => {
            let e = &config.enroll;
            let url = first([url, e.url.clone()])
                .ok_or("no API URL: pass --url, set CVM_API_URL or enroll.url in the config")?;
            // Flags first, then the file; a serial before a serial file at each level.
            let serial = match (serial, serial_file, &e.serial, &e.serial_file) {
                (Some(s), ..) => s,
                (None, Some(path), ..) => read_serial_file(&path)?,
                (None, None, Some(s), _) => s.clone(),
                (None, None, None, Some(path)) => read_serial_file(path)?,
                (None, None, None, None) => {
                    return Err(
                        "no serial: pass --serial or --serial-file, or set enroll.serial \
                                or enroll.serial_file in the config"
                            .into(),
                    )
                }
            };
            let token =
                match (token, token_file.or_else(|| e.token_file.clone())) {
                    (Some(t), _) => t,
                    (None, Some(path)) => std::fs::read_to_string(&path)
                        .map_err(|err| format!("token file {}: {err}", path.display()))?
                        .trim()
                        .to_owned(),
                    (None, None) => return Err(
                        "no token: pass --token-file, set CVM_ENROLL_TOKEN or enroll.token_file"
                            .into(),
                    ),
                };
            let device = Device::new(&common, &config, generate_key, true);
            let store = device.store(first([common.key, config.key.clone()]))?;
            let options = EnrollOptions {
                url,
                serial,
                token: SecretString::from(token),
                ca: first([ca, e.api_ca.clone()]),
                out: device.dir.clone(),
                max_attempts: first([max_attempts, e.max_attempts]).unwrap_or(6),
                backoff: Backoff::default(),
            };
            match enroll(store.as_ref(), &options)
                .await
                .map_err(|e| e.to_string())?
            {
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
            let device = Device::new(&common, &config, false, false);
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
            let credentials = fetch_credentials(&client, &request)
                .await
                .map_err(|e| e.to_string())?;
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
            let device = Device::new(&common, &config, false, false);
            let (enrollment, why) = split(Enrollment::load(&device.dir));
            let endpoint = first([
                endpoint,
                config.publish.endpoint.clone(),
                enrollment.as_ref().map(|e| e.endpoints.data.clone()),
            ])
            .ok_or_else(|| missing("data endpoint", "--endpoint", &why))?;
            let payload = match (message, message_file) {
                (Some(m), _) => m.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| format!("message file {}: {e}", path.display()))?,
                (None, None) => return Err("no message: pass --message or --message-file".into()),
            };
            let size = payload.len();
            let client =
                identity_client(&device, &config, common.key, enrollment.as_ref(), server_ca)?;
            publish(&client, &endpoint, &topic, payload, qos)
                .await
                .map_err(|e| e.to_string())?;
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

fn missing(what: &str, flag: &str, why: &str) -> String {
    format!("no {what}: {why}; or pass {flag}")
}

/// The mTLS client of an enrolled device: its certificate, the key it was issued for (flag,
/// then enrollment.json, then config), the server CA (flag, config, then <dir>/ca.pem).
fn identity_client(
    device: &Device,
    config: &DeviceConfig,
    key_flag: Option<String>,
    enrollment: Option<&Enrollment>,
    server_ca: Option<PathBuf>,
) -> Result<reqwest::Client, String> {
    let spec = first([
        key_flag,
        enrollment.map(|e| e.key.clone()),
        config.key.clone(),
    ]);
    let store: Arc<dyn KeyStore> = Arc::from(device.store(spec)?);
    let server_ca =
        first([server_ca, config.server_ca.clone()]).unwrap_or_else(|| device.dir.join(CA_FILE));
    mtls_client(store, &device.dir.join(CERTIFICATE_FILE), &server_ca).map_err(|e| e.to_string())
}

//! `cvm-device`: get this device its AWS IoT identity through either door (`enroll` over the
//! vending API, `provision` by claim over MQTT), keep it current (`renew`), and use it: AWS
//! credentials for a `credential_process`, HTTPS publish to AWS IoT.
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
use cvm_device::enroll::{enroll, Backoff, EnrollOptions, Enrollment, Outcome};
use cvm_device::exit::{ExitStatus, Failure};
use cvm_device::files::Sharing;
use cvm_device::identity::{self, CA_FILE, CERTIFICATE_FILE};
use cvm_device::iot::{fetch_credentials, publish, CredentialsRequest};
use cvm_device::keystore::{self, KeySpec, KeyStore, OpenOptions};
use cvm_device::mqtt::{Endpoint, Timeouts};
use cvm_device::provision::{
    self, ProvisionOptions, Recorded, DEFAULT_CLIENT_ID_PREFIX, DEFAULT_PROOF_TOPIC,
};
use cvm_device::renew::{self, RenewOptions};
use cvm_device::tls::{mtls_client, one_line, ClientKey};
use secrecy::SecretString;

/// How long `enroll` and `provision` wait for the clock to be set by default, before failing
/// (transient).
const DEFAULT_TIME_SYNC_WAIT: u64 = 300;
const DEFAULT_MAX_ATTEMPTS: u32 = 6;

/// Why `enroll` and `provision` refuse to make a software key unasked.
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
    #[command(flatten)]
    place: Place,
    /// Key store: zymkey[:SLOT], pkcs11:module=PATH;token=LABEL;key=LABEL[;pin-file=PATH]
    /// (PIN otherwise from CVM_PKCS11_PIN), or file:PATH.
    #[arg(long, env = "CVM_KEY")]
    key: Option<String>,
}

/// Where the identity lives and who may read it.
#[derive(Args)]
struct Place {
    /// Enrollment directory (certificate, CA chain, enrollment.json). Default: /var/lib/cvm.
    #[arg(long, visible_alias = "out")]
    dir: Option<PathBuf>,
    /// Zymbit's libzk_app_utils to load. Default: libzk_app_utils.so.3, then libzk_app_utils.so.
    #[arg(long, env = "CVM_ZYMKEY_LIB")]
    zymkey_lib: Option<PathBuf>,
    /// Let this group (name or number) read the enrollment: directory 0750, files 0640 (a key
    /// file too), group-owned, so a service user in it can run `credentials` and `publish`.
    /// Default: owner only (0700, 0600).
    #[arg(long)]
    group: Option<String>,
}

/// Who the device is, for the two doors: its serial and one-time token.
#[derive(Args)]
struct Credentials {
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
}

/// How the device key is made the first time.
#[derive(Args)]
struct NewKey {
    /// HSM6/SCM: generate the key pair in the module (slot remembered in <dir>/zymkey-slot).
    #[arg(long)]
    generate_key: bool,
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
    /// Attempts before giving up on network errors, throttling and 5xx. Default: 6.
    #[arg(long)]
    max_attempts: Option<u32>,
}

/// AWS IoT's MQTT endpoint.
#[derive(Args)]
struct Mqtt {
    /// AWS IoT's endpoint for MQTT, host[:port]: port 8883, or 443 with ALPN x-amzn-mqtt-ca.
    #[arg(long)]
    mqtt_endpoint: Option<String>,
    /// PEM CA(s) to verify the MQTT broker with (for AWS IoT: Amazon Root CA 1).
    #[arg(long)]
    mqtt_ca: Option<PathBuf>,
    /// Offer ALPN x-amzn-mqtt-ca on a port other than 443.
    #[arg(long)]
    mqtt_alpn: bool,
}

#[derive(Args)]
struct ProvisionArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    new_key: NewKey,
    #[command(flatten)]
    mqtt: Mqtt,
    /// The device's key was registered at enrollment: send no token.
    #[arg(long, conflicts_with_all = ["token", "token_file"])]
    no_token: bool,
    /// The fleet provisioning template.
    #[arg(long)]
    template: Option<String>,
    /// The claim certificate (PEM).
    #[arg(long)]
    claim_cert: Option<PathBuf>,
    /// The claim certificate's key: a PEM key file (PATH or file:PATH), or a key store
    /// (pkcs11:..., zymkey:SLOT).
    #[arg(long)]
    claim_key: Option<String>,
    /// The MQTT client id is this prefix and the serial (the claim policy may allow only
    /// client ids that start with it). Default: claim-.
    #[arg(long)]
    client_id_prefix: Option<String>,
    /// Data endpoint to record. Default: the template's deviceConfiguration.dataEndpoint,
    /// else the MQTT endpoint's host.
    #[arg(long)]
    data_endpoint: Option<String>,
    /// Credentials provider endpoint to record. Default: the template's
    /// deviceConfiguration.credentialsEndpoint.
    #[arg(long)]
    credentials_endpoint: Option<String>,
    /// IoT role alias to record. Default: the template's deviceConfiguration.roleAlias.
    #[arg(long)]
    role_alias: Option<String>,
    /// PEM CA(s) to write as ca.pem, trusted for AWS IoT's endpoints later. Default: the
    /// MQTT broker's CA file.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Get this device's certificate from the vending API: make or reuse the key, send a CSR,
    /// store the result.
    Enroll {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        credentials: Credentials,
        #[command(flatten)]
        new_key: NewKey,
        /// Base URL of the vending API (https).
        #[arg(long, env = "CVM_API_URL")]
        url: Option<String>,
        /// PEM file of the CA(s) to trust for the API instead of the system roots.
        #[arg(long, visible_alias = "api-ca", env = "CVM_API_CA")]
        ca: Option<PathBuf>,
    },
    /// Get this device's certificate by fleet provisioning with a claim certificate (AWS IoT's
    /// CreateCertificateFromCsr and RegisterThing over MQTT), then prove it works.
    Provision(Box<ProvisionArgs>),
    /// Renew this device's certificate without a token: a new key, a certificate proven over
    /// MQTT before it replaces the current one.
    /// The key is the one enrollment.json names; the next one is made beside it.
    Renew {
        #[command(flatten)]
        place: Place,
        #[command(flatten)]
        mqtt: Mqtt,
        /// Base URL of the vending API (https). Default: enroll.url in the config.
        #[arg(long, env = "CVM_API_URL")]
        url: Option<String>,
        /// PEM file of the CA(s) to trust for the API instead of the system roots.
        #[arg(long, visible_alias = "api-ca", env = "CVM_API_CA")]
        ca: Option<PathBuf>,
        /// Only renew when the certificate expires within the window (or has expired), or
        /// when an interrupted renewal is under way; otherwise do nothing (for a timer).
        #[arg(long)]
        if_due: bool,
        /// With --if-due: renew this many days before the certificate expires. Default: 30.
        #[arg(long, value_name = "DAYS")]
        window_days: Option<u32>,
        /// HSM6/SCM: make the new key pair in a new Zymkey slot (without it, a Zymkey slot's
        /// certificate is renewed for the same key).
        #[arg(long)]
        generate_key: bool,
        /// Attempts before giving up on network errors, throttling and 5xx. Default: 6.
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
        place: &Place,
        config: &DeviceConfig,
        generate_key: bool,
        may_generate: bool,
    ) -> Result<Self, Failure> {
        let dir = first([place.dir.clone(), config.dir.clone()])
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let sharing = match first([place.group.as_ref(), config.group.as_ref()]) {
            Some(group) => Sharing::resolve(group).map_err(Failure::Config)?,
            None => Sharing::PRIVATE,
        };
        let open = OpenOptions {
            zymkey_lib: first([place.zymkey_lib.clone(), config.zymkey_lib.clone()]),
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

    /// The key a door makes or reuses: `--key`, else `key` in the config, else (a development
    /// run) a key file. When a renewal has since replaced the configured key by its successor
    /// (`device.key` by `device-r2.key`, label `device` by `device-r2`) for this serial, the
    /// successor: the device is enrolled with it.
    fn door_key(
        &self,
        common: &Common,
        config: &DeviceConfig,
        insecure_software_key: bool,
        serial: &str,
    ) -> Result<KeySpec, Failure> {
        let spec = match first([common.key.clone(), config.key.clone()]) {
            Some(spec) => KeySpec::parse(&spec)?,
            None if insecure_software_key => self.default_key(),
            None => return Err(Failure::Config(NO_KEY_STORE.into())),
        };
        let renewed = Enrollment::load(&self.dir)
            .ok()
            .filter(|e| e.serial == serial)
            .and_then(|e| KeySpec::parse(&e.key).ok())
            .filter(|recorded| recorded != &spec && recorded.lineage() == spec.lineage());
        let spec = renewed.unwrap_or(spec);
        if let KeySpec::File(path) = &spec {
            eprintln!(
                "cvm-device: warning: software key {}: the private key is in that file and \
                 in this process's memory; use a security module (--key zymkey or pkcs11:...) \
                 on devices in the field",
                path.display()
            );
        }
        Ok(spec)
    }
}

/// Fails at once, with status 1, when the clock has obviously not been set: TLS would fail
/// with a message about certificates instead.
async fn clock_is_set() -> Result<(), Failure> {
    Ok(ClockCheck::system(Duration::ZERO)
        .settle(&Reference::Build)
        .await?)
}

/// The serial and token, from the flags first, then the file's `[enroll]` section; a serial
/// before a serial file at each level. No token is `None` only when `no_token` says so.
fn serial_and_token(
    given: Credentials,
    config: &DeviceConfig,
    no_token: bool,
) -> Result<(String, Option<SecretString>), Failure> {
    let e = &config.enroll;
    let serial = match (given.serial, given.serial_file, &e.serial, &e.serial_file) {
        (Some(s), ..) => s,
        (None, Some(path), ..) => read_serial_file(&path).map_err(Failure::Config)?,
        (None, None, Some(s), _) => s.clone(),
        (None, None, None, Some(path)) => read_serial_file(path).map_err(Failure::Config)?,
        (None, None, None, None) => {
            return Err(Failure::Config(
                "no serial: pass --serial or --serial-file, or set enroll.serial \
                 or enroll.serial_file in the config"
                    .into(),
            ))
        }
    };
    if no_token {
        return Ok((serial, None));
    }
    let token = match (
        given.token,
        given.token_file.or_else(|| e.token_file.clone()),
    ) {
        (Some(t), _) => t,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|err| Failure::Config(format!("token file {}: {err}", path.display())))?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(Failure::Config(
                "no token: pass --token-file, set CVM_ENROLL_TOKEN or enroll.token_file".into(),
            ))
        }
    };
    Ok((serial, Some(SecretString::from(token))))
}

/// The MQTT endpoint from the flag, then the config; `None` when neither gives one.
fn mqtt_endpoint(mqtt: &Mqtt, config: &DeviceConfig) -> Result<Option<Endpoint>, Failure> {
    let alpn = mqtt.mqtt_alpn || config.mqtt.alpn.unwrap_or(false);
    first([mqtt.mqtt_endpoint.clone(), config.mqtt.endpoint.clone()])
        .map(|e| Endpoint::parse(&e, alpn).map_err(Failure::Config))
        .transpose()
}

fn proof_topic(config: &DeviceConfig) -> String {
    config
        .mqtt
        .proof_topic
        .clone()
        .unwrap_or_else(|| DEFAULT_PROOF_TOPIC.to_owned())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let config = DeviceConfig::load(cli.config.as_deref()).map_err(Failure::Config)?;
    match cli.command {
        Command::Enroll {
            common,
            credentials,
            new_key,
            url,
            ca,
        } => run_enroll(&config, common, credentials, new_key, url, ca).await,
        Command::Provision(args) => {
            let ProvisionArgs {
                common,
                credentials,
                new_key,
                mqtt,
                no_token,
                template,
                claim_cert,
                claim_key,
                client_id_prefix,
                data_endpoint,
                credentials_endpoint,
                role_alias,
                ca_bundle,
            } = *args;
            let p = &config.provision;
            let flags = ProvisionFlags {
                no_token: no_token || p.no_token.unwrap_or(false),
                template,
                claim_cert,
                claim_key,
                client_id_prefix,
                recorded: Recorded {
                    data_endpoint: first([data_endpoint, p.data_endpoint.clone()]),
                    credentials_endpoint: first([
                        credentials_endpoint,
                        p.credentials_endpoint.clone(),
                    ]),
                    role_alias: first([role_alias, p.role_alias.clone()]),
                    ca_bundle: first([ca_bundle, p.ca_bundle.clone()]),
                },
            };
            run_provision(&config, common, credentials, new_key, mqtt, flags).await
        }
        Command::Renew {
            place,
            mqtt,
            url,
            ca,
            if_due,
            window_days,
            generate_key,
            max_attempts,
        } => {
            let r = &config.renew;
            let url = first([url, r.url.clone(), config.enroll.url.clone()]).ok_or_else(|| {
                Failure::Config(
                    "no API URL: pass --url, set CVM_API_URL, or renew.url or enroll.url in \
                     the config"
                        .into(),
                )
            })?;
            let device = Device::new(&place, &config, generate_key, true)?;
            let window_days = first([window_days, r.window_days]).unwrap_or(30);
            let options = RenewOptions {
                url,
                api_ca: first([ca, r.api_ca.clone(), config.enroll.api_ca.clone()]),
                dir: device.dir.clone(),
                endpoint: mqtt_endpoint(&mqtt, &config)?,
                broker_ca: first([
                    mqtt.mqtt_ca.clone(),
                    config.mqtt.ca.clone(),
                    config.server_ca.clone(),
                ]),
                proof_topic: proof_topic(&config),
                if_due,
                window: Duration::from_secs(u64::from(window_days) * 86_400),
                grace: renew::DEFAULT_GRACE,
                generate_key: device.open.generate_key,
                open: device.open.clone(),
                max_attempts: first([max_attempts, r.max_attempts]).unwrap_or(DEFAULT_MAX_ATTEMPTS),
                backoff: Backoff::default(),
                timeouts: Timeouts::default(),
                clock: ClockCheck::system(Duration::ZERO),
                sharing: device.open.sharing,
                interrupt_after: None,
            };
            match renew::renew(&options).await? {
                renew::Outcome::NotDue { not_after, due_at } => {
                    println!(
                        "not due: {}; nothing to do",
                        renew::describe_due(not_after, due_at)
                    );
                }
                renew::Outcome::Renewed {
                    enrollment: e,
                    replaced,
                    resumed,
                } => {
                    let how = if resumed {
                        "interrupted renewal completed"
                    } else {
                        "renewed"
                    };
                    println!(
                        "{how}: {} has certificate {} (key {}), replacing {replaced}; files in {}",
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
            let device = Device::new(&common.place, &config, false, false)?;
            let (enrollment, why) = split(Enrollment::load(&device.dir));
            let c = &config.credentials;
            let recorded = |f: fn(&Enrollment) -> Option<String>| enrollment.as_ref().and_then(f);
            let request = CredentialsRequest {
                endpoint: first([
                    endpoint,
                    c.endpoint.clone(),
                    // Empty after fleet provisioning when nothing gave one.
                    recorded(|e| Some(e.endpoints.credentials.clone()).filter(|c| !c.is_empty())),
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
            let device = Device::new(&common.place, &config, false, false)?;
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

async fn run_enroll(
    config: &DeviceConfig,
    common: Common,
    credentials: Credentials,
    new_key: NewKey,
    url: Option<String>,
    ca: Option<PathBuf>,
) -> Result<(), Failure> {
    let e = &config.enroll;
    let url = first([url, e.url.clone()]).ok_or_else(|| {
        Failure::Config(
            "no API URL: pass --url, set CVM_API_URL or enroll.url in the config".into(),
        )
    })?;
    let (serial, token) = serial_and_token(credentials, config, false)?;
    let token = token.ok_or_else(|| Failure::Config("no token".into()))?;
    let device = Device::new(&common.place, config, new_key.generate_key, true)?;
    let spec = device.door_key(&common, config, new_key.insecure_software_key, &serial)?;
    let store = device.store(&spec)?;
    let wait = first([new_key.time_sync_wait, e.time_sync_wait]).unwrap_or(DEFAULT_TIME_SYNC_WAIT);
    let options = EnrollOptions {
        url,
        serial,
        token,
        ca: first([ca, e.api_ca.clone()]),
        out: device.dir.clone(),
        max_attempts: first([new_key.max_attempts, e.max_attempts]).unwrap_or(DEFAULT_MAX_ATTEMPTS),
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

/// What `provision` takes besides what `enroll` does.
struct ProvisionFlags {
    no_token: bool,
    template: Option<String>,
    claim_cert: Option<PathBuf>,
    claim_key: Option<String>,
    client_id_prefix: Option<String>,
    recorded: Recorded,
}

/// The claim key: a key store (never made here), or a PEM key file.
fn claim_key(spec: &str, device: &Device) -> Result<ClientKey, Failure> {
    let is_store = spec.starts_with("pkcs11:") || spec == "zymkey" || spec.starts_with("zymkey:");
    if is_store {
        let open = OpenOptions {
            may_generate: false,
            generate_key: false,
            ..device.open.clone()
        };
        let store = keystore::open(&KeySpec::parse(spec)?, &open)?;
        return Ok(ClientKey::Store(Arc::from(store)));
    }
    let path = spec.strip_prefix("file:").unwrap_or(spec);
    if path.is_empty() {
        return Err(Failure::Config("--claim-key: no path".into()));
    }
    Ok(ClientKey::File {
        path: PathBuf::from(path),
        sharing: device.open.sharing,
    })
}

async fn run_provision(
    config: &DeviceConfig,
    common: Common,
    credentials: Credentials,
    new_key: NewKey,
    mqtt: Mqtt,
    flags: ProvisionFlags,
) -> Result<(), Failure> {
    let p = &config.provision;
    let needed = |what: &str, flag: &str, key: &str| {
        Failure::Config(format!("no {what}: pass {flag} or set {key} in the config"))
    };
    let endpoint = mqtt_endpoint(&mqtt, config)?
        .ok_or_else(|| needed("MQTT endpoint", "--mqtt-endpoint", "mqtt.endpoint"))?;
    let broker_ca = first([
        mqtt.mqtt_ca,
        config.mqtt.ca.clone(),
        config.server_ca.clone(),
    ])
    .ok_or_else(|| needed("broker CA", "--mqtt-ca", "mqtt.ca"))?;
    let template = first([flags.template, p.template.clone()])
        .ok_or_else(|| needed("provisioning template", "--template", "provision.template"))?;
    let claim_certificate =
        first([flags.claim_cert, p.claim_certificate.clone()]).ok_or_else(|| {
            needed(
                "claim certificate",
                "--claim-cert",
                "provision.claim_certificate",
            )
        })?;
    let claim_key_spec = first([flags.claim_key, p.claim_key.clone()])
        .ok_or_else(|| needed("claim key", "--claim-key", "provision.claim_key"))?;
    let (serial, token) = serial_and_token(credentials, config, flags.no_token)?;
    let prefix = first([flags.client_id_prefix, p.client_id_prefix.clone()])
        .unwrap_or_else(|| DEFAULT_CLIENT_ID_PREFIX.to_owned());

    let device = Device::new(&common.place, config, new_key.generate_key, true)?;
    let spec = device.door_key(&common, config, new_key.insecure_software_key, &serial)?;
    // The device key first: a claim key on the same PKCS#11 module shares its initialization.
    let store: Arc<dyn KeyStore> = Arc::from(device.store(&spec)?);
    let claim_key = claim_key(&claim_key_spec, &device)?;
    let wait = first([new_key.time_sync_wait, config.enroll.time_sync_wait])
        .unwrap_or(DEFAULT_TIME_SYNC_WAIT);
    let options = ProvisionOptions {
        client_id: format!("{prefix}{serial}"),
        serial,
        token,
        template,
        endpoint,
        broker_ca,
        claim_certificate,
        claim_key,
        proof_topic: proof_topic(config),
        recorded: flags.recorded,
        out: device.dir.clone(),
        max_attempts: first([new_key.max_attempts, p.max_attempts]).unwrap_or(DEFAULT_MAX_ATTEMPTS),
        backoff: Backoff::default(),
        timeouts: Timeouts::default(),
        clock: ClockCheck::system(Duration::from_secs(wait)),
        sharing: device.open.sharing,
        interrupt_after: None,
    };
    match provision::provision(store, &options).await? {
        provision::Outcome::AlreadyProvisioned(e) => println!(
            "already enrolled as {} (certificate {}); nothing to do",
            e.thing_name, e.certificate_id
        ),
        provision::Outcome::Provisioned {
            enrollment: e,
            resumed,
        } => {
            let how = if resumed {
                "interrupted provisioning completed"
            } else {
                "provisioned"
            };
            println!(
                "{how}: {} (certificate {}, key {}); files in {}",
                e.thing_name,
                e.certificate_id,
                e.key,
                device.dir.display()
            );
        }
    }
    Ok(())
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
    let server_ca = first([server_ca, config.server_ca.clone()])
        .unwrap_or_else(|| identity::path(&device.dir, CA_FILE));
    Ok(mtls_client(
        store,
        &identity::path(&device.dir, CERTIFICATE_FILE),
        &server_ca,
    )?)
}

//! `provision`: fleet provisioning by claim, the second door (the first is `enroll`).
//!
//! The device connects to AWS IoT over MQTT with the fleet's shared claim certificate and uses
//! AWS IoT's two provisioning APIs, each answering on `<topic>/accepted` or `<topic>/rejected`
//! (subscribed to before anything is published):
//!
//! 1. `$aws/certificates/create-from-csr/json` `{certificateSigningRequest}` →
//!    `{certificateId, certificatePem, certificateOwnershipToken}`: a certificate for the key
//!    made in the device's key store, `PENDING_ACTIVATION`.
//! 2. `$aws/provisioning-templates/<template>/provision/json`
//!    `{certificateOwnershipToken, parameters: {SerialNumber, EnrollmentToken}}` →
//!    `{thingName, deviceConfiguration}`: the template's pre-provisioning hook checks the
//!    serial and token against the same enrollment record as the vending API, then AWS IoT
//!    creates the thing, attaches the policy and activates the certificate.
//!
//! Then the device connects again with its new certificate, as its thing, and publishes one
//! message: only an identity that works is written, as `enroll` writes it (certificate.pem,
//! ca.pem, enrollment.json last).
//!
//! Safe to re-run after any interruption. The certificate and its ownership token are kept
//! (0600, `provisioning.json`) as soon as AWS IoT gives them, and the registration as soon as
//! it is accepted: a run after a lost `RegisterThing` answer asks again with the same token
//! and gets the same thing and certificate (the hook allows the certificate on record again).
//! A device that starts over with the same key gets a new certificate, and the hook
//! deactivates the one it replaces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::api::Backoff;
use crate::clock::{rfc3339, ClockCheck, ClockError, Reference};
use crate::csr::{build_csr, key_fingerprint, CsrError};
use crate::enroll::{existing, save, share, Endpoints, Enrollment};
use crate::files::{ensure_dir, write_atomic, FileError, Sharing};
use crate::keystore::{KeyStore, KeyStoreError};
use crate::mqtt::{Answer, Endpoint, MqttError, Session, Timeouts};
use crate::tls::{
    certificates_from_pem, identity_config, identity_config_for, one_line, pem_bundle, ClientKey,
    TlsError,
};

/// The request topic of CreateCertificateFromCsr (JSON payloads).
pub const CREATE_FROM_CSR_TOPIC: &str = "$aws/certificates/create-from-csr/json";
/// In the enrollment directory: a provisioning under way (certificate, ownership token, then
/// the registration). Owner-only whatever `group` says: the token is a credential.
pub const PENDING_FILE: &str = "provisioning.json";
/// The template parameters the device sends; the hook overrides every other one.
pub const SERIAL_PARAMETER: &str = "SerialNumber";
pub const TOKEN_PARAMETER: &str = "EnrollmentToken";
/// How long a kept ownership token is used. AWS IoT lets it live one hour; a token older
/// than this by the device's clock is not tried, the device starts over.
pub const OWNERSHIP_TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);
/// The message proving a new certificate works goes here (`{thingName}` replaced): the default
/// device policy allows the thing's own topics, `things/<thing name>/*`.
pub const DEFAULT_PROOF_TOPIC: &str = "things/{thingName}/cvm/identity";
/// The claim connection's client id is this and the serial: a claim policy can allow only
/// client ids with the prefix.
pub const DEFAULT_CLIENT_ID_PREFIX: &str = "claim-";
/// The longest client id AWS IoT accepts.
pub const MAX_CLIENT_ID: usize = 128;

/// The request topic of RegisterThing for `template`.
pub fn register_thing_topic(template: &str) -> String {
    format!("$aws/provisioning-templates/{template}/provision/json")
}

/// What the device records besides what the answers give, each from the flags or config
/// first, then from the template's `deviceConfiguration`, then the default.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Default: the host provisioning connected to (the account's AWS IoT data endpoint).
    pub data_endpoint: Option<String>,
    /// Default: none (`credentials` then needs `--endpoint`).
    pub credentials_endpoint: Option<String>,
    pub role_alias: Option<String>,
    /// PEM CA certificates written to `ca.pem` (trusted for AWS IoT's endpoints later).
    /// Default: the broker CA file provisioning trusted.
    pub ca_bundle: Option<PathBuf>,
}

/// The `deviceConfiguration` keys read (any other is ignored).
pub const CONFIG_DATA_ENDPOINT: &str = "dataEndpoint";
pub const CONFIG_CREDENTIALS_ENDPOINT: &str = "credentialsEndpoint";
pub const CONFIG_ROLE_ALIAS: &str = "roleAlias";
pub const CONFIG_POLICY_NAME: &str = "policyName";

/// Where a run may be stopped on purpose, right after the step named, as a power cut or a
/// lost answer would stop it: for testing that the next run completes what was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// CreateCertificateFromCsr answered; the answer not kept (lost).
    CertificateCreated,
    /// The certificate and ownership token are kept; RegisterThing not asked.
    CertificateKept,
    /// RegisterThing answered; the answer not kept (lost).
    ThingRegistered,
    /// The registration is kept; the new identity not tried yet.
    RegistrationKept,
    /// The new identity published its message; nothing written yet.
    Proven,
}

pub struct ProvisionOptions {
    pub serial: String,
    /// `None` for a device whose key was registered at enrollment.
    pub token: Option<SecretString>,
    pub template: String,
    pub endpoint: Endpoint,
    /// PEM CA(s) to verify the broker with (for AWS IoT, Amazon Root CA 1).
    pub broker_ca: PathBuf,
    pub claim_certificate: PathBuf,
    pub claim_key: ClientKey,
    pub client_id: String,
    /// The topic of the message that proves the new identity; `{thingName}` is replaced.
    pub proof_topic: String,
    pub recorded: Recorded,
    pub out: PathBuf,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeouts: Timeouts,
    pub clock: ClockCheck,
    pub sharing: Sharing,
    /// See [`Step`]; `None` in normal runs.
    pub interrupt_after: Option<Step>,
}

#[derive(Debug)]
pub enum Outcome {
    /// The files were already there for this serial and key; nothing was asked.
    AlreadyProvisioned(Enrollment),
    Provisioned {
        enrollment: Enrollment,
        /// Whether the registration was one kept from an interrupted run.
        resumed: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("{0}")]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// A `.../rejected` answer.
    #[error("AWS IoT rejected {api}: {error_code} ({status_code}): {message}")]
    Rejected {
        api: &'static str,
        status_code: u16,
        error_code: String,
        message: String,
    },
    #[error("AWS IoT answered {api} with something unexpected: {message}")]
    InvalidResponse { api: &'static str, message: String },
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error("{0}")]
    Config(String),
    #[error("stopped on purpose after {0:?}")]
    Interrupted(Step),
}

impl ProvisionError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Mqtt(e) => e.is_transient(),
            Self::Rejected {
                status_code,
                error_code,
                ..
            } => crate::http::verdict(*status_code, error_code) == crate::http::Verdict::Transient,
            Self::InvalidResponse { .. } => true,
            _ => false,
        }
    }
}

const CREATE_API: &str = "CreateCertificateFromCsr";
const REGISTER_API: &str = "RegisterThing";

/// A rejected answer: `{statusCode, errorCode, errorMessage}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RejectedAnswer {
    status_code: u16,
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    error_message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatedAnswer {
    certificate_id: String,
    certificate_pem: String,
    certificate_ownership_token: SecretString,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub thing_name: String,
    #[serde(default)]
    pub device_configuration: BTreeMap<String, String>,
}

/// `provisioning.json`: a provisioning under way. Written by [`Pending::save`], which
/// exposes the token to the file and nowhere else.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    serial: String,
    public_key_fingerprint: String,
    certificate_id: String,
    certificate_pem: String,
    certificate_ownership_token: SecretString,
    /// When AWS IoT gave the token, seconds since 1970 by the device's clock.
    created_at: u64,
    registration: Option<Registration>,
    /// Left by an earlier run (not stored).
    #[serde(skip)]
    earlier: bool,
}

impl Pending {
    fn path(out: &Path) -> PathBuf {
        out.join(PENDING_FILE)
    }

    /// The provisioning kept in `out` for this serial and key, if any.
    fn load(out: &Path, serial: &str, fingerprint: &str) -> Option<Self> {
        let raw = std::fs::read(Self::path(out)).ok()?;
        let pending: Self = serde_json::from_slice(&raw).ok()?;
        (pending.serial == serial && pending.public_key_fingerprint == fingerprint).then_some(
            Self {
                earlier: true,
                ..pending
            },
        )
    }

    fn save(&self, out: &Path) -> Result<(), FileError> {
        let path = Self::path(out);
        // Serialized by hand so that the token, kept as a secret in memory, is written.
        let json = serde_json::json!({
            "serial": self.serial,
            "publicKeyFingerprint": self.public_key_fingerprint,
            "certificateId": self.certificate_id,
            "certificatePem": self.certificate_pem,
            "certificateOwnershipToken": self.certificate_ownership_token.expose_secret(),
            "createdAt": self.created_at,
            "registration": self.registration,
        });
        write_atomic(&path, json.to_string().as_bytes(), Sharing::PRIVATE)
            .map_err(FileError::at(&path))
    }

    fn remove(out: &Path) -> Result<(), FileError> {
        let path = Self::path(out);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FileError::at(&path)(e)),
            _ => Ok(()),
        }
    }

    fn token_is_fresh(&self, now: SystemTime) -> bool {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        now >= self.created_at && now - self.created_at < OWNERSHIP_TOKEN_REUSE.as_secs()
    }
}

/// What the API gave, checked: a rejection becomes [`ProvisionError::Rejected`].
fn accepted<T: serde::de::DeserializeOwned>(
    api: &'static str,
    answer: Answer,
) -> Result<T, ProvisionError> {
    let invalid = |message: String| ProvisionError::InvalidResponse { api, message };
    match answer {
        Answer::Accepted(payload) => {
            serde_json::from_slice(&payload).map_err(|e| invalid(one_line(&e.to_string())))
        }
        Answer::Rejected(payload) => {
            let r: RejectedAnswer = serde_json::from_slice(&payload).map_err(|e| {
                invalid(format!(
                    "a rejection that is not {{statusCode, errorCode, errorMessage}}: {}",
                    one_line(&e.to_string())
                ))
            })?;
            Err(ProvisionError::Rejected {
                api,
                status_code: r.status_code,
                error_code: one_line(&r.error_code).chars().take(100).collect(),
                message: one_line(&r.error_message).chars().take(300).collect(),
            })
        }
    }
}

/// A thing name as AWS IoT allows it (1 to 128 of `a-zA-Z0-9:_-`): it becomes the client id,
/// a topic level and a file's content.
pub fn valid_thing_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// A provisioning template name as AWS IoT allows it (1 to 36 of `a-zA-Z0-9_-`): it becomes
/// a topic level.
pub fn valid_template_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 36
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A value from `deviceConfiguration` used as a host name or name: printable, no spaces.
fn usable_value(value: &str) -> bool {
    !value.is_empty() && value.len() <= 512 && value.chars().all(|c| c.is_ascii_graphic())
}

fn check_created(created: &CreatedAnswer, store: &dyn KeyStore) -> Result<(), ProvisionError> {
    let invalid = |message: &str| ProvisionError::InvalidResponse {
        api: CREATE_API,
        message: message.to_owned(),
    };
    let id = &created.certificate_id;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "certificateId is not a certificate id (64 hex digits)",
        ));
    }
    if created
        .certificate_ownership_token
        .expose_secret()
        .is_empty()
    {
        return Err(invalid("certificateOwnershipToken is empty"));
    }
    if !crate::tls::certificate_is_for(store, &created.certificate_pem)? {
        return Err(invalid("the certificate is not for this device's key"));
    }
    Ok(())
}

/// The proof topic for `thing`.
pub fn proof_topic(template: &str, thing: &str) -> String {
    template.replace("{thingName}", thing)
}

struct Run<'a> {
    store: Arc<dyn KeyStore>,
    options: &'a ProvisionOptions,
    fingerprint: String,
}

impl Run<'_> {
    fn interrupt(&self, step: Step) -> Result<(), ProvisionError> {
        if self.options.interrupt_after == Some(step) {
            return Err(ProvisionError::Interrupted(step));
        }
        Ok(())
    }

    /// Connects with the claim certificate and subscribes to the answers of both APIs.
    async fn claim_session(&self) -> Result<Session, ProvisionError> {
        let o = self.options;
        let tls = identity_config(
            &o.claim_key,
            &o.claim_certificate,
            &o.broker_ca,
            o.endpoint.alpn_protocols(),
        )?;
        let mut session = Session::connect(&o.endpoint, &o.client_id, tls, o.timeouts).await?;
        let mut filters = Vec::new();
        for topic in [
            CREATE_FROM_CSR_TOPIC.to_owned(),
            register_thing_topic(&o.template),
        ] {
            filters.push(format!("{topic}/accepted"));
            filters.push(format!("{topic}/rejected"));
        }
        session.subscribe(&filters).await?;
        Ok(session)
    }

    async fn create_certificate(
        &self,
        session: &mut Session,
        csr: &str,
    ) -> Result<Pending, ProvisionError> {
        let request = serde_json::json!({ "certificateSigningRequest": csr });
        let answer = session
            .request(CREATE_FROM_CSR_TOPIC, request.to_string().into_bytes())
            .await?;
        let created: CreatedAnswer = accepted(CREATE_API, answer)?;
        check_created(&created, self.store.as_ref())?;
        self.interrupt(Step::CertificateCreated)?;
        let pending = Pending {
            serial: self.options.serial.clone(),
            public_key_fingerprint: self.fingerprint.clone(),
            certificate_id: created.certificate_id.to_ascii_lowercase(),
            certificate_pem: created.certificate_pem,
            certificate_ownership_token: created.certificate_ownership_token,
            created_at: self
                .options
                .clock
                .now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            registration: None,
            earlier: false,
        };
        pending.save(&self.options.out)?;
        self.interrupt(Step::CertificateKept)?;
        Ok(pending)
    }

    async fn register_thing(
        &self,
        session: &mut Session,
        pending: &Pending,
    ) -> Result<Registration, ProvisionError> {
        let o = self.options;
        let mut parameters = serde_json::Map::new();
        parameters.insert(SERIAL_PARAMETER.into(), o.serial.clone().into());
        if let Some(token) = &o.token {
            parameters.insert(TOKEN_PARAMETER.into(), token.expose_secret().into());
        }
        let request = serde_json::json!({
            "certificateOwnershipToken": pending.certificate_ownership_token.expose_secret(),
            "parameters": parameters,
        });
        let answer = session
            .request(
                &register_thing_topic(&o.template),
                request.to_string().into_bytes(),
            )
            .await?;
        let registration: Registration = accepted(REGISTER_API, answer)?;
        if !valid_thing_name(&registration.thing_name) {
            return Err(ProvisionError::InvalidResponse {
                api: REGISTER_API,
                message: "thingName is not a thing name".into(),
            });
        }
        self.interrupt(Step::ThingRegistered)?;
        Ok(registration)
    }

    /// Certificate and registration, over one claim connection. `kept` is a certificate and
    /// ownership token not registered yet, from an earlier run or attempt: its token is tried
    /// first; a certificate made here is left in it when RegisterThing fails, for the next
    /// attempt.
    async fn register(
        &self,
        kept: &mut Option<Pending>,
        csr: &str,
    ) -> Result<Pending, ProvisionError> {
        let mut session = self.claim_session().await?;
        let result = async {
            if let Some(mut earlier) = kept.take() {
                match self.register_thing(&mut session, &earlier).await {
                    Ok(registration) => {
                        earlier.registration = Some(registration);
                        return Ok(earlier);
                    }
                    // A token kept from an earlier run was not taken (expired, or not
                    // reusable after a registration): start over with a new certificate for
                    // the same key.
                    Err(ProvisionError::Rejected {
                        status_code: 400,
                        error_code,
                        ..
                    }) if earlier.earlier => {
                        eprintln!(
                            "cvm-device: the kept ownership token was rejected ({error_code}); \
                             asking for a new certificate"
                        );
                        Pending::remove(&self.options.out)?;
                    }
                    Err(e) => {
                        // Kept for the next attempt.
                        *kept = Some(earlier);
                        return Err(e);
                    }
                }
            }
            let mut pending = self.create_certificate(&mut session, csr).await?;
            // Kept for the next attempt should RegisterThing fail.
            let registration = self.register_thing(&mut session, &pending).await;
            let registration = match registration {
                Ok(r) => r,
                Err(e) => {
                    *kept = Some(pending);
                    return Err(e);
                }
            };
            pending.registration = Some(registration);
            Ok(pending)
        }
        .await;
        session.disconnect().await;
        result
    }

    /// Connects as the thing with the new certificate and publishes one message.
    async fn prove(&self, pending: &Pending, thing: &str) -> Result<(), ProvisionError> {
        let o = self.options;
        let tls = identity_config_for(
            &ClientKey::Store(self.store.clone()),
            certificates_from_pem(&pending.certificate_pem, Path::new(PENDING_FILE))?,
            Path::new(PENDING_FILE),
            &o.broker_ca,
            o.endpoint.alpn_protocols(),
        )?;
        let mut session = Session::connect(&o.endpoint, thing, tls, o.timeouts).await?;
        let message = serde_json::json!({
            "event": "provisioned",
            "serial": o.serial,
            "certificateId": pending.certificate_id,
        });
        let published = session
            .publish(
                &proof_topic(&o.proof_topic, thing),
                message.to_string().into_bytes(),
            )
            .await;
        session.disconnect().await;
        Ok(published?)
    }

    /// The identity to write, from the answers, the flags and `deviceConfiguration`.
    fn enrollment(&self, pending: &Pending, registration: &Registration) -> Enrollment {
        let o = self.options;
        let configured = |key: &str| {
            registration
                .device_configuration
                .get(key)
                .filter(|v| usable_value(v))
                .cloned()
        };
        Enrollment {
            serial: o.serial.clone(),
            thing_name: registration.thing_name.clone(),
            certificate_id: pending.certificate_id.clone(),
            certificate_arn: None,
            public_key_fingerprint: self.fingerprint.clone(),
            endpoints: Endpoints {
                data: o
                    .recorded
                    .data_endpoint
                    .clone()
                    .or_else(|| configured(CONFIG_DATA_ENDPOINT))
                    .unwrap_or_else(|| o.endpoint.host.clone()),
                credentials: o
                    .recorded
                    .credentials_endpoint
                    .clone()
                    .or_else(|| configured(CONFIG_CREDENTIALS_ENDPOINT))
                    .unwrap_or_default(),
            },
            policy_name: configured(CONFIG_POLICY_NAME),
            role_alias: o
                .recorded
                .role_alias
                .clone()
                .or_else(|| configured(CONFIG_ROLE_ALIAS)),
            issued_at: Some(rfc3339(o.clock.now())),
            key: self.store.describe(),
        }
    }
}

/// Counts the attempts of one step and waits between them.
struct Attempts {
    what: &'static str,
    made: u32,
    max: u32,
    backoff: Backoff,
    /// Try again after any failure, not only transient ones (a new certificate may take a
    /// moment to be usable everywhere in AWS IoT).
    any_failure: bool,
}

impl Attempts {
    fn new(what: &'static str, options: &ProvisionOptions) -> Self {
        Self {
            what,
            made: 0,
            max: options.max_attempts.max(1),
            backoff: options.backoff,
            any_failure: false,
        }
    }

    /// After a failed attempt: waits and returns `Ok` when another attempt is worth making,
    /// else gives the failure back.
    async fn failed(&mut self, e: ProvisionError) -> Result<(), ProvisionError> {
        self.made += 1;
        let retryable =
            e.is_transient() || (self.any_failure && matches!(e, ProvisionError::Mqtt(_)));
        if !retryable || self.made >= self.max {
            return Err(e);
        }
        let wait = self.backoff.delay(self.made);
        eprintln!(
            "cvm-device: {}: {e}; retrying in {:.1} s",
            self.what,
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// Provisions this device by claim (see the module documentation).
pub async fn provision(
    store: Arc<dyn KeyStore>,
    options: &ProvisionOptions,
) -> Result<Outcome, ProvisionError> {
    let fingerprint = key_fingerprint(store.as_ref())?;
    let out = &options.out;
    if let Some(enrollment) = existing(out, &options.serial, &fingerprint) {
        share(out, options.sharing)?;
        let _ = Pending::remove(out);
        return Ok(Outcome::AlreadyProvisioned(enrollment));
    }
    if !valid_template_name(&options.template) {
        return Err(ProvisionError::Config(format!(
            "template {:?}: a provisioning template name is 1 to 36 of a-z, A-Z, 0-9, _ and -",
            options.template
        )));
    }
    if options.client_id.is_empty() || options.client_id.len() > MAX_CLIENT_ID {
        return Err(ProvisionError::Config(format!(
            "client id {:?}: AWS IoT takes 1 to {MAX_CLIENT_ID} bytes",
            options.client_id
        )));
    }
    let ca_bundle = options
        .recorded
        .ca_bundle
        .as_deref()
        .unwrap_or(&options.broker_ca);
    let cas = [pem_bundle(ca_bundle)?];
    // Where the result goes must be writable before anything is asked.
    ensure_dir(out, options.sharing).map_err(FileError::at(out))?;
    options.clock.settle(&Reference::Build).await?;

    let run = Run {
        store: store.clone(),
        options,
        fingerprint: fingerprint.clone(),
    };
    let mut kept = Pending::load(out, &options.serial, &fingerprint);
    if let Some(p) = &kept {
        if p.registration.is_none() && !p.token_is_fresh(options.clock.now()) {
            // AWS IoT has let the token expire (and deletes a certificate nobody activated).
            kept = None;
            Pending::remove(out)?;
        }
    }
    let resumed = kept.is_some();
    let pending = match kept {
        Some(p) if p.registration.is_some() => p,
        mut kept => {
            let csr = build_csr(store.as_ref(), &options.serial)?;
            let mut attempts = Attempts::new("fleet provisioning", options);
            let pending = loop {
                match run.register(&mut kept, &csr).await {
                    Ok(pending) => break pending,
                    Err(e) => attempts.failed(e).await?,
                }
            };
            pending.save(out)?;
            run.interrupt(Step::RegistrationKept)?;
            pending
        }
    };
    let registration =
        pending
            .registration
            .clone()
            .ok_or_else(|| ProvisionError::InvalidResponse {
                api: REGISTER_API,
                message: "no registration".into(),
            })?;
    let mut attempts = Attempts {
        any_failure: true,
        ..Attempts::new("trying the new certificate", options)
    };
    while let Err(e) = run.prove(&pending, &registration.thing_name).await {
        attempts.failed(e).await?;
    }
    run.interrupt(Step::Proven)?;
    let enrollment = run.enrollment(&pending, &registration);
    save(
        out,
        &pending.certificate_pem,
        &cas,
        &enrollment,
        options.sharing,
    )?;
    Pending::remove(out)?;
    Ok(Outcome::Provisioned {
        enrollment,
        resumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_read_and_classified() {
        let rejected = |payload: &str| {
            accepted::<Registration>(REGISTER_API, Answer::Rejected(payload.as_bytes().to_vec()))
        };
        let denied = rejected(
            r#"{"statusCode":403,"errorCode":"AccessDenied","errorMessage":"Denied by the hook"}"#,
        );
        assert!(
            matches!(&denied, Err(ProvisionError::Rejected { status_code: 403, error_code, .. }) if error_code == "AccessDenied"),
            "{denied:?}"
        );
        assert!(!denied.map(|_| ()).err().is_some_and(|e| e.is_transient()));
        for transient in [
            r#"{"statusCode":429,"errorCode":"Throttling","errorMessage":"Rate exceeded"}"#,
            r#"{"statusCode":500,"errorCode":"InternalFailure","errorMessage":""}"#,
            r#"{"statusCode":503,"errorCode":"ServiceUnavailable"}"#,
        ] {
            let e = rejected(transient).map(|_| ()).err();
            assert!(
                e.as_ref().is_some_and(|e| e.is_transient()),
                "{transient}: {e:?}"
            );
        }
        // Not the documented shape: unexpected, not a refusal.
        for bad in [
            "",
            "{}",
            r#"{"statusCode":"403"}"#,
            "[]",
            r#"{"statusCode":70000}"#,
        ] {
            assert!(
                matches!(rejected(bad), Err(ProvisionError::InvalidResponse { .. })),
                "{bad}"
            );
        }
        // What AWS IoT says is kept to one line of bounded length.
        let long = format!(
            r#"{{"statusCode":400,"errorCode":"X","errorMessage":"a\nb{}"}}"#,
            "c".repeat(1000)
        );
        match rejected(&long) {
            Err(ProvisionError::Rejected { message, .. }) => {
                assert!(!message.contains('\n'));
                assert_eq!(message.chars().count(), 300);
            }
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn accepted_answers_must_have_their_fields() {
        let register = |payload: &str| {
            accepted::<Registration>(REGISTER_API, Answer::Accepted(payload.as_bytes().to_vec()))
        };
        let ok = register(r#"{"thingName":"ZK-1","deviceConfiguration":{"roleAlias":"r"}}"#);
        assert_eq!(
            ok.ok()
                .map(|r| (r.thing_name, r.device_configuration.len())),
            Some(("ZK-1".to_owned(), 1))
        );
        assert!(register(r#"{"thingName":"ZK-1"}"#).is_ok());
        for bad in [
            "",
            "null",
            r#"{"deviceConfiguration":{}}"#,
            r#"{"thingName":7}"#,
            r#"{"thingName":"a","deviceConfiguration":{"n":1}}"#,
        ] {
            assert!(
                matches!(register(bad), Err(ProvisionError::InvalidResponse { .. })),
                "{bad}"
            );
        }
        let created = |payload: &str| {
            accepted::<CreatedAnswer>(CREATE_API, Answer::Accepted(payload.as_bytes().to_vec()))
        };
        assert!(created(r#"{"certificateId":"a","certificatePem":"p"}"#).is_err());
        assert!(created(
            r#"{"certificateId":"a","certificatePem":"p","certificateOwnershipToken":"t"}"#
        )
        .is_ok());
    }

    #[test]
    fn thing_names_and_configured_values_are_checked() {
        for good in ["ZK-0001", "a:b_c-d", &"x".repeat(128)] {
            assert!(valid_thing_name(good), "{good}");
        }
        for bad in ["", "a/b", "a b", "#", "+", "ü", &"x".repeat(129), "a\n"] {
            assert!(!valid_thing_name(bad), "{bad:?}");
        }
        assert!(valid_template_name("cvm-fleet_2"));
        for bad in ["", "a/b", "cvm/#", "+", "a:b", &"t".repeat(37)] {
            assert!(!valid_template_name(bad), "{bad:?}");
        }
        assert!(usable_value("abc-ats.iot.eu-west-1.amazonaws.com"));
        for bad in ["", "a b", "a\nb", &"x".repeat(513)] {
            assert!(!usable_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn kept_tokens_are_used_only_while_fresh() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let pending = Pending {
            serial: "S".into(),
            public_key_fingerprint: "f".into(),
            certificate_id: "c".into(),
            certificate_pem: String::new(),
            certificate_ownership_token: SecretString::from("t".to_owned()),
            created_at: 1_000_000,
            registration: None,
            earlier: false,
        };
        assert!(pending.token_is_fresh(at(1_000_000)));
        assert!(pending.token_is_fresh(at(1_000_000 + 49 * 60)));
        assert!(!pending.token_is_fresh(at(1_000_000 + 50 * 60)));
        // A clock set back since: not trusted either.
        assert!(!pending.token_is_fresh(at(999_000)));
    }

    #[test]
    fn the_pending_state_round_trips_with_its_token() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let pending = Pending {
            serial: "S".into(),
            public_key_fingerprint: "f".into(),
            certificate_id: "c".into(),
            certificate_pem: "pem".into(),
            certificate_ownership_token: SecretString::from("the-token".to_owned()),
            created_at: 7,
            earlier: false,
            registration: Some(Registration {
                thing_name: "T".into(),
                device_configuration: BTreeMap::new(),
            }),
        };
        assert!(pending.save(tmp.path()).is_ok());
        let mode = std::fs::metadata(tmp.path().join(PENDING_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        let loaded = Pending::load(tmp.path(), "S", "f");
        assert_eq!(
            loaded
                .as_ref()
                .map(|p| p.certificate_ownership_token.expose_secret().to_owned()),
            Some("the-token".to_owned())
        );
        assert_eq!(loaded.and_then(|p| p.registration), pending.registration);
        // Another serial or key: not ours.
        assert!(Pending::load(tmp.path(), "S2", "f").is_none());
        assert!(Pending::load(tmp.path(), "S", "g").is_none());
        assert!(!format!("{pending:?}").contains("the-token"));
    }
}

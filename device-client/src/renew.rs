//! `renew`: a new certificate without a token, proven before it replaces the current one.
//!
//! 1. The next key is made in the key store (a key file: a new file beside the current one;
//!    PKCS#11: a new label on the same token; Zymkey HSM6/SCM with `--generate-key`: a new
//!    slot; a Zymkey slot otherwise: the same key) and named in `next/key` first, so an
//!    interrupted run uses the same key again.
//! 2. `POST /v1/renewals {serial, csr, signature}`: the CSR (made with the next key) signed
//!    by the *current* key. The API issues a certificate, active beside the current one, and
//!    answers as a vend does; it is kept in `next/` (`renewal.json` last).
//! 3. The device connects to AWS IoT's data endpoint with the new certificate, as its thing,
//!    and publishes one message: a certificate that does not work is never promoted.
//! 4. `POST /v1/renewals/confirm {serial, certificateId, signature}`, signed by the *next*
//!    key: the API revokes the old certificate. The device then writes `next/promoting`: the
//!    new identity is the device's from that instant (see [`crate::identity`]).
//! 5. The files move from `next/` into place, `enrollment.json` last; a key file of the old,
//!    now revoked, certificate is removed.
//!
//! Safe to re-run after an interruption at any point: each step starts from what is on disk
//! and the API answers a repeated request with what it answered before. Until step 4 the
//! current certificate is untouched and works; a proposal the device never confirms is
//! revoked by the server after its grace period, and the device then starts over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::api::{self, ApiError, Backoff, Retries};
use crate::clock::{rfc3339, ClockCheck, ClockError, Reference};
use crate::csr::{build_signed_csr, key_fingerprint, sign_message, CsrError};
use crate::enroll::{Enrollment, VendResponse};
use crate::files::{ensure_dir, write_atomic, FileError, Sharing};
use crate::identity::{self, CA_FILE, CERTIFICATE_FILE, METADATA_FILE, NEXT_DIR, PROMOTING};
use crate::keystore::{self, KeySpec, KeyStore, KeyStoreError, OpenOptions, ZymkeyStore};
use crate::mqtt::{Endpoint, MqttError, Session, Timeouts};
use crate::provision::proof_topic;
use crate::tls::{identity_config, ClientKey, TlsError};

/// In `next/`: the spec of the next key, written before the key is made.
pub const NEXT_KEY_FILE: &str = "key";
/// In `next/`: the proposal the API made, written after its certificate.
pub const PROPOSAL_FILE: &str = "renewal.json";
/// The default renewal window of `--if-due`: this long before the certificate expires.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the server keeps a proposal it was not given proof for (its default); an older
/// one is started over.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

const RENEWAL_LABEL: &[u8] = b"cvm-renewal-v1";
const CONFIRMATION_LABEL: &[u8] = b"cvm-renewal-confirmation-v1";

fn signed_message(label: &[u8], serial: &str, subject: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + serial.len() + subject.len() + 2);
    m.extend_from_slice(label);
    m.push(0);
    m.extend_from_slice(serial.as_bytes());
    m.push(0);
    m.extend_from_slice(subject);
    m
}

/// What the current key signs to ask for a renewal: the label, the serial and the new CSR's
/// DER, separated by zero bytes (the API's `renewal_message`).
pub fn renewal_message(serial: &str, csr_der: &[u8]) -> Vec<u8> {
    signed_message(RENEWAL_LABEL, serial, csr_der)
}

/// What the next key signs to prove the device holds the new certificate (the API's
/// `confirmation_message`).
pub fn confirmation_message(serial: &str, certificate_id: &str) -> Vec<u8> {
    signed_message(CONFIRMATION_LABEL, serial, certificate_id.as_bytes())
}

/// Where a run may be stopped on purpose, right after the step named, as a power cut or a
/// lost answer would stop it: for testing that the next run completes what was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next key exists; nothing asked.
    KeyMade,
    /// The API proposed a certificate; the answer not kept (lost).
    RenewalAnswered,
    /// The proposal is kept in `next/`; the new certificate not tried.
    ProposalKept,
    /// The new certificate published its message; not committed.
    Proven,
    /// `next/promoting` is written (the new identity is the device's); not confirmed.
    Committed,
    /// The API confirmed; the answer not recorded (lost).
    ConfirmAnswered,
    /// The confirmation is recorded; no file moved yet.
    Confirmed,
    /// The new certificate is in place, the rest of the files not yet.
    CertificateMoved,
}

pub struct RenewOptions {
    /// Base URL of the vending API.
    pub url: String,
    /// PEM roots to trust for the API instead of the system's.
    pub api_ca: Option<PathBuf>,
    /// The enrollment directory.
    pub dir: PathBuf,
    /// AWS IoT's MQTT endpoint for the proof. Default: the data endpoint recorded, port 8883.
    pub endpoint: Option<Endpoint>,
    /// CA(s) to verify the broker with. Default: the current `ca.pem`.
    pub broker_ca: Option<PathBuf>,
    pub proof_topic: String,
    /// Only renew within `window` of the certificate's expiry (or after it).
    pub if_due: bool,
    pub window: Duration,
    pub grace: Duration,
    /// HSM6/SCM: make the next key pair in a new Zymkey slot.
    pub generate_key: bool,
    /// How key stores are opened (Zymkey library, sharing of key files).
    pub open: OpenOptions,
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
    /// `--if-due` and the certificate is not due; nothing was done.
    NotDue {
        not_after: SystemTime,
        due_at: SystemTime,
    },
    Renewed {
        enrollment: Box<Enrollment>,
        /// The previous certificate's id.
        replaced: String,
        /// Whether a renewal left by an interrupted run was completed.
        resumed: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// No enrollment to renew, or its files cannot be read.
    #[error("{0}")]
    NotEnrolled(String),
    #[error("{0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("{0}")]
    Csr(#[from] CsrError),
    #[error("{}", api_message(.what, .source))]
    Api {
        /// "renewal" or "confirmation".
        what: &'static str,
        source: ApiError,
    },
    #[error("the API answered the {what} with something unexpected: {message}")]
    InvalidResponse { what: &'static str, message: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the new certificate does not work yet: {0}")]
    Mqtt(#[from] MqttError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error("stopped on purpose after {0:?}")]
    Interrupted(Step),
}

fn api_message(what: &str, e: &ApiError) -> String {
    match e {
        ApiError::Refused { .. } => format!("the API refused the {what}: {e}"),
        other => other.to_string(),
    }
}

impl RenewError {
    fn api(what: &'static str) -> impl FnOnce(ApiError) -> RenewError {
        move |source| RenewError::Api { what, source }
    }
}

/// `next/renewal.json`: the certificate the API proposed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Proposal {
    certificate_id: String,
    /// When the API proposed it, seconds since 1970 by the device's clock.
    proposed_at: u64,
    /// Whether the new certificate has published its message.
    proven: bool,
    /// Whether the API has confirmed it (and revoked the previous one).
    #[serde(default)]
    confirmed: bool,
    /// The certificate it replaces, and that certificate's key store spec.
    previous_certificate_id: String,
    previous_key: String,
}

impl Proposal {
    fn load(next: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(next.join(PROPOSAL_FILE)).ok()?).ok()
    }

    fn save(&self, next: &Path, sharing: Sharing) -> Result<(), FileError> {
        let path = next.join(PROPOSAL_FILE);
        serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            .and_then(|json| write_atomic(&path, &json, sharing))
            .map_err(FileError::at(&path))
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The certificate's notAfter.
pub fn not_after(certificate_pem: &str) -> Result<SystemTime, String> {
    use x509_cert::der::DecodePem;
    let certificate = x509_cert::Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(certificate
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time())
}

/// When a certificate valid until `not_after` is due for renewal with `window`.
pub fn due_at(not_after: SystemTime, window: Duration) -> SystemTime {
    not_after.checked_sub(window).unwrap_or(UNIX_EPOCH)
}

fn remove_if_present(path: &Path) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FileError::at(path)(e)),
        _ => Ok(()),
    }
}

/// Forgets a proposal (the API abandoned it, or will): the next key is kept for the next one.
fn drop_proposal(next: &Path) -> Result<(), FileError> {
    // The proposal file first: without it the rest is not taken for a proposal.
    for name in [PROPOSAL_FILE, CERTIFICATE_FILE, CA_FILE, METADATA_FILE] {
        remove_if_present(&next.join(name))?;
    }
    Ok(())
}

struct Run<'a> {
    options: &'a RenewOptions,
    next: PathBuf,
    current: Enrollment,
    current_store: Arc<dyn KeyStore>,
    client: reqwest::Client,
}

impl Run<'_> {
    fn interrupt(&self, step: Step) -> Result<(), RenewError> {
        if self.options.interrupt_after == Some(step) {
            return Err(RenewError::Interrupted(step));
        }
        Ok(())
    }

    fn retries(&self) -> Retries {
        Retries {
            max_attempts: self.options.max_attempts,
            backoff: self.options.backoff,
            clock: self.options.clock.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.options.url.trim_end_matches('/'))
    }

    /// The next key: the one named in `next/key`, or a new one, named there before it is made
    /// (a Zymkey slot just after: the module chooses it), so that a run interrupted after
    /// this point uses the same key again.
    fn next_key(&self) -> Result<Arc<dyn KeyStore>, RenewError> {
        let o = self.options;
        let named = self.next.join(NEXT_KEY_FILE);
        let open = OpenOptions {
            may_generate: true,
            generate_key: false,
            ..o.open.clone()
        };
        let spec = match std::fs::read_to_string(&named) {
            Ok(text) => KeySpec::parse(text.trim())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let current = KeySpec::parse(&self.current.key)?;
                let spec = match (current.successor(), &current) {
                    (Some(next), _) => next,
                    (None, KeySpec::Zymkey(_)) if o.generate_key => {
                        let lib = o.open.zymkey_lib.as_deref();
                        let slot = ZymkeyStore::generate_key_pair(lib)?;
                        let slot_file = self.next.join(keystore::ZYMKEY_SLOT_FILE);
                        write_atomic(&slot_file, format!("{slot}\n").as_bytes(), o.sharing)
                            .map_err(FileError::at(&slot_file))?;
                        KeySpec::Zymkey(Some(slot))
                    }
                    // A module that keeps its key: the renewal certifies the same key again.
                    (None, same) => same.clone(),
                };
                write_atomic(
                    &named,
                    spec_text(&spec, &self.current).as_bytes(),
                    o.sharing,
                )
                .map_err(FileError::at(&named))?;
                spec
            }
            Err(e) => return Err(FileError::at(&named)(e).into()),
        };
        let store: Arc<dyn KeyStore> = if self.current.key == spec_text(&spec, &self.current) {
            self.current_store.clone()
        } else {
            Arc::from(keystore::open(&spec, &open)?)
        };
        self.interrupt(Step::KeyMade)?;
        Ok(store)
    }

    /// Step 2: the API's proposal, kept in `next/`.
    async fn propose(&self, store: &Arc<dyn KeyStore>) -> Result<Proposal, RenewError> {
        let serial = &self.current.serial;
        let csr = build_signed_csr(store.as_ref(), serial)?;
        let signature = sign_message(
            self.current_store.as_ref(),
            &renewal_message(serial, &csr.der),
        )?;
        let body = serde_json::json!({
            "serial": serial,
            "csr": csr.pem,
            "signature": base64::engine::general_purpose::STANDARD.encode(signature),
        });
        let answer = api::post(
            &self.client,
            &self.url("/v1/renewals"),
            &body,
            &self.retries(),
        )
        .await
        .map_err(RenewError::api("renewal"))?;
        let invalid = |message: &str| RenewError::InvalidResponse {
            what: "renewal",
            message: message.to_owned(),
        };
        let vended: VendResponse = serde_json::from_str(&answer.body)
            .map_err(|e| invalid(&crate::tls::one_line(&e.to_string())))?;
        if !crate::tls::certificate_is_for(store.as_ref(), &vended.certificate_pem)? {
            return Err(invalid("the certificate is not for the next key"));
        }
        if vended.certificate_id == self.current.certificate_id {
            return Err(invalid("the proposed certificate is the current one"));
        }
        if !crate::provision::valid_thing_name(&vended.thing_name) {
            return Err(invalid("thingName is not a thing name"));
        }
        self.interrupt(Step::RenewalAnswered)?;

        let o = self.options;
        ensure_dir(&self.next, o.sharing).map_err(FileError::at(&self.next))?;
        let enrollment = Enrollment::from_vend(
            serial,
            &vended,
            key_fingerprint(store.as_ref())?,
            store.describe(),
        );
        for (name, contents) in [
            (
                CERTIFICATE_FILE,
                vended.certificate_pem.clone().into_bytes(),
            ),
            (CA_FILE, vended.ca_certificates.join("\n").into_bytes()),
            (
                METADATA_FILE,
                enrollment.to_json().map_err(FileError::at(&self.next))?,
            ),
        ] {
            let path = self.next.join(name);
            write_atomic(&path, &contents, o.sharing).map_err(FileError::at(&path))?;
        }
        let proposal = Proposal {
            certificate_id: vended.certificate_id,
            proposed_at: seconds(o.clock.now()),
            proven: false,
            confirmed: false,
            previous_certificate_id: self.current.certificate_id.clone(),
            previous_key: self.current.key.clone(),
        };
        // Written last: its presence means the proposal is complete in `next/`.
        proposal.save(&self.next, o.sharing)?;
        self.interrupt(Step::ProposalKept)?;
        Ok(proposal)
    }

    /// Step 3: one message published with the new certificate, as the thing.
    async fn prove(
        &self,
        store: &Arc<dyn KeyStore>,
        proposal: &Proposal,
    ) -> Result<(), RenewError> {
        let o = self.options;
        let next_identity = Enrollment::load_from(&self.next.join(METADATA_FILE))
            .map_err(RenewError::NotEnrolled)?;
        let endpoint = match &o.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => Endpoint::parse(&next_identity.endpoints.data, false)
                .map_err(RenewError::NotEnrolled)?,
        };
        let broker_ca = o
            .broker_ca
            .clone()
            .unwrap_or_else(|| identity::path(&o.dir, CA_FILE));
        let tls = identity_config(
            &ClientKey::Store(store.clone()),
            &self.next.join(CERTIFICATE_FILE),
            &broker_ca,
            endpoint.alpn_protocols(),
        )?;
        let thing = &next_identity.thing_name;
        let mut session = Session::connect(&endpoint, thing, tls, o.timeouts).await?;
        let message = serde_json::json!({
            "event": "renewed",
            "serial": self.current.serial,
            "certificateId": proposal.certificate_id,
            "replaces": self.current.certificate_id,
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
}

/// Step 4: the API is told, with a signature by the new key, that the device holds the new
/// certificate; it revokes the previous one.
async fn confirm(
    options: &RenewOptions,
    client: &reqwest::Client,
    serial: &str,
    store: &dyn KeyStore,
    proposal: &Proposal,
) -> Result<(), RenewError> {
    let signature = sign_message(
        store,
        &confirmation_message(serial, &proposal.certificate_id),
    )?;
    let body = serde_json::json!({
        "serial": serial,
        "certificateId": proposal.certificate_id,
        "signature": base64::engine::general_purpose::STANDARD.encode(signature),
    });
    let retries = Retries {
        max_attempts: options.max_attempts,
        backoff: options.backoff,
        clock: options.clock.clone(),
    };
    let url = format!("{}/v1/renewals/confirm", options.url.trim_end_matches('/'));
    let answer = api::post(client, &url, &body, &retries)
        .await
        .map_err(RenewError::api("confirmation"))?;
    let confirmed: VendResponse =
        serde_json::from_str(&answer.body).map_err(|e| RenewError::InvalidResponse {
            what: "confirmation",
            message: crate::tls::one_line(&e.to_string()),
        })?;
    if !confirmed
        .certificate_id
        .eq_ignore_ascii_case(&proposal.certificate_id)
    {
        return Err(RenewError::InvalidResponse {
            what: "confirmation",
            message: "it names another certificate".into(),
        });
    }
    Ok(())
}

/// The spec as recorded: a Zymkey slot that keeps its key is recorded as it was.
fn spec_text(spec: &KeySpec, current: &Enrollment) -> String {
    match spec {
        KeySpec::File(path) => format!("file:{}", path.display()),
        KeySpec::Pkcs11(p) => p.to_string(),
        KeySpec::Zymkey(Some(slot)) => format!("zymkey:{slot}"),
        KeySpec::Zymkey(None) => current.key.clone(),
    }
}

/// Counts the attempts of the proof and waits between them: a new certificate may take a
/// moment to be usable everywhere in AWS IoT, so any MQTT failure is tried again.
async fn prove_with_retries(
    run: &Run<'_>,
    store: &Arc<dyn KeyStore>,
    proposal: &Proposal,
) -> Result<(), RenewError> {
    let o = run.options;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run.prove(store, proposal).await {
            Err(RenewError::Mqtt(e)) if attempt < o.max_attempts.max(1) => {
                let wait = o.backoff.delay(attempt);
                eprintln!(
                    "cvm-device: trying the new certificate: {e}; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Moves the confirmed next identity into place (step 5). Each move is one rename, and
/// every command reads through [`identity::path`], so an interruption anywhere leaves a
/// consistent identity that the next run finishes moving.
fn promote(dir: &Path, interrupt_after: Option<Step>) -> Result<Enrollment, RenewError> {
    let next = dir.join(NEXT_DIR);
    for name in [
        CERTIFICATE_FILE,
        CA_FILE,
        keystore::ZYMKEY_SLOT_FILE,
        METADATA_FILE,
    ] {
        let from = next.join(name);
        if from.exists() {
            let to = dir.join(name);
            std::fs::rename(&from, &to).map_err(FileError::at(&to))?;
            if name == CERTIFICATE_FILE && interrupt_after == Some(Step::CertificateMoved) {
                return Err(RenewError::Interrupted(Step::CertificateMoved));
            }
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let enrollment = Enrollment::load(dir).map_err(RenewError::NotEnrolled)?;
    if let Some(proposal) = Proposal::load(&next) {
        // The old certificate is revoked: a key file of it has no use left.
        if proposal.previous_key != enrollment.key {
            if let Ok(KeySpec::File(old)) = KeySpec::parse(&proposal.previous_key) {
                remove_if_present(&old)?;
            }
        }
    }
    // The commit mark last but one: until it goes, a run finishes this promotion.
    for name in [NEXT_KEY_FILE, PROPOSAL_FILE, PROMOTING] {
        remove_if_present(&next.join(name))?;
    }
    match std::fs::remove_dir_all(&next) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(FileError::at(&next)(e).into())
        }
        _ => {}
    }
    Ok(enrollment)
}

/// Why one round of a renewal ended without a new certificate.
enum Round {
    Done(Outcome),
    /// The API no longer has the proposal (not confirmed within its grace, or replaced): it
    /// was forgotten, and the current certificate is the device's again.
    ProposalGone(RenewError),
}

/// Renews this device's certificate (see the module documentation).
pub async fn renew(options: &RenewOptions) -> Result<Outcome, RenewError> {
    options.clock.settle(&Reference::Build).await?;
    match renew_round(options).await? {
        Round::Done(outcome) => Ok(outcome),
        Round::ProposalGone(why) => {
            eprintln!("cvm-device: {why}; asking for a new certificate");
            match renew_round(options).await? {
                Round::Done(outcome) => Ok(outcome),
                Round::ProposalGone(why) => Err(why),
            }
        }
    }
}

async fn renew_round(options: &RenewOptions) -> Result<Round, RenewError> {
    let dir = &options.dir;
    let next = dir.join(NEXT_DIR);
    if next.join(PROMOTING).exists() {
        return finish(options, true).await;
    }
    let current = Enrollment::load(dir).map_err(RenewError::NotEnrolled)?;
    let certificate_path = identity::path(dir, CERTIFICATE_FILE);
    let current_pem = std::fs::read_to_string(&certificate_path)
        .map_err(|e| RenewError::NotEnrolled(format!("{}: {e}", certificate_path.display())))?;

    let now = options.clock.now();
    let mut proposal = Proposal::load(&next);
    if let Some(p) = &proposal {
        if p.proposed_at + options.grace.as_secs() <= seconds(now) {
            eprintln!(
                "cvm-device: the proposed certificate {} was not confirmed within {} days; \
                 asking again",
                p.certificate_id,
                options.grace.as_secs() / 86_400
            );
            drop_proposal(&next)?;
            proposal = None;
        }
    }
    let started = proposal.is_some() || next.join(NEXT_KEY_FILE).exists();
    if options.if_due && !started {
        let not_after = not_after(&current_pem)
            .map_err(|e| RenewError::NotEnrolled(format!("{}: {e}", certificate_path.display())))?;
        let due = due_at(not_after, options.window);
        if now < due {
            return Ok(Round::Done(Outcome::NotDue {
                not_after,
                due_at: due,
            }));
        }
    }
    ensure_dir(&next, options.sharing).map_err(FileError::at(&next))?;

    let current_spec = KeySpec::parse(&current.key)?;
    let current_store: Arc<dyn KeyStore> = Arc::from(keystore::open(
        &current_spec,
        &OpenOptions {
            may_generate: false,
            generate_key: false,
            ..options.open.clone()
        },
    )?);
    if key_fingerprint(current_store.as_ref())? != current.public_key_fingerprint {
        return Err(RenewError::NotEnrolled(format!(
            "the key {} is not the one enrollment.json names the certificate for",
            current.key
        )));
    }
    let run = Run {
        options,
        next: next.clone(),
        client: api::client(options.api_ca.as_deref()).map_err(RenewError::api("renewal"))?,
        current,
        current_store,
    };
    let store = run.next_key()?;
    let mut proposal = match proposal {
        Some(p) => p,
        None => run.propose(&store).await?,
    };
    if !proposal.proven {
        prove_with_retries(&run, &store, &proposal).await?;
        proposal.proven = true;
        proposal.save(&next, options.sharing)?;
        run.interrupt(Step::Proven)?;
    }
    // The commit: from here the new certificate, proven to work, is the device's. The
    // previous one stays active until the API has the confirmation, so whatever happens to
    // it the device has a working identity.
    let marker = next.join(PROMOTING);
    write_atomic(&marker, b"", options.sharing).map_err(FileError::at(&marker))?;
    run.interrupt(Step::Committed)?;
    // The stores close before `finish` opens the new key again (one PKCS#11 session each).
    drop(store);
    drop(run);
    finish(options, started).await
}

/// Confirms the committed renewal unless it was, then moves its files into place. A
/// confirmation the API refuses for good rolls the commit back: the previous certificate,
/// which the API revokes only on confirmation, is the device's again.
async fn finish(options: &RenewOptions, resumed: bool) -> Result<Round, RenewError> {
    let dir = &options.dir;
    let next = dir.join(NEXT_DIR);
    let mut replaced = None;
    if let Some(mut proposal) = Proposal::load(&next) {
        replaced = Some(proposal.previous_certificate_id.clone());
        if !proposal.confirmed {
            let identity = Enrollment::load_from(&next.join(METADATA_FILE))
                .map_err(RenewError::NotEnrolled)?;
            let store = keystore::open(
                &KeySpec::parse(&identity.key)?,
                &OpenOptions {
                    may_generate: false,
                    generate_key: false,
                    ..options.open.clone()
                },
            )?;
            let client =
                api::client(options.api_ca.as_deref()).map_err(RenewError::api("confirmation"))?;
            let confirmed = confirm(
                options,
                &client,
                &identity.serial,
                store.as_ref(),
                &proposal,
            )
            .await;
            match confirmed {
                Ok(()) => {}
                Err(e) if renew_status_is_final(&e) => {
                    remove_if_present(&next.join(PROMOTING))?;
                    let gone = matches!(&e, RenewError::Api { source: ApiError::Refused { code, .. }, .. } if code == "nothing_to_renew");
                    if gone {
                        drop_proposal(&next)?;
                        return Ok(Round::ProposalGone(e));
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            if options.interrupt_after == Some(Step::ConfirmAnswered) {
                return Err(RenewError::Interrupted(Step::ConfirmAnswered));
            }
            proposal.confirmed = true;
            proposal.save(&next, options.sharing)?;
            if options.interrupt_after == Some(Step::Confirmed) {
                return Err(RenewError::Interrupted(Step::Confirmed));
            }
        }
    }
    let enrollment = promote(dir, options.interrupt_after)?;
    Ok(Round::Done(Outcome::Renewed {
        enrollment: Box::new(enrollment),
        replaced: replaced.unwrap_or_default(),
        resumed,
    }))
}

/// Whether the API's answer is its last word (see [`crate::http::verdict`]).
fn renew_status_is_final(e: &RenewError) -> bool {
    matches!(e, RenewError::Api { source: ApiError::Refused { status, code, .. }, .. }
        if crate::http::verdict(*status, code) == crate::http::Verdict::Final)
}

/// For messages: when a certificate is due.
pub fn describe_due(not_after: SystemTime, due_at: SystemTime) -> String {
    format!(
        "the certificate is valid until {}; renewal is due from {}",
        rfc3339(not_after),
        rfc3339(due_at)
    )
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn signed_messages_are_the_apis() {
        assert_eq!(
            renewal_message("ZK-1", &[0x30, 0x01]),
            b"cvm-renewal-v1\0ZK-1\0\x30\x01".to_vec()
        );
        assert_eq!(
            confirmation_message("ZK-1", "abc"),
            b"cvm-renewal-confirmation-v1\0ZK-1\0abc".to_vec()
        );
    }

    #[test]
    fn the_window_ends_at_expiry() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(due_at(at(100 * 86_400), DEFAULT_WINDOW), at(70 * 86_400));
        assert_eq!(due_at(at(100 * 86_400), Duration::ZERO), at(100 * 86_400));
    }

    #[test]
    fn not_after_is_read_from_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| unreachable!("{e}"));
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let pem = params
            .self_signed(&key)
            .map(|c| c.pem())
            .unwrap_or_default();
        assert_eq!(
            not_after(&pem).map(rfc3339),
            Ok("2031-05-06T00:00:00Z".to_owned())
        );
        assert!(not_after("not a certificate").is_err());
        assert!(not_after("").is_err());
    }
}

//! The fleet-provisioning door: AWS IoT's pre-provisioning hook.
//!
//! A device holding the shared claim certificate asked AWS IoT for a certificate over MQTT
//! (`CreateCertificateFromCsr`, signed by the certificate provider) and now asks to be
//! registered (`RegisterThing`) with its serial and, unless its key was registered at
//! enrollment, its one-time token. AWS IoT calls this hook and provisions only if it answers
//! `allowProvisioning: true`, with the thing name, policy and attributes the hook sets in
//! `parameterOverrides`, whatever the device sent.
//!
//! The hook uses the vend API's enrollment record with the same semantics: the token compared
//! in constant time (as a hash), an unknown serial answered like a wrong token, wrong tokens
//! counted toward the same lockout, the certificate's key recorded, and the record moved to
//! `Issued` by one conditional write, so a token works once across both doors. The same
//! certificate asking again is allowed again (the device lost the `RegisterThing` answer); a
//! certificate for another key is denied; a new certificate for the *same* key (a device that
//! started over) is allowed, and the certificate it replaces is deactivated first, so the
//! device is neither stranded nor left with two active certificates.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::csr::{certificate_common_name, certificate_id, certified_key};
use crate::domain::{Serial, Token};
use crate::lockout::LockoutPolicy;
use crate::ports::{Admission, Admitted, CertificateIssuer, DeviceStore, PortError, Written};
use crate::record::{
    CertificateRef, Change, DeviceRecord, DeviceStatus, Door, Guard, IssuedCertificate,
};
use crate::vend::{rfc3339, Clock};
use crate::PolicyName;

/// The template parameters the hook reads; every other parameter the device sent is
/// overridden.
pub const SERIAL_PARAMETER: &str = "SerialNumber";
pub const TOKEN_PARAMETER: &str = "EnrollmentToken";
pub const THING_NAME_PARAMETER: &str = "ThingName";
pub const POLICY_NAME_PARAMETER: &str = "PolicyName";
/// A thing attribute `name` is passed as the template parameter `Attribute_<name>`.
pub const ATTRIBUTE_PARAMETER_PREFIX: &str = "Attribute_";

/// What AWS IoT sends the hook.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    pub claim_certificate_id: String,
    pub certificate_id: String,
    pub certificate_pem: String,
    pub template_arn: String,
    pub client_id: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// What AWS IoT expects back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookResponse {
    pub allow_provisioning: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub parameter_overrides: BTreeMap<String, String>,
}

impl HookResponse {
    pub fn deny() -> Self {
        Self {
            allow_provisioning: false,
            parameter_overrides: BTreeMap::new(),
        }
    }
}

/// Why a device was denied, for the logs and metrics (AWS IoT tells the device only that it
/// was denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A parameter or the certificate is not of the expected shape.
    InvalidRequest,
    /// Unknown serial, wrong token, or no token and not the registered key (one answer).
    InvalidCredentials,
    Locked,
    KeyNotRegistered,
    SubjectNotAllowed,
    Revoked,
    /// The device has a certificate for another key.
    AlreadyIssued,
    /// A vend for this serial is in progress.
    InProgress,
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Denial::InvalidRequest => "invalid_request",
            Denial::InvalidCredentials => "invalid_credentials",
            Denial::Locked => "enrollment_locked",
            Denial::KeyNotRegistered => "csr_key_not_registered",
            Denial::SubjectNotAllowed => "csr_subject_not_allowed",
            Denial::Revoked => "device_revoked",
            Denial::AlreadyIssued => "already_issued",
            Denial::InProgress => "enrollment_in_progress",
        }
    }
}

/// The hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// First provisioning of this serial.
    Allowed(HookResponse),
    /// The certificate on record asked again.
    AllowedAgain(HookResponse),
    /// A new certificate for the key on record; the old one was deactivated.
    Replaced(HookResponse),
    Denied(Denial),
}

impl Decision {
    pub fn response(&self) -> HookResponse {
        match self {
            Decision::Allowed(r) | Decision::AllowedAgain(r) | Decision::Replaced(r) => r.clone(),
            Decision::Denied(_) => HookResponse::deny(),
        }
    }

    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allowed(_) => "allowed",
            Decision::AllowedAgain(_) => "allowed-again",
            Decision::Replaced(_) => "replaced",
            Decision::Denied(d) => d.code(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HookConfig {
    pub default_policy: PolicyName,
    pub lockout: LockoutPolicy,
}

/// The pre-provisioning hook over the device table and AWS IoT's certificates.
pub struct ProvisioningHook<S, I> {
    store: S,
    certificates: I,
    config: HookConfig,
    clock: Clock,
}

impl<S: DeviceStore, I: CertificateIssuer> ProvisioningHook<S, I> {
    pub fn new(store: S, certificates: I, config: HookConfig) -> Self {
        Self::with_clock(
            store,
            certificates,
            config,
            Arc::new(OffsetDateTime::now_utc),
        )
    }

    pub fn with_clock(store: S, certificates: I, config: HookConfig, clock: Clock) -> Self {
        Self {
            store,
            certificates,
            config,
            clock,
        }
    }

    /// Decides one `RegisterThing`. Errors are dependency failures (AWS IoT denies the device,
    /// which retries); every refusal of the device is a [`Decision::Denied`].
    #[tracing::instrument(name = "provisioning_hook", skip_all, fields(certificate_id = %request.certificate_id, client_id = %request.client_id))]
    pub async fn decide(&self, request: &HookRequest) -> Result<Decision, PortError> {
        let parsed = match ParsedRequest::parse(request) {
            Ok(p) => p,
            Err(why) => {
                info!(reason = why, "denied");
                return Ok(Decision::Denied(Denial::InvalidRequest));
            }
        };
        let serial = &parsed.serial;
        let now = (self.clock)().unix_timestamp();
        let admission = Admission {
            token_hash: parsed.token.as_ref().map(Token::hash),
            fingerprint: parsed.fingerprint.clone(),
            common_name: parsed.common_name.clone(),
            now,
        };
        let issued = IssuedCertificate {
            certificate: parsed.certificate.clone(),
            certificate_pem: request.certificate_pem.trim().to_owned() + "\n",
            fingerprint: parsed.fingerprint.clone(),
            issued_at: rfc3339((self.clock)()),
            door: Door::FleetProvisioning,
        };
        let actor = format!(
            "device (fleet provisioning; client {}; claim certificate {})",
            one_line(&request.client_id),
            one_line(&request.claim_certificate_id)
        );
        let event = AuditEvent::new(
            issued.issued_at.clone(),
            AuditKind::Issued,
            actor.clone(),
            parsed.certificate.id.clone(),
        );
        let change = Change::ProvisionedByClaim(issued.clone(), event);
        let record = match self.store.admit(serial, &admission, &change).await? {
            Admitted::Applied(record) => {
                info!(serial = %serial, "allowed");
                return Ok(Decision::Allowed(self.overrides(&record, request)));
            }
            Admitted::Refused(None) => {
                if let Some(h) = &admission.token_hash {
                    let _ = crate::TokenHash::placeholder().matches_hash(h);
                }
                let failure = crate::Lockout::default().after_failure(&self.config.lockout, now);
                let _ = self
                    .store
                    .apply(
                        serial,
                        &Guard::Lockout(crate::Lockout::default()),
                        &Change::FailedAttempt(failure, None),
                    )
                    .await;
                info!(reason = "unknown serial", "denied");
                return Ok(Decision::Denied(Denial::InvalidCredentials));
            }
            Admitted::Refused(Some(record)) => record,
        };

        if record.lockout.retry_after(now).is_some() {
            return Ok(denied(Denial::Locked));
        }
        if !admission.credentials_match(&record) {
            let right_token = matches!(
                (&admission.token_hash, &record.credentials.token_hash),
                (Some(p), Some(s)) if s.matches_hash(p)
            );
            if right_token {
                return Ok(denied(Denial::KeyNotRegistered));
            }
            crate::lifecycle::count_failure(&self.store, &self.config.lockout, &record, now).await;
            return Ok(denied(Denial::InvalidCredentials));
        }
        if parsed.common_name != record.serial.as_str()
            && parsed.common_name != record.thing_name.as_str()
        {
            return Ok(denied(Denial::SubjectNotAllowed));
        }
        match &record.status {
            DeviceStatus::Revoked { .. } => Ok(denied(Denial::Revoked)),
            DeviceStatus::Claimed(_) | DeviceStatus::Enrolled => Ok(denied(Denial::InProgress)),
            DeviceStatus::Issued { current, .. } => {
                if current.certificate.id == parsed.certificate.id {
                    info!("allowed again: the certificate on record asked again");
                    return Ok(Decision::AllowedAgain(self.overrides(&record, request)));
                }
                if current.fingerprint != parsed.fingerprint {
                    return Ok(denied(Denial::AlreadyIssued));
                }
                self.replace(&record, current, issued, &actor, request)
                    .await
            }
        }
    }

    /// The device started over with the same key and got a new certificate: the old one is
    /// deactivated first (the table names it until then), then the record names the new one.
    async fn replace(
        &self,
        record: &DeviceRecord,
        current: &IssuedCertificate,
        issued: IssuedCertificate,
        actor: &str,
        request: &HookRequest,
    ) -> Result<Decision, PortError> {
        self.certificates.deactivate(&current.certificate).await?;
        let event = AuditEvent::new(
            issued.issued_at.clone(),
            AuditKind::Replaced,
            actor,
            format!(
                "certificate {} replaces {} (deactivated)",
                issued.certificate.id, current.certificate.id
            ),
        );
        let new_id = issued.certificate.id.clone();
        let change = Change::ProvisionedByClaim(issued, event);
        match self
            .store
            .apply(&record.serial, &Guard::Version(record.version), &change)
            .await?
        {
            Written::Done => {
                info!(replaced = %current.certificate.id, "allowed: replaces the certificate for the same key");
                Ok(Decision::Replaced(self.overrides(record, request)))
            }
            Written::ConditionFailed => {
                warn!(certificate_id = %new_id, "record changed meanwhile");
                Ok(denied(Denial::InProgress))
            }
        }
    }

    /// Thing name, policy and attributes from the record; every other parameter the device
    /// sent is blanked, so nothing in the template takes a value from the device.
    fn overrides(&self, record: &DeviceRecord, request: &HookRequest) -> HookResponse {
        let mut overrides = BTreeMap::new();
        for name in request.parameters.keys() {
            if name != SERIAL_PARAMETER && name != TOKEN_PARAMETER {
                overrides.insert(name.clone(), String::new());
            }
        }
        overrides.insert(
            THING_NAME_PARAMETER.to_owned(),
            record.thing_name.as_str().to_owned(),
        );
        let policy = record
            .policy_name
            .clone()
            .unwrap_or_else(|| self.config.default_policy.clone());
        overrides.insert(POLICY_NAME_PARAMETER.to_owned(), policy.as_str().to_owned());
        for (name, value) in record.attributes.iter() {
            overrides.insert(
                format!("{ATTRIBUTE_PARAMETER_PREFIX}{name}"),
                value.to_owned(),
            );
        }
        HookResponse {
            allow_provisioning: true,
            parameter_overrides: overrides,
        }
    }
}

fn denied(denial: Denial) -> Decision {
    info!(reason = denial.code(), "denied");
    Decision::Denied(denial)
}

/// What the hook needs from a request, each part checked.
struct ParsedRequest {
    serial: Serial,
    token: Option<Token>,
    certificate: CertificateRef,
    fingerprint: crate::KeyFingerprint,
    common_name: String,
}

impl ParsedRequest {
    fn parse(request: &HookRequest) -> Result<Self, &'static str> {
        let serial = request
            .parameters
            .get(SERIAL_PARAMETER)
            .ok_or("no SerialNumber parameter")
            .and_then(|s| Serial::parse(s).map_err(|_| "SerialNumber is not a serial"))?;
        let token = match request.parameters.get(TOKEN_PARAMETER).map(|t| t.trim()) {
            None | Some("") => None,
            Some(t) => Some(Token::parse(t).map_err(|_| "EnrollmentToken is not a token")?),
        };
        let id = certificate_id(&request.certificate_pem)
            .map_err(|_| "certificatePem is not a certificate")?;
        if id != request.certificate_id.to_ascii_lowercase() {
            return Err("certificateId is not the id of certificatePem");
        }
        let key = certified_key(&request.certificate_pem)
            .map_err(|_| "the certificate's key is not of an accepted kind")?;
        let common_name = certificate_common_name(&request.certificate_pem)
            .map_err(|_| "the certificate's subject has no single common name")?;
        let arn = certificate_arn(&request.template_arn, &id)
            .ok_or("templateArn is not an AWS IoT provisioning template ARN")?;
        Ok(Self {
            serial,
            token,
            certificate: CertificateRef { id, arn },
            fingerprint: key.fingerprint,
            common_name,
        })
    }
}

/// The certificate's ARN in the template's partition, region and account
/// (`arn:aws:iot:us-east-1:123456789012:provisioningtemplate/T` →
/// `arn:aws:iot:us-east-1:123456789012:cert/<id>`).
fn certificate_arn(template_arn: &str, certificate_id: &str) -> Option<String> {
    let parts: Vec<&str> = template_arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iot", region, account, resource]
            if resource.starts_with("provisioningtemplate/")
                && !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit()) =>
        {
            Some(format!(
                "arn:{partition}:iot:{region}:{account}:cert/{certificate_id}"
            ))
        }
        _ => None,
    }
}

/// Values from the request go into the audit trail; keep them on one short line.
fn one_line(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_arns_follow_the_template() {
        assert_eq!(
            certificate_arn(
                "arn:aws:iot:eu-west-1:123456789012:provisioningtemplate/cvm-fleet",
                "ab"
            )
            .as_deref(),
            Some("arn:aws:iot:eu-west-1:123456789012:cert/ab")
        );
        assert_eq!(
            certificate_arn(
                "arn:aws-cn:iot:cn-north-1:123456789012:provisioningtemplate/x",
                "ab"
            )
            .as_deref(),
            Some("arn:aws-cn:iot:cn-north-1:123456789012:cert/ab")
        );
        for bad in [
            "",
            "arn:aws:iot:eu-west-1:123456789012:thing/x",
            "arn:aws:s3:eu-west-1:123456789012:provisioningtemplate/x",
            "arn:aws:iot:eu-west-1:12345:provisioningtemplate/x",
            "arn:aws:iot::123456789012:provisioningtemplate/x",
        ] {
            assert_eq!(certificate_arn(bad, "ab"), None, "{bad}");
        }
    }

    #[test]
    fn one_line_strips_controls_and_bounds_length() {
        assert_eq!(one_line("a\nb\r\u{1b}c"), "abc");
        assert_eq!(one_line(&"x".repeat(500)).len(), 128);
    }
}

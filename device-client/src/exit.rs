//! How a run ends, as the exit status a supervisor acts on. Every command's error becomes a
//! [`Failure`], and [`Failure::exit_status`] is the one place that decides the status:
//!
//! | status | meaning | `cvm-enroll.service` |
//! | --- | --- | --- |
//! | 0 | done (or already enrolled) | stays done |
//! | 1 | transient or unexpected: network error, 5xx, 429 (`enrollment_locked` too), 408, `409 enrollment_in_progress`, clock not set yet, security module not answering, files not writable; MQTT: no connection, timeout, connection lost, a broker that is busy, a `rejected` answer with status 429 or 5xx | restarted after `RestartSec` |
//! | 2 | usage or configuration: a bad flag, an unreadable or invalid config file, no serial, token or key store, a missing or wrong PIN, no key where the spec points, a claim key others can read, not enrolled yet | not restarted: fix the device's configuration |
//! | 3 | refused for good by the server: unknown serial or wrong token, revoked, locked out for good (403), already issued to another key, CSR refused; a `rejected` answer with another 4xx (the pre-provisioning hook's denial is 403); a broker refusing the connection, a subscription or a message (MQTT 5 reason codes other than busy or quota) | not restarted: needs ops |
//!
//! The unit lists 2 and 3 in `RestartPreventExitStatus=`; a test keeps it in step with this
//! table.

use crate::api::ApiError;
use crate::clock::ClockError;
use crate::enroll::EnrollError;
use crate::files::FileError;
use crate::http::{verdict, Verdict};
use crate::iot::IotError;
use crate::keystore::KeyStoreError;
use crate::mqtt::MqttError;
use crate::provision::ProvisionError;
use crate::renew::RenewError;
use crate::tls::TlsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    Success = 0,
    Transient = 1,
    Config = 2,
    Refused = 3,
}

impl ExitStatus {
    pub const ALL: [Self; 4] = [Self::Success, Self::Transient, Self::Config, Self::Refused];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Whether running the command again later can succeed without anyone changing anything.
    pub const fn worth_retrying(self) -> bool {
        matches!(self, Self::Transient)
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A flag, the config file, or a file it names is missing or wrong.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Iot(#[from] IotError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Renew(#[from] RenewError),
}

impl Failure {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Config(_) => ExitStatus::Config,
            Self::Enroll(e) => enroll_status(e),
            Self::Provision(e) => provision_status(e),
            Self::Renew(e) => renew_status(e),
            Self::Iot(e) => iot_status(e),
            Self::Tls(e) => tls_status(e),
            Self::KeyStore(e) => key_store_status(e),
            Self::Clock(_) => ExitStatus::Transient,
        }
    }
}

fn answer_status(status: u16, code: &str) -> ExitStatus {
    match verdict(status, code) {
        Verdict::Transient => ExitStatus::Transient,
        Verdict::Final => ExitStatus::Refused,
    }
}

fn enroll_status(e: &EnrollError) -> ExitStatus {
    match e {
        EnrollError::KeyStore(e) => key_store_status(e),
        EnrollError::Api { status, code, .. } => answer_status(*status, code),
        EnrollError::Ca { .. } => ExitStatus::Config,
        // The enrollment directory is not ours to write (a group we may not give files to,
        // a directory of other things): that does not change by itself.
        EnrollError::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ) =>
        {
            ExitStatus::Config
        }
        EnrollError::Clock(_)
        | EnrollError::Network { .. }
        | EnrollError::InvalidResponse(_)
        | EnrollError::Csr(_)
        | EnrollError::Io { .. } => ExitStatus::Transient,
    }
}

fn file_status(e: &FileError) -> ExitStatus {
    if e.is_configuration() {
        ExitStatus::Config
    } else {
        ExitStatus::Transient
    }
}

/// A broker's refusal is final unless it says it is busy; everything else that goes wrong on
/// the way (connection, timeout, lost connection) is transient.
fn mqtt_status(e: &MqttError) -> ExitStatus {
    if e.is_transient() {
        ExitStatus::Transient
    } else {
        ExitStatus::Refused
    }
}

fn provision_status(e: &ProvisionError) -> ExitStatus {
    match e {
        ProvisionError::KeyStore(e) => key_store_status(e),
        ProvisionError::Tls(e) => tls_status(e),
        ProvisionError::Mqtt(e) => mqtt_status(e),
        // AWS IoT's `{statusCode, errorCode}` are judged as the API's answers are: a hook's
        // denial (403) is final, throttling (429) and 5xx are not.
        ProvisionError::Rejected {
            status_code,
            error_code,
            ..
        } => answer_status(*status_code, error_code),
        ProvisionError::Files(e) => file_status(e),
        ProvisionError::Config(_) => ExitStatus::Config,
        ProvisionError::Csr(_)
        | ProvisionError::InvalidResponse { .. }
        | ProvisionError::Clock(_)
        | ProvisionError::Interrupted(_) => ExitStatus::Transient,
    }
}

fn api_status(e: &ApiError) -> ExitStatus {
    match e {
        ApiError::Refused { status, code, .. } => answer_status(*status, code),
        ApiError::Ca { .. } => ExitStatus::Config,
        ApiError::Network { .. } | ApiError::Clock(_) => ExitStatus::Transient,
    }
}

fn renew_status(e: &RenewError) -> ExitStatus {
    match e {
        // Nothing to renew yet, or its files unreadable: enroll (again).
        RenewError::NotEnrolled(_) => ExitStatus::Config,
        RenewError::KeyStore(e) => key_store_status(e),
        RenewError::Api { source, .. } => api_status(source),
        RenewError::Tls(e) => tls_status(e),
        RenewError::Mqtt(e) => mqtt_status(e),
        RenewError::Files(e) => file_status(e),
        RenewError::Csr(_)
        | RenewError::InvalidResponse { .. }
        | RenewError::Clock(_)
        | RenewError::Interrupted(_) => ExitStatus::Transient,
    }
}

fn iot_status(e: &IotError) -> ExitStatus {
    match e {
        IotError::Invalid(_) => ExitStatus::Config,
        IotError::Refused { status, .. } => answer_status(*status, ""),
        IotError::Network { .. } | IotError::InvalidResponse { .. } => ExitStatus::Transient,
    }
}

fn tls_status(e: &TlsError) -> ExitStatus {
    match e {
        TlsError::KeyStore(e) => key_store_status(e),
        // The certificate or CA file is missing or not for this key: enroll (again).
        TlsError::File { .. } | TlsError::KeyMismatch { .. } => ExitStatus::Config,
        TlsError::Setup(_) => ExitStatus::Transient,
    }
}

fn key_store_status(e: &KeyStoreError) -> ExitStatus {
    match e {
        // A module that does not answer yet (zkifc still starting, a token not yet plugged)
        // may answer later.
        KeyStoreError::Zymkey(_) | KeyStoreError::Pkcs11(_) | KeyStoreError::Signing(_) => {
            ExitStatus::Transient
        }
        // Retrying a wrong PIN counts more failures against it, until the token locks.
        KeyStoreError::Pin(_)
        | KeyStoreError::NoKey(_)
        | KeyStoreError::File { .. }
        | KeyStoreError::Spec { .. } => ExitStatus::Config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn api(status: u16, code: &str) -> Failure {
        Failure::Enroll(EnrollError::Api {
            status,
            code: code.into(),
            message: String::new(),
        })
    }

    fn rejected(status_code: u16, error_code: &str) -> Failure {
        Failure::Provision(ProvisionError::Rejected {
            api: "RegisterThing",
            status_code,
            error_code: error_code.into(),
            message: String::new(),
        })
    }

    fn renewal(status: u16, code: &str) -> Failure {
        Failure::Renew(RenewError::Api {
            what: "renewal",
            source: ApiError::Refused {
                status,
                code: code.into(),
                message: String::new(),
            },
        })
    }

    #[test]
    fn each_failure_has_its_status() {
        let cases = [
            (api(403, "invalid_credentials"), ExitStatus::Refused),
            (api(403, "enrollment_locked"), ExitStatus::Refused),
            (api(403, "device_revoked"), ExitStatus::Refused),
            (api(409, "already_issued"), ExitStatus::Refused),
            (api(400, "csr_malformed"), ExitStatus::Refused),
            (api(429, "enrollment_locked"), ExitStatus::Transient),
            (api(429, "throttled"), ExitStatus::Transient),
            (api(409, "enrollment_in_progress"), ExitStatus::Transient),
            (api(503, "service_unavailable"), ExitStatus::Transient),
            (api(500, "internal_error"), ExitStatus::Transient),
            (
                Failure::Enroll(EnrollError::Network {
                    url: "https://x".into(),
                    message: "connection refused".into(),
                }),
                ExitStatus::Transient,
            ),
            (
                Failure::Clock(ClockError {
                    problem: "1970".into(),
                    waited: Duration::from_secs(300),
                }),
                ExitStatus::Transient,
            ),
            (Failure::Config("no serial".into()), ExitStatus::Config),
            (
                Failure::Enroll(EnrollError::Io {
                    path: "/var/lib/cvm".into(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                }),
                ExitStatus::Config,
            ),
            (
                Failure::Enroll(EnrollError::Io {
                    path: "/var/lib/cvm/ca.pem".into(),
                    source: std::io::Error::other("No space left on device"),
                }),
                ExitStatus::Transient,
            ),
            (
                Failure::KeyStore(KeyStoreError::Pin("wrong PIN".into())),
                ExitStatus::Config,
            ),
            (
                Failure::Enroll(EnrollError::KeyStore(KeyStoreError::Pin("locked".into()))),
                ExitStatus::Config,
            ),
            (
                Failure::KeyStore(KeyStoreError::NoKey("no key".into())),
                ExitStatus::Config,
            ),
            (
                Failure::KeyStore(KeyStoreError::Zymkey("zkOpen failed".into())),
                ExitStatus::Transient,
            ),
            (
                Failure::Iot(IotError::Refused {
                    what: "the AWS IoT credentials provider",
                    status: 403,
                    message: "Access Denied".into(),
                }),
                ExitStatus::Refused,
            ),
            (
                Failure::Iot(IotError::Refused {
                    what: "AWS IoT",
                    status: 503,
                    message: String::new(),
                }),
                ExitStatus::Transient,
            ),
            (
                Failure::Iot(IotError::Invalid("bad topic".into())),
                ExitStatus::Config,
            ),
            (rejected(403, "AccessDenied"), ExitStatus::Refused),
            (
                rejected(400, "InvalidCertificateOwnershipToken"),
                ExitStatus::Refused,
            ),
            (rejected(404, "ResourceNotFound"), ExitStatus::Refused),
            (rejected(429, "Throttling"), ExitStatus::Transient),
            (rejected(500, "InternalFailure"), ExitStatus::Transient),
            (rejected(503, "ServiceUnavailable"), ExitStatus::Transient),
            (
                Failure::Provision(ProvisionError::Mqtt(MqttError::Refused {
                    endpoint: "e".into(),
                    what: "the connection".into(),
                    reason: "CONNACK NotAuthorized".into(),
                    transient: false,
                })),
                ExitStatus::Refused,
            ),
            (
                Failure::Provision(ProvisionError::Mqtt(MqttError::Refused {
                    endpoint: "e".into(),
                    what: "the connection".into(),
                    reason: "CONNACK ServerBusy".into(),
                    transient: true,
                })),
                ExitStatus::Transient,
            ),
            (
                Failure::Provision(ProvisionError::Mqtt(MqttError::Timeout {
                    endpoint: "e".into(),
                    what: "answer".into(),
                    waited: Duration::from_secs(30),
                })),
                ExitStatus::Transient,
            ),
            (
                Failure::Provision(ProvisionError::Tls(TlsError::File {
                    path: "/etc/cvm/claim.key".into(),
                    message: "mode 644 lets others read the private key".into(),
                })),
                ExitStatus::Config,
            ),
            (
                Failure::Provision(ProvisionError::Files(FileError {
                    path: "/var/lib/cvm".into(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                })),
                ExitStatus::Config,
            ),
            (renewal(403, "invalid_signature"), ExitStatus::Refused),
            (renewal(403, "renewal_expired"), ExitStatus::Refused),
            (renewal(403, "device_revoked"), ExitStatus::Refused),
            (renewal(409, "nothing_to_renew"), ExitStatus::Refused),
            (
                renewal(409, "enrollment_in_progress"),
                ExitStatus::Transient,
            ),
            (renewal(429, "service_busy"), ExitStatus::Transient),
            (renewal(503, "service_unavailable"), ExitStatus::Transient),
            (
                Failure::Renew(RenewError::NotEnrolled("no enrollment.json".into())),
                ExitStatus::Config,
            ),
            (
                Failure::Renew(RenewError::Mqtt(MqttError::Lost {
                    endpoint: "e".into(),
                    message: "reset".into(),
                })),
                ExitStatus::Transient,
            ),
        ];
        for (failure, status) in cases {
            assert_eq!(failure.exit_status(), status, "{failure}");
        }
    }

    #[test]
    fn the_statuses_are_distinct_and_only_transient_is_retried() {
        let codes: Vec<u8> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3]);
        let retried: Vec<ExitStatus> = ExitStatus::ALL
            .into_iter()
            .filter(|s| s.worth_retrying())
            .collect();
        assert_eq!(retried, [ExitStatus::Transient]);
    }

    /// The values of `name=` in a unit file, split on whitespace.
    fn unit_settings(unit: &str, name: &str) -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// A unit restarts exactly on the statuses worth retrying.
    fn assert_restarts_only_when_worth_it(unit: &str) {
        assert_eq!(unit_settings(unit, "Restart"), ["on-failure"]);
        let prevented: Vec<String> = unit_settings(unit, "RestartPreventExitStatus");
        for status in ExitStatus::ALL {
            let listed = prevented.contains(&status.code().to_string());
            let should = status != ExitStatus::Success && !status.worth_retrying();
            assert_eq!(
                listed, should,
                "{status:?} in RestartPreventExitStatus={prevented:?}"
            );
        }
    }

    /// The shipped unit restarts exactly on the statuses worth retrying.
    #[test]
    fn the_systemd_unit_does_not_restart_on_final_statuses() {
        let unit = include_str!("../packaging/cvm-enroll.service");
        let settings = |name: &str| unit_settings(unit, name);
        assert_restarts_only_when_worth_it(unit);
        // Wait for the time to be synchronized before starting (a board without an RTC).
        assert!(
            settings("After").iter().any(|u| u == "time-sync.target"),
            "{unit}"
        );
        assert!(
            settings("Wants")
                .iter()
                .any(|u| u == "systemd-time-wait-sync.service"),
            "{unit}"
        );
    }

    /// The renewal runs daily with jitter, catches up on missed days, only on an enrolled
    /// device, only when due, and gives up on final statuses as the enrollment unit does.
    #[test]
    fn the_renewal_timer_runs_daily_with_jitter_and_the_service_only_when_due() {
        let timer = include_str!("../packaging/cvm-renew.timer");
        assert_eq!(unit_settings(timer, "OnCalendar"), ["daily"]);
        assert_eq!(unit_settings(timer, "Persistent"), ["true"]);
        let jitter = unit_settings(timer, "RandomizedDelaySec");
        assert!(
            matches!(jitter.as_slice(), [j] if j != "0"),
            "RandomizedDelaySec={jitter:?}"
        );
        assert_eq!(unit_settings(timer, "WantedBy"), ["timers.target"]);

        let service = include_str!("../packaging/cvm-renew.service");
        assert_eq!(unit_settings(service, "Type"), ["oneshot"]);
        let exec = unit_settings(service, "ExecStart").join(" ");
        assert!(exec.ends_with("renew --if-due"), "{exec}");
        assert_eq!(
            unit_settings(service, "ConditionPathExists"),
            ["/var/lib/cvm/enrollment.json"]
        );
        assert!(unit_settings(service, "After")
            .iter()
            .any(|u| u == "time-sync.target"));
        assert_restarts_only_when_worth_it(service);
    }
}

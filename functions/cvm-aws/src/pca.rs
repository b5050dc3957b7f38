//! AWS Private CA: the [`PrivateCa`] port for the certificate provider, and [`PcaIssuer`], the
//! vend API's issuer when devices get certificates from a Private CA instead of Amazon's.

use std::time::{Duration, Instant};

use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{
    RevocationReason, SigningAlgorithm as SdkSigningAlgorithm, Validity, ValidityPeriodType,
};
use aws_sdk_iot::types::CertificateStatus;
use cvm_core::csr::certificate_id;
use cvm_core::ports::{CertificateIssuer, FailureKind, NewCertificate, PortError};
use cvm_core::provider::{
    await_certificate, certificate_serial_hex, check_certificate, AwaitError, Backoff, CaKeyType,
    IdempotencyToken, IssueRequest, IssueSettings, PrivateCa, ProviderError, SigningAlgorithm,
    Timer,
};
use cvm_core::record::CertificateRef;
use cvm_core::Csr;

use crate::config::PcaSettings;
use crate::error::{error_code, missing, port_error};
use crate::iot::{deactivate_certificate, discard_certificate, revoke_in_iot, set_status};

/// Tokio's clock, for the real thing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTimer;

impl Timer for TokioTimer {
    fn now(&self) -> Instant {
        Instant::now()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The issuing parameters, asking the CA for its key type unless the signing algorithm is
/// configured (one `DescribeCertificateAuthority` per cold start).
pub async fn issue_settings(
    settings: &PcaSettings,
    ca: &AcmPca,
) -> Result<IssueSettings, PortError> {
    let signing_algorithm = match settings.signing_algorithm {
        Some(a) => a,
        None => SigningAlgorithm::for_key_type(ca.key_type().await?),
    };
    Ok(IssueSettings {
        signing_algorithm,
        validity_days: settings.validity_days,
        template_arn: Some(settings.template_arn.clone()),
    })
}

/// One Private CA through the SDK.
#[derive(Clone)]
pub struct AcmPca {
    client: aws_sdk_acmpca::Client,
    ca_arn: String,
}

impl AcmPca {
    pub fn new(client: aws_sdk_acmpca::Client, ca_arn: impl Into<String>) -> Self {
        Self {
            client,
            ca_arn: ca_arn.into(),
        }
    }

    /// A client whose every attempt is bounded by `attempt_timeout`, so one stuck connection
    /// cannot eat a caller's deadline (the SDK retries a timed-out attempt).
    pub fn from_sdk(
        sdk: &aws_config::SdkConfig,
        ca_arn: impl Into<String>,
        attempt_timeout: Duration,
    ) -> Self {
        let config = aws_sdk_acmpca::config::Builder::from(sdk)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .build(),
            )
            .build();
        Self::new(aws_sdk_acmpca::Client::from_conf(config), ca_arn)
    }

    pub fn ca_arn(&self) -> &str {
        &self.ca_arn
    }

    /// Init's warm-up call (see [`crate::warm_up`]): `DescribeCertificateAuthority`, the call
    /// start-up makes anyway when the signing algorithm is not configured.
    pub async fn warm_up(&self) -> Result<(), PortError> {
        self.key_type().await.map(drop)
    }

    /// The CA's certificate and the chain above it (`GetCertificateAuthorityCertificate`).
    pub async fn ca_certificate(&self) -> Result<(String, Option<String>), PortError> {
        const OP: &str = "acm-pca:GetCertificateAuthorityCertificate";
        let out = self
            .client
            .get_certificate_authority_certificate()
            .certificate_authority_arn(&self.ca_arn)
            .send()
            .await
            .map_err(|e| port_error(OP, e))?;
        let certificate = out
            .certificate()
            .ok_or_else(|| missing(OP, "Certificate"))?
            .to_owned();
        Ok((certificate, out.certificate_chain().map(str::to_owned)))
    }

    /// Revokes a certificate this CA issued, by serial. Already revoked is success.
    pub async fn revoke(
        &self,
        serial_hex: &str,
        reason: RevocationReason,
    ) -> Result<(), PortError> {
        match self
            .client
            .revoke_certificate()
            .certificate_authority_arn(&self.ca_arn)
            .certificate_serial(serial_hex)
            .revocation_reason(reason)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("RequestAlreadyProcessedException") => Ok(()),
            Err(e) => Err(port_error("acm-pca:RevokeCertificate", e)),
        }
    }
}

impl PrivateCa for AcmPca {
    async fn key_type(&self) -> Result<CaKeyType, PortError> {
        const OP: &str = "acm-pca:DescribeCertificateAuthority";
        let out = self
            .client
            .describe_certificate_authority()
            .certificate_authority_arn(&self.ca_arn)
            .send()
            .await
            .map_err(|e| port_error(OP, e))?;
        let algorithm = out
            .certificate_authority()
            .and_then(|ca| ca.certificate_authority_configuration())
            .map(|c| c.key_algorithm().as_str().to_owned())
            .ok_or_else(|| missing(OP, "CertificateAuthorityConfiguration.KeyAlgorithm"))?;
        CaKeyType::from_key_algorithm(&algorithm).ok_or_else(|| {
            PortError::new(FailureKind::Other, OP)
                .with_code(format!("UnsupportedKeyAlgorithm({algorithm})"))
        })
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<String, PortError> {
        const OP: &str = "acm-pca:IssueCertificate";
        let validity = Validity::builder()
            .r#type(ValidityPeriodType::Days)
            .value(i64::from(request.settings.validity_days))
            .build()
            .map_err(|e| PortError::new(FailureKind::Other, OP).with_source(e))?;
        let out = self
            .client
            .issue_certificate()
            .certificate_authority_arn(&self.ca_arn)
            .csr(Blob::new(request.csr_pem.as_bytes()))
            .signing_algorithm(SdkSigningAlgorithm::from(
                request.settings.signing_algorithm.as_str(),
            ))
            .validity(validity)
            .set_template_arn(request.settings.template_arn.clone())
            .idempotency_token(request.idempotency_token.as_str())
            .send()
            .await
            .map_err(|e| port_error(OP, e))?;
        out.certificate_arn
            .ok_or_else(|| missing(OP, "CertificateArn"))
    }

    async fn get(&self, certificate_arn: &str) -> Result<Option<String>, PortError> {
        const OP: &str = "acm-pca:GetCertificate";
        match self
            .client
            .get_certificate()
            .certificate_authority_arn(&self.ca_arn)
            .certificate_arn(certificate_arn)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.certificate()
                    .ok_or_else(|| missing(OP, "Certificate"))?
                    .to_owned(),
            )),
            // Not an error: the certificate is being issued.
            Err(e) if error_code(&e) == Some("RequestInProgressException") => Ok(None),
            Err(e) => Err(port_error(OP, e)),
        }
    }
}

/// How a Private CA's certificates are registered with AWS IoT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// `RegisterCertificateWithoutCA`: the CA need not be registered (multi-account mode;
    /// devices connect with SNI, as every current SDK does).
    WithoutCa,
    /// `RegisterCertificate` with the CA's certificate: the CA is registered with AWS IoT
    /// (`cvm-admin register-ca --pca-arn`).
    WithCa { ca_certificate_pem: String },
}

/// The vend API's issuer in `acm-pca` mode: Private CA signs, AWS IoT registers the
/// certificate INACTIVE; activation and discard as for Amazon-issued certificates, and a
/// discarded certificate is also revoked at the CA.
#[derive(Clone)]
pub struct PcaIssuer {
    pca: AcmPca,
    iot: aws_sdk_iot::Client,
    settings: IssueSettings,
    registration: Registration,
    /// How long one issue may wait for Private CA.
    issue_timeout: Duration,
    backoff: Backoff,
}

impl PcaIssuer {
    pub fn new(
        pca: AcmPca,
        iot: aws_sdk_iot::Client,
        settings: IssueSettings,
        registration: Registration,
        issue_timeout: Duration,
    ) -> Self {
        Self {
            pca,
            iot,
            settings,
            registration,
            issue_timeout,
            backoff: Backoff::default(),
        }
    }

    pub fn settings(&self) -> &IssueSettings {
        &self.settings
    }

    /// Revokes a certificate that will never be delivered; a failure is logged, not raised,
    /// because the certificate is in no AWS IoT registry and so cannot connect.
    async fn revoke_undelivered(&self, certificate_pem: &str) {
        let serial = match certificate_serial_hex(certificate_pem) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the serial of an undelivered certificate");
                return;
            }
        };
        match self
            .pca
            .revoke(&serial, RevocationReason::CessationOfOperation)
            .await
        {
            Ok(()) => tracing::info!(serial = %serial, "undelivered certificate revoked at the CA"),
            Err(e) => {
                tracing::error!(serial = %serial, error = %e, "could not revoke an undelivered certificate")
            }
        }
    }

    /// Registers the certificate INACTIVE. A certificate Private CA has just issued can only
    /// be "already registered" by this very call: an earlier attempt whose answer was lost
    /// (the SDK retried it). That registration is ours, and is taken as the answer.
    async fn register(&self, certificate_pem: &str) -> Result<CertificateRef, PortError> {
        use aws_sdk_iot::operation::register_certificate::RegisterCertificateError as WithCaError;
        use aws_sdk_iot::operation::register_certificate_without_ca::RegisterCertificateWithoutCAError as WithoutCaError;
        let (op, result) = match &self.registration {
            Registration::WithoutCa => {
                const OP: &str = "iot:RegisterCertificateWithoutCA";
                let result = self
                    .iot
                    .register_certificate_without_ca()
                    .certificate_pem(certificate_pem)
                    .status(CertificateStatus::Inactive)
                    .send()
                    .await;
                let result = match result {
                    Ok(out) => Ok((out.certificate_id, out.certificate_arn)),
                    Err(e) => match e.as_service_error() {
                        Some(WithoutCaError::ResourceAlreadyExistsException(x)) => {
                            Err(Ok(x.resource_arn().map(str::to_owned)))
                        }
                        _ => Err(Err(port_error(OP, e))),
                    },
                };
                (OP, result)
            }
            Registration::WithCa { ca_certificate_pem } => {
                const OP: &str = "iot:RegisterCertificate";
                let result = self
                    .iot
                    .register_certificate()
                    .certificate_pem(certificate_pem)
                    .ca_certificate_pem(ca_certificate_pem)
                    .status(CertificateStatus::Inactive)
                    .send()
                    .await;
                let result = match result {
                    Ok(out) => Ok((out.certificate_id, out.certificate_arn)),
                    Err(e) => match e.as_service_error() {
                        Some(WithCaError::ResourceAlreadyExistsException(x)) => {
                            Err(Ok(x.resource_arn().map(str::to_owned)))
                        }
                        _ => Err(Err(port_error(OP, e))),
                    },
                };
                (OP, result)
            }
        };
        match result {
            Ok((id, arn)) => Ok(CertificateRef {
                id: id.ok_or_else(|| missing(op, "certificateId"))?,
                arn: arn.ok_or_else(|| missing(op, "certificateArn"))?,
            }),
            Err(Ok(existing_arn)) => {
                let id = certificate_id(certificate_pem).map_err(|e| {
                    PortError::new(FailureKind::Other, op)
                        .with_code("UnreadableCertificate")
                        .with_source(e)
                })?;
                let arn = match existing_arn {
                    Some(arn) if arn.ends_with(&format!("cert/{id}")) => arn,
                    _ => self.arn_of(&id).await?,
                };
                tracing::info!(certificate_id = %id, "registered by an earlier attempt whose answer was lost");
                Ok(CertificateRef { id, arn })
            }
            Err(Err(e)) => Err(e),
        }
    }

    async fn arn_of(&self, certificate_id: &str) -> Result<String, PortError> {
        const OP: &str = "iot:DescribeCertificate";
        let out = self
            .iot
            .describe_certificate()
            .certificate_id(certificate_id)
            .send()
            .await
            .map_err(|e| port_error(OP, e))?;
        out.certificate_description()
            .and_then(|d| d.certificate_arn())
            .map(str::to_owned)
            .ok_or_else(|| missing(OP, "certificateArn"))
    }
}

/// A provider-side failure as the vend workflow sees it.
fn issue_error(e: ProviderError) -> PortError {
    match e {
        ProviderError::PrivateCa(port) => port,
        ProviderError::TimedOut(waited) => {
            PortError::new(FailureKind::Unavailable, "acm-pca:GetCertificate")
                .with_code("RequestInProgressException")
                .with_source(waited)
        }
        other => PortError::new(FailureKind::Other, "acm-pca:IssueCertificate")
            .with_code(other.error_type())
            .with_source(other),
    }
}

impl CertificateIssuer for PcaIssuer {
    async fn issue(&self, csr: &Csr) -> Result<NewCertificate, PortError> {
        // A fresh token per vend: the workflow's claim already makes the vend happen once,
        // and a token derived from the CSR would hand an undone, revoked certificate back
        // to the device's retry within Private CA's five-minute idempotency window.
        let token = IdempotencyToken::random()?;
        let deadline = Instant::now() + self.issue_timeout;
        let request = IssueRequest {
            csr_pem: csr.pem(),
            settings: &self.settings,
            idempotency_token: &token,
        };
        let pca_arn = self.pca.issue(&request).await?;
        let pem = match await_certificate(&self.pca, &TokioTimer, &pca_arn, deadline, self.backoff)
            .await
        {
            Ok(pem) => pem,
            Err(e) => {
                if let AwaitError::TimedOut { .. } = &e {
                    // If Private CA finishes later, the certificate is never registered with
                    // AWS IoT and so can never connect; the ARN is in the log for revocation.
                    tracing::warn!(certificate_arn = %pca_arn, error = %e, "Private CA did not issue in time");
                }
                return Err(issue_error(e.into()));
            }
        };
        if let Err(e) = check_certificate(csr, &pem) {
            // Never delivered: revoke what the CA made.
            tracing::error!(certificate_arn = %pca_arn, error = %e, "Private CA returned a certificate that does not match the CSR");
            self.revoke_undelivered(&pem).await;
            return Err(issue_error(e));
        }
        tracing::info!(certificate_arn = %pca_arn, "issued by Private CA");
        match self.register(&pem).await {
            Ok(certificate) => Ok(NewCertificate {
                certificate,
                certificate_pem: pem,
            }),
            Err(e) => {
                // A certificate that cannot be registered is never delivered: revoke it.
                tracing::warn!(error = %e, "registration with AWS IoT failed");
                self.revoke_undelivered(&pem).await;
                Err(e)
            }
        }
    }

    async fn activate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        set_status(&self.iot, certificate, CertificateStatus::Active).await
    }

    async fn deactivate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        deactivate_certificate(&self.iot, certificate).await
    }

    /// Revoke at the CA, then deactivate and delete in AWS IoT. Revocation comes first so a
    /// certificate deleted from AWS IoT has always been revoked; a certificate already gone
    /// from AWS IoT was revoked by the discard that deleted it.
    async fn discard(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        if !self.revoke_at_ca(certificate).await? {
            return Ok(());
        }
        discard_certificate(&self.iot, certificate).await
    }

    /// Revoked at the CA (its CRL, for relying parties beyond AWS IoT) and REVOKED in AWS IoT.
    async fn revoke(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        if !self.revoke_at_ca(certificate).await? {
            return Ok(());
        }
        revoke_in_iot(&self.iot, certificate).await
    }
}

impl PcaIssuer {
    /// Revokes a certificate AWS IoT knows at this CA (its serial read from AWS IoT's copy).
    /// `false`: AWS IoT no longer has it (it was discarded, revoked at the CA first).
    async fn revoke_at_ca(&self, certificate: &CertificateRef) -> Result<bool, PortError> {
        const OP: &str = "iot:DescribeCertificate";
        let described = match self
            .iot
            .describe_certificate()
            .certificate_id(&certificate.id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(false),
            Err(e) => return Err(port_error(OP, e)),
        };
        let pem = described
            .certificate_description()
            .and_then(|d| d.certificate_pem())
            .ok_or_else(|| missing(OP, "certificatePem"))?;
        let serial = certificate_serial_hex(pem).map_err(|e| {
            PortError::new(FailureKind::Other, OP)
                .with_code("UnreadableCertificate")
                .with_source(e)
        })?;
        self.pca
            .revoke(&serial, RevocationReason::CessationOfOperation)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use aws_sdk_acmpca::error::ErrorMetadata;
    use aws_sdk_acmpca::operation::get_certificate::{GetCertificateError, GetCertificateOutput};
    use aws_sdk_acmpca::operation::issue_certificate::IssueCertificateOutput;
    use aws_sdk_acmpca::operation::revoke_certificate::RevokeCertificateOutput;
    use aws_sdk_acmpca::types::error::RequestInProgressException;
    use aws_sdk_iot::operation::delete_certificate::DeleteCertificateOutput;
    use aws_sdk_iot::operation::describe_certificate::{
        DescribeCertificateError, DescribeCertificateOutput,
    };
    use aws_sdk_iot::operation::register_certificate_without_ca::{
        RegisterCertificateWithoutCAError, RegisterCertificateWithoutCaOutput,
    };
    use aws_sdk_iot::operation::update_certificate::UpdateCertificateOutput;
    use aws_sdk_iot::types::error::{InvalidRequestException, ResourceNotFoundException};
    use aws_sdk_iot::types::CertificateDescription;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};

    use super::*;

    const CA_ARN: &str =
        "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555";
    const CERT_ARN: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555/certificate/abc";

    struct Pki {
        csr: Csr,
        /// Issued for the CSR.
        certificate: String,
        /// Issued for another key, same subject.
        other_key: String,
        /// Issued for the CSR, but also for TLS servers (a wrong template).
        server_auth: String,
        /// Issued for the CSR as a CA (a wrong template).
        ca_certificate: String,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let device = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DEVICE-1");
        let csr_pem = params.serialize_request(&device).unwrap().pem().unwrap();
        let csr = Csr::parse_pem(&csr_pem).unwrap();
        // As Private CA's client-authentication template issues them.
        let issue = |usages: Vec<rcgen::ExtendedKeyUsagePurpose>, ca_flag: bool| {
            let mut request = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
            request.params.extended_key_usages = usages;
            if ca_flag {
                request.params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            request.signed_by(&ca).unwrap().pem()
        };
        let certificate = issue(vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth], false);
        let server_auth = issue(
            vec![
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            ],
            false,
        );
        let ca_certificate = issue(vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth], true);
        let other = rcgen::KeyPair::generate().unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let other_key = params.signed_by(&other, &ca).unwrap().pem();
        Pki {
            csr,
            certificate,
            other_key,
            server_auth,
            ca_certificate,
        }
    }

    fn acmpca_rules(certificate: &str, revoke: &Rule) -> (Vec<Rule>, Rule) {
        let pem = certificate.to_owned();
        let issue = mock!(aws_sdk_acmpca::Client::issue_certificate)
            .match_requests(|r| {
                r.certificate_authority_arn() == Some(CA_ARN)
                    && r.idempotency_token().is_some_and(|t| t.len() <= 36)
                    && r.signing_algorithm().map(|a| a.as_str()) == Some("SHA256WITHECDSA")
            })
            .then_output(|| {
                IssueCertificateOutput::builder()
                    .certificate_arn(CERT_ARN)
                    .build()
            });
        // Private CA is still issuing on the first poll.
        let get = mock!(aws_sdk_acmpca::Client::get_certificate)
            .sequence()
            .error(|| {
                GetCertificateError::RequestInProgressException(
                    RequestInProgressException::builder()
                        .message("The request is in progress")
                        .meta(
                            ErrorMetadata::builder()
                                .code("RequestInProgressException")
                                .build(),
                        )
                        .build(),
                )
            })
            .output(move || {
                GetCertificateOutput::builder()
                    .certificate(pem.clone())
                    .build()
            })
            .build();
        (vec![issue, get.clone(), revoke.clone()], get)
    }

    fn revoke_rule() -> Rule {
        mock!(aws_sdk_acmpca::Client::revoke_certificate)
            .match_requests(|r| {
                r.certificate_authority_arn() == Some(CA_ARN)
                    && r.certificate_serial().is_some_and(|s| s.contains(':'))
            })
            .then_output(|| RevokeCertificateOutput::builder().build())
    }

    fn issuer(acmpca: Vec<Rule>, iot: Vec<Rule>) -> PcaIssuer {
        let pca = mock_client!(aws_sdk_acmpca, RuleMode::MatchAny, &acmpca);
        let iot = mock_client!(aws_sdk_iot, RuleMode::MatchAny, &iot);
        PcaIssuer::new(
            AcmPca::new(pca, CA_ARN),
            iot,
            IssueSettings {
                signing_algorithm: SigningAlgorithm::Sha256WithEcdsa,
                validity_days: 30,
                template_arn: None,
            },
            Registration::WithoutCa,
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn issues_polls_and_registers_inactive() {
        let pki = pki();
        let revoke = revoke_rule();
        let (acmpca, get) = acmpca_rules(&pki.certificate, &revoke);
        let pem = pki.certificate.clone();
        let register = mock!(aws_sdk_iot::Client::register_certificate_without_ca)
            .match_requests(move |r| {
                r.status() == Some(&CertificateStatus::Inactive)
                    && r.certificate_pem() == Some(pem.as_str())
            })
            .then_output(|| {
                RegisterCertificateWithoutCaOutput::builder()
                    .certificate_id("c0ffee")
                    .certificate_arn("arn:aws:iot:us-east-1:123456789012:cert/c0ffee")
                    .build()
            });
        let issuer = issuer(acmpca, vec![register.clone()]);
        let out = issuer.issue(&pki.csr).await.unwrap();
        assert_eq!(out.certificate.id, "c0ffee");
        assert_eq!(out.certificate_pem, pki.certificate);
        assert_eq!(get.num_calls(), 2, "polled past RequestInProgressException");
        assert_eq!(register.num_calls(), 1);
        assert_eq!(revoke.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_certificate_that_cannot_be_registered_is_revoked() {
        let pki = pki();
        let revoke = revoke_rule();
        let (acmpca, _) = acmpca_rules(&pki.certificate, &revoke);
        let register =
            mock!(aws_sdk_iot::Client::register_certificate_without_ca).then_error(|| {
                RegisterCertificateWithoutCAError::InvalidRequestException(
                    InvalidRequestException::builder()
                        .message("no")
                        .meta(
                            ErrorMetadata::builder()
                                .code("InvalidRequestException")
                                .build(),
                        )
                        .build(),
                )
            });
        let issuer = issuer(acmpca, vec![register]);
        let err = issuer.issue(&pki.csr).await.unwrap_err();
        assert_eq!(err.operation, "iot:RegisterCertificateWithoutCA");
        assert_eq!(err.code.as_deref(), Some("InvalidRequestException"));
        assert_eq!(
            revoke.num_calls(),
            1,
            "the unregistered certificate was not revoked"
        );
    }

    #[tokio::test]
    async fn a_certificate_for_another_key_is_revoked_and_never_registered() {
        let pki = pki();
        let revoke = revoke_rule();
        let (acmpca, _) = acmpca_rules(&pki.other_key, &revoke);
        let register =
            mock!(aws_sdk_iot::Client::register_certificate_without_ca).then_output(|| {
                RegisterCertificateWithoutCaOutput::builder()
                    .certificate_id("x")
                    .certificate_arn("y")
                    .build()
            });
        let issuer = issuer(acmpca, vec![register.clone()]);
        let err = issuer.issue(&pki.csr).await.unwrap_err();
        assert_eq!(err.code.as_deref(), Some("CertificateMismatch"), "{err}");
        assert_eq!(register.num_calls(), 0);
        assert_eq!(revoke.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_registration_whose_answer_was_lost_is_taken_as_ours() {
        let pki = pki();
        let revoke = revoke_rule();
        let (acmpca, _) = acmpca_rules(&pki.certificate, &revoke);
        let id = certificate_id(&pki.certificate).unwrap();
        let arn = format!("arn:aws:iot:us-east-1:123456789012:cert/{id}");
        let existing = arn.clone();
        // The SDK's retry of a registration that committed: AWS IoT says it exists.
        let register =
            mock!(aws_sdk_iot::Client::register_certificate_without_ca).then_error(move || {
                RegisterCertificateWithoutCAError::ResourceAlreadyExistsException(
                    aws_sdk_iot::types::error::ResourceAlreadyExistsException::builder()
                        .message("The certificate is already provisioned or registered")
                        .resource_id("whatever-aws-says")
                        .resource_arn(existing.clone())
                        .meta(
                            ErrorMetadata::builder()
                                .code("ResourceAlreadyExistsException")
                                .build(),
                        )
                        .build(),
                )
            });
        let issuer = issuer(acmpca, vec![register]);
        let out = issuer.issue(&pki.csr).await.unwrap();
        assert_eq!(
            out.certificate.id,
            certificate_id(&pki.certificate).unwrap()
        );
        assert_eq!(out.certificate.arn, arn);
        assert_eq!(
            revoke.num_calls(),
            0,
            "a registered certificate is not revoked"
        );
    }

    #[tokio::test]
    async fn a_certificate_of_the_wrong_shape_is_revoked_and_never_registered() {
        let pki = pki();
        for (wrong, why) in [
            (&pki.server_auth, "TLS server authentication"),
            (&pki.ca_certificate, "CA certificate"),
        ] {
            let revoke = revoke_rule();
            let (acmpca, _) = acmpca_rules(wrong, &revoke);
            let register =
                mock!(aws_sdk_iot::Client::register_certificate_without_ca).then_output(|| {
                    RegisterCertificateWithoutCaOutput::builder()
                        .certificate_id("x")
                        .certificate_arn("y")
                        .build()
                });
            let issuer = issuer(acmpca, vec![register.clone()]);
            let err = issuer.issue(&pki.csr).await.unwrap_err();
            assert_eq!(
                err.code.as_deref(),
                Some("CertificateMismatch"),
                "{why}: {err}"
            );
            assert!(
                format!("{:?}", err.source).contains(why),
                "{why}: {:?}",
                err.source
            );
            assert_eq!(register.num_calls(), 0, "{why}");
            assert_eq!(revoke.num_calls(), 1, "{why}");
        }
    }

    #[tokio::test]
    async fn discard_revokes_before_deleting_and_gone_is_done() {
        let pki = pki();
        let pem = pki.certificate.clone();
        let describe = mock!(aws_sdk_iot::Client::describe_certificate).then_output(move || {
            DescribeCertificateOutput::builder()
                .certificate_description(
                    CertificateDescription::builder()
                        .certificate_pem(pem.clone())
                        .build(),
                )
                .build()
        });
        let deactivate = mock!(aws_sdk_iot::Client::update_certificate)
            .match_requests(|r| r.new_status() == Some(&CertificateStatus::Inactive))
            .then_output(|| UpdateCertificateOutput::builder().build());
        let delete = mock!(aws_sdk_iot::Client::delete_certificate)
            .then_output(|| DeleteCertificateOutput::builder().build());
        let revoke = revoke_rule();
        let pca_issuer = issuer(
            vec![revoke.clone()],
            vec![describe, deactivate.clone(), delete.clone()],
        );
        let certificate = CertificateRef {
            id: "c0ffee".into(),
            arn: "arn:aws:iot:us-east-1:123456789012:cert/c0ffee".into(),
        };
        pca_issuer.discard(&certificate).await.unwrap();
        assert_eq!(
            (
                revoke.num_calls(),
                deactivate.num_calls(),
                delete.num_calls()
            ),
            (1, 1, 1)
        );

        let gone = mock!(aws_sdk_iot::Client::describe_certificate).then_error(|| {
            DescribeCertificateError::ResourceNotFoundException(
                ResourceNotFoundException::builder()
                    .meta(
                        ErrorMetadata::builder()
                            .code("ResourceNotFoundException")
                            .build(),
                    )
                    .build(),
            )
        });
        let revoke = revoke_rule();
        let pca_issuer = issuer(vec![revoke.clone()], vec![gone]);
        pca_issuer.discard(&certificate).await.unwrap();
        assert_eq!(revoke.num_calls(), 0);
    }
}

//! The wiring of the vend service: clients, adapters and the workflow, built once at start-up
//! from [`VendSettings`]. Shared by the Lambda binary and the local HTTPS server so both run
//! exactly the same code.

use std::sync::Arc;
use std::time::Duration;

use cvm_core::ports::{CertificateIssuer, PortError};
use cvm_core::record::CertificateRef;
use cvm_core::{Csr, VendConfig, Vendor};
use cvm_http::{Api, Metrics};

use crate::config::{ConfigError, IssuerMode, VendSettings};
use crate::pca::{issue_settings, AcmPca, PcaIssuer, Registration};
use crate::warm_up::{self, WarmUpCall};
use crate::{describe_endpoints, DynamoStore, IotIssuer, IotRegistry};

/// A vend does not activate with less than this left of its claim lease.
const ACTIVATION_MARGIN: Duration = Duration::from_secs(15);

/// The deployment's issuer, one type for both modes so there is one router type.
#[derive(Clone)]
pub enum AnyIssuer {
    Iot(IotIssuer),
    Pca(PcaIssuer),
}

impl CertificateIssuer for AnyIssuer {
    async fn issue(&self, csr: &Csr) -> Result<cvm_core::ports::NewCertificate, PortError> {
        match self {
            AnyIssuer::Iot(i) => i.issue(csr).await,
            AnyIssuer::Pca(i) => i.issue(csr).await,
        }
    }

    async fn activate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        match self {
            AnyIssuer::Iot(i) => i.activate(certificate).await,
            AnyIssuer::Pca(i) => i.activate(certificate).await,
        }
    }

    async fn deactivate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        match self {
            AnyIssuer::Iot(i) => i.deactivate(certificate).await,
            AnyIssuer::Pca(i) => i.deactivate(certificate).await,
        }
    }

    async fn discard(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        match self {
            AnyIssuer::Iot(i) => i.discard(certificate).await,
            AnyIssuer::Pca(i) => i.discard(certificate).await,
        }
    }

    async fn revoke(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        match self {
            AnyIssuer::Iot(i) => i.revoke(certificate).await,
            AnyIssuer::Pca(i) => i.revoke(certificate).await,
        }
    }
}

pub type VendApi = Api<DynamoStore, AnyIssuer, IotRegistry>;

/// Longest a single Private CA call may take before the SDK retries it.
const PCA_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the issuer: in `acm-pca` mode, asks the CA once for its key type (unless
/// `CVM_SIGNING_ALGORITHM` is set) and, when registering with the CA, for its certificate.
/// With `warm_up`, a CA that start-up would not otherwise ask is asked anyway, to open the
/// connection the first request needs.
pub async fn build_issuer(
    sdk: &aws_config::SdkConfig,
    iot: &aws_sdk_iot::Client,
    mode: IssuerMode,
    warm_up: bool,
) -> Result<AnyIssuer, ConfigError> {
    let settings = match mode {
        IssuerMode::Iot => return Ok(AnyIssuer::Iot(IotIssuer::new(iot.clone()))),
        IssuerMode::AcmPca(settings) => settings,
    };
    let arn = settings.pca.ca_arn.clone();
    let pca = AcmPca::from_sdk(sdk, arn.clone(), PCA_ATTEMPT_TIMEOUT);
    let ca_error = |source| ConfigError::PrivateCa {
        arn: arn.clone(),
        source,
    };
    let issue_settings = issue_settings(&settings.pca, &pca)
        .await
        .map_err(ca_error)?;
    let asked_at_start = settings.pca.signing_algorithm.is_none() || settings.registered_with_iot;
    if warm_up && !asked_at_start {
        warm_up::run(vec![("acm-pca", Box::pin(pca.warm_up()))]).await;
    }
    let registration = if settings.registered_with_iot {
        let (ca_certificate_pem, _chain) = pca.ca_certificate().await.map_err(ca_error)?;
        Registration::WithCa { ca_certificate_pem }
    } else {
        Registration::WithoutCa
    };
    tracing::info!(
        ca = %arn,
        signing_algorithm = %issue_settings.signing_algorithm,
        validity_days = issue_settings.validity_days,
        registered_with_iot = settings.registered_with_iot,
        "issuing with AWS Private CA"
    );
    Ok(AnyIssuer::Pca(PcaIssuer::new(
        pca,
        iot.clone(),
        issue_settings,
        registration,
        settings.issue_timeout,
    )))
}

/// Builds clients once and wires the workflow. Called at cold start, never per request.
pub async fn build_vend_api(
    sdk: &aws_config::SdkConfig,
    settings: VendSettings,
    metrics: Metrics,
) -> Result<Arc<VendApi>, ConfigError> {
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        settings.table_name.clone(),
    );
    let iot = aws_sdk_iot::Client::new(sdk);
    // The connections the first request needs, opened now (the endpoint lookup, when it
    // happens, opens AWS IoT's; the issuer's start-up, the Private CA's).
    let mut warm_up_calls: Vec<WarmUpCall> = Vec::new();
    if settings.warm_up {
        warm_up_calls.push(("dynamodb", Box::pin(store.warm_up())));
        if settings.endpoints.is_some() {
            warm_up_calls.push(("iot", Box::pin(crate::iot::warm_up(&iot))));
        }
    }
    // Independent start-up calls run concurrently.
    let (endpoints, issuer, _) = tokio::join!(
        async {
            match settings.endpoints {
                Some(e) => Ok(e),
                None => describe_endpoints(&iot)
                    .await
                    .map_err(ConfigError::Endpoints),
            }
        },
        build_issuer(sdk, &iot, settings.issuer, settings.warm_up),
        warm_up::run(warm_up_calls),
    );
    let config = VendConfig {
        default_policy: settings.default_policy,
        lockout: settings.lockout,
        claim_lease: settings.claim_lease,
        activation_margin: ACTIVATION_MARGIN.min(settings.claim_lease / 4),
        endpoints: endpoints?,
        ca_certificates: settings.ca_certificates,
        role_alias: settings.role_alias,
        renewal: settings.renewal,
        quotas: settings.quotas,
    };
    let vendor = Vendor::new(store, issuer?, IotRegistry::new(iot), config);
    Ok(Arc::new(Api { vendor, metrics }))
}

//! What every command shares, built once: the SDK configuration and its clients, the device
//! table, the deployment's issuer and claim lease, and the operator's AWS principal that every
//! change records as its actor.

use std::time::Duration;

use cvm_aws::config::{issuer_mode, process_env};
use cvm_aws::error::port_error;
use cvm_aws::vend_app::{build_issuer, AnyIssuer};
use cvm_aws::{DynamoStore, IotRegistry};
use cvm_core::ports::{FailureKind, PortError};

use crate::error::AdminError;

pub struct Context {
    sdk: aws_config::SdkConfig,
    dynamodb: aws_sdk_dynamodb::Client,
    iot: aws_sdk_iot::Client,
    table: Option<String>,
    /// How long a vend's claim protects it (the deployment's `CVM_CLAIM_LEASE_SECONDS`):
    /// ops never touch a record's work in progress before it ends.
    pub claim_lease: Duration,
}

/// The operator's AWS principal (an IAM user or assumed-role ARN).
#[derive(Debug, Clone)]
pub struct Operator(String);

impl Operator {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Context {
    /// Loads the SDK configuration (region, credentials, `AWS_ENDPOINT_URL`); no AWS call.
    pub async fn load(table: Option<String>, claim_lease: Duration) -> Self {
        let sdk = cvm_aws::load_sdk_config().await;
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            iot: aws_sdk_iot::Client::new(&sdk),
            sdk,
            table,
            claim_lease,
        }
    }

    pub fn sdk(&self) -> &aws_config::SdkConfig {
        &self.sdk
    }

    pub fn table(&self) -> Result<&str, AdminError> {
        self.table.as_deref().ok_or(AdminError::NoTable)
    }

    pub fn dynamodb(&self) -> &aws_sdk_dynamodb::Client {
        &self.dynamodb
    }

    pub fn store(&self) -> Result<DynamoStore, AdminError> {
        Ok(DynamoStore::new(self.dynamodb.clone(), self.table()?))
    }

    pub fn iot(&self) -> &aws_sdk_iot::Client {
        &self.iot
    }

    pub fn registry(&self) -> IotRegistry {
        IotRegistry::new(self.iot.clone())
    }

    /// The deployment's issuer, from `CVM_ISSUER` and, in `acm-pca` mode, `CVM_PCA_*`, so that
    /// revoking also revokes at the Private CA that issued.
    pub async fn issuer(&self) -> Result<AnyIssuer, AdminError> {
        let mode = issuer_mode(&process_env())?;
        Ok(build_issuer(&self.sdk, &self.iot, mode, false).await?)
    }

    /// Who is running this, from `sts:GetCallerIdentity`. Commands that change anything ask
    /// before their first change and stop if it cannot be known: a change without its actor
    /// would leave a hole in the audit trail.
    pub async fn operator(&self) -> Result<Operator, AdminError> {
        const OP: &str = "sts:GetCallerIdentity";
        let sts = aws_sdk_sts::Client::new(&self.sdk);
        let out = sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| AdminError::Principal(port_error(OP, e)))?;
        out.arn
            .filter(|a| !a.is_empty())
            .map(Operator)
            .ok_or_else(|| {
                AdminError::Principal(
                    PortError::new(FailureKind::Other, OP).with_code("MissingField(Arn)"),
                )
            })
    }
}

/// Now, in seconds since the Unix epoch.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 of seconds since the epoch (the seconds themselves if out of range).
pub fn rfc3339(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .map(cvm_core::vend::rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

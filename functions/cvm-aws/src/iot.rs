//! AWS IoT: certificates from CSRs (Amazon's CA), things and attachments.

use aws_sdk_iot::types::{AttributePayload, CertificateStatus};
use aws_sdk_iot::Client;
use cvm_core::ports::{CertificateIssuer, FailureKind, NewCertificate, PortError, ThingRegistry};
use cvm_core::record::CertificateRef;
use cvm_core::{Attributes, Csr, Endpoints, PolicyName, ThingName};

use crate::error::{error_code, missing, port_error};

/// Issues with `iot:CreateCertificateFromCsr`: Amazon's CA signs, the key stays the device's.
#[derive(Clone)]
pub struct IotIssuer {
    client: Client,
}

impl IotIssuer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl CertificateIssuer for IotIssuer {
    async fn issue(&self, csr: &Csr) -> Result<NewCertificate, PortError> {
        const OP: &str = "iot:CreateCertificateFromCsr";
        let out = self
            .client
            .create_certificate_from_csr()
            .certificate_signing_request(csr.pem())
            // Inactive until the table knows it: see the workflow's invariant.
            .set_as_active(false)
            .send()
            .await
            .map_err(|e| port_error(OP, e))?;
        Ok(NewCertificate {
            certificate: CertificateRef {
                id: out
                    .certificate_id
                    .ok_or_else(|| missing(OP, "certificateId"))?,
                arn: out
                    .certificate_arn
                    .ok_or_else(|| missing(OP, "certificateArn"))?,
            },
            certificate_pem: out
                .certificate_pem
                .ok_or_else(|| missing(OP, "certificatePem"))?,
        })
    }

    async fn activate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        set_status(&self.client, certificate, CertificateStatus::Active).await
    }

    async fn deactivate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        deactivate_certificate(&self.client, certificate).await
    }

    async fn discard(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        discard_certificate(&self.client, certificate).await
    }

    async fn revoke(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        revoke_in_iot(&self.client, certificate).await
    }
}

/// INACTIVE, unless it is REVOKED already (AWS IoT refuses to change a revoked certificate,
/// and revoked is more than inactive). Gone is done.
pub async fn deactivate_certificate(
    client: &Client,
    certificate: &CertificateRef,
) -> Result<(), PortError> {
    match set_status(client, certificate, CertificateStatus::Inactive).await {
        Err(e) if e.kind == FailureKind::NotFound => Ok(()),
        Err(e) if e.code.as_deref() == Some("CertificateStateException") => Ok(()),
        other => other,
    }
}

/// REVOKED in AWS IoT; already revoked (AWS IoT answers CertificateStateException) is done.
pub async fn revoke_in_iot(client: &Client, certificate: &CertificateRef) -> Result<(), PortError> {
    match set_status(client, certificate, CertificateStatus::Revoked).await {
        Err(e) if e.code.as_deref() == Some("CertificateStateException") => Ok(()),
        other => other,
    }
}

pub(crate) async fn set_status(
    client: &Client,
    certificate: &CertificateRef,
    status: CertificateStatus,
) -> Result<(), PortError> {
    client
        .update_certificate()
        .certificate_id(&certificate.id)
        .new_status(status)
        .send()
        .await
        .map_err(|e| port_error("iot:UpdateCertificate", e))?;
    Ok(())
}

/// Waits between `DeleteCertificate` attempts while AWS IoT still sees attachments: AWS
/// documents detaching as asynchronous, so a delete right after a detach may conflict.
const DELETE_CONFLICT_BACKOFF: [std::time::Duration; 5] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(800),
    std::time::Duration::from_millis(1600),
];

/// Deactivate, then delete. A certificate that is already gone counts as discarded.
pub async fn discard_certificate(
    client: &Client,
    certificate: &CertificateRef,
) -> Result<(), PortError> {
    match set_status(client, certificate, CertificateStatus::Inactive).await {
        Err(e) if e.kind == FailureKind::NotFound => return Ok(()),
        Err(e) if e.code.as_deref() == Some("CertificateStateException") => {}
        other => other?,
    }
    let mut waits = DELETE_CONFLICT_BACKOFF.iter();
    loop {
        match client
            .delete_certificate()
            .certificate_id(&certificate.id)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(()),
            Err(e) if error_code(&e) == Some("DeleteConflictException") => match waits.next() {
                Some(wait) => {
                    tracing::info!(certificate_id = %certificate.id, wait_ms = wait.as_millis() as u64, "certificate still attached; retrying the delete");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(port_error("iot:DeleteCertificate", e)),
            },
            Err(e) => return Err(port_error("iot:DeleteCertificate", e)),
        }
    }
}

#[derive(Clone)]
pub struct IotRegistry {
    client: Client,
}

impl IotRegistry {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// "Not attached" and "not there" both mean the detach has nothing left to do.
fn gone_is_ok(result: Result<(), PortError>) -> Result<(), PortError> {
    match result {
        Err(e) if e.kind == FailureKind::NotFound => Ok(()),
        other => other,
    }
}

impl ThingRegistry for IotRegistry {
    async fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &Attributes,
    ) -> Result<(), PortError> {
        let mut payload = AttributePayload::builder();
        for (k, v) in attributes.iter() {
            payload = payload.attributes(k, v);
        }
        match self
            .client
            .create_thing()
            .thing_name(thing.as_str())
            .attribute_payload(payload.build())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // A thing of that name exists (a re-enrolled device): keep it as it is.
            Err(e) if error_code(&e) == Some("ResourceAlreadyExistsException") => {
                tracing::info!(thing = %thing, "thing exists; reusing it");
                Ok(())
            }
            Err(e) => Err(port_error("iot:CreateThing", e)),
        }
    }

    async fn attach_policy(
        &self,
        policy: &PolicyName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        self.client
            .attach_policy()
            .policy_name(policy.as_str())
            .target(&certificate.arn)
            .send()
            .await
            .map_err(|e| port_error("iot:AttachPolicy", e))?;
        Ok(())
    }

    async fn detach_policy(
        &self,
        policy: &PolicyName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        gone_is_ok(
            self.client
                .detach_policy()
                .policy_name(policy.as_str())
                .target(&certificate.arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| port_error("iot:DetachPolicy", e)),
        )
    }

    async fn attach_thing_principal(
        &self,
        thing: &ThingName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        self.client
            .attach_thing_principal()
            .thing_name(thing.as_str())
            .principal(&certificate.arn)
            .send()
            .await
            .map_err(|e| port_error("iot:AttachThingPrincipal", e))?;
        Ok(())
    }

    async fn detach_thing_principal(
        &self,
        thing: &ThingName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        gone_is_ok(
            self.client
                .detach_thing_principal()
                .thing_name(thing.as_str())
                .principal(&certificate.arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| port_error("iot:DetachThingPrincipal", e)),
        )
    }

    async fn detach_all_policies(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        let mut marker = None;
        let mut names = Vec::new();
        loop {
            let page = match self
                .client
                .list_attached_policies()
                .target(&certificate.arn)
                .set_marker(marker.take())
                .send()
                .await
            {
                Ok(page) => page,
                Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(()),
                Err(e) => return Err(port_error("iot:ListAttachedPolicies", e)),
            };
            names.extend(
                page.policies()
                    .iter()
                    .filter_map(|p| p.policy_name().map(str::to_owned)),
            );
            match page.next_marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        for name in names {
            gone_is_ok(
                self.client
                    .detach_policy()
                    .policy_name(&name)
                    .target(&certificate.arn)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| port_error("iot:DetachPolicy", e)),
            )?;
        }
        Ok(())
    }
}

/// Init's warm-up call to AWS IoT (see [`crate::warm_up`]): the data endpoint, read-only.
pub async fn warm_up(client: &Client) -> Result<(), PortError> {
    client
        .describe_endpoint()
        .endpoint_type("iot:Data-ATS")
        .send()
        .await
        .map(drop)
        .map_err(|e| port_error("iot:DescribeEndpoint(warm-up)", e))
}

/// The account's ATS data endpoint and credentials-provider endpoint, asked concurrently.
pub async fn describe_endpoints(client: &Client) -> Result<Endpoints, PortError> {
    let (data, credentials) = tokio::join!(
        client
            .describe_endpoint()
            .endpoint_type("iot:Data-ATS")
            .send(),
        client
            .describe_endpoint()
            .endpoint_type("iot:CredentialProvider")
            .send(),
    );
    let data = data.map_err(|e| port_error("iot:DescribeEndpoint", e))?;
    let credentials = credentials.map_err(|e| port_error("iot:DescribeEndpoint", e))?;
    Ok(Endpoints {
        data: data
            .endpoint_address
            .ok_or_else(|| missing("iot:DescribeEndpoint", "endpointAddress"))?,
        credentials: credentials
            .endpoint_address
            .ok_or_else(|| missing("iot:DescribeEndpoint", "endpointAddress"))?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use aws_sdk_iot::error::ErrorMetadata;
    use aws_sdk_iot::operation::delete_certificate::{
        DeleteCertificateError, DeleteCertificateOutput,
    };
    use aws_sdk_iot::operation::update_certificate::UpdateCertificateOutput;
    use aws_sdk_iot::types::error::DeleteConflictException;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::*;

    fn conflict() -> DeleteCertificateError {
        DeleteCertificateError::DeleteConflictException(
            DeleteConflictException::builder()
                .message("Things must be detached before deletion")
                .meta(
                    ErrorMetadata::builder()
                        .code("DeleteConflictException")
                        .build(),
                )
                .build(),
        )
    }

    fn certificate() -> CertificateRef {
        CertificateRef {
            id: "c0ffee".into(),
            arn: "arn:aws:iot:us-east-1:123456789012:cert/c0ffee".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_that_conflicts_while_detaching_settles_is_retried() {
        let deactivate = mock!(aws_sdk_iot::Client::update_certificate)
            .then_output(|| UpdateCertificateOutput::builder().build());
        let delete = mock!(aws_sdk_iot::Client::delete_certificate)
            .sequence()
            .error(conflict)
            .times(2)
            .output(|| DeleteCertificateOutput::builder().build())
            .build();
        let client = mock_client!(
            aws_sdk_iot,
            RuleMode::MatchAny,
            &[deactivate.clone(), delete.clone()]
        );
        discard_certificate(&client, &certificate()).await.unwrap();
        assert_eq!(delete.num_calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_that_does_not_settle_is_an_error() {
        let deactivate = mock!(aws_sdk_iot::Client::update_certificate)
            .then_output(|| UpdateCertificateOutput::builder().build());
        let delete = mock!(aws_sdk_iot::Client::delete_certificate).then_error(conflict);
        let client = mock_client!(
            aws_sdk_iot,
            RuleMode::MatchAny,
            &[deactivate, delete.clone()]
        );
        let err = discard_certificate(&client, &certificate())
            .await
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("DeleteConflictException"));
        assert_eq!(delete.num_calls(), 1 + DELETE_CONFLICT_BACKOFF.len());
    }
}

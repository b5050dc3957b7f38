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

    async fn discard(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        discard_certificate(&self.client, certificate).await
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

/// Deactivate, then delete. A certificate that is already gone counts as discarded.
pub async fn discard_certificate(
    client: &Client,
    certificate: &CertificateRef,
) -> Result<(), PortError> {
    match set_status(client, certificate, CertificateStatus::Inactive).await {
        Err(e) if e.kind == FailureKind::NotFound => return Ok(()),
        other => other?,
    }
    match client
        .delete_certificate()
        .certificate_id(&certificate.id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(()),
        Err(e) => Err(port_error("iot:DeleteCertificate", e)),
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

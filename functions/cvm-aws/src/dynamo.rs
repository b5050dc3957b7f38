//! Device records in DynamoDB, one item per serial. Every state change is a conditional
//! write: claims on the record's version, later steps on the claim's id.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use cvm_core::ports::{DeviceStore, FailureKind, PortError, Written};
use cvm_core::record::{CertificateRef, Claim, DeviceRecord, DeviceStatus, IssuedCertificate};
use cvm_core::{Attributes, KeyFingerprint, PolicyName, Serial, ThingName, TokenHash};

use crate::error::{error_code, port_error};

type Item = HashMap<String, AttributeValue>;

const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// An UpdateItem on one serial's item.
    fn update(&self, serial: &Serial) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("serial", s(serial.as_str()))
    }

    /// An UpdateItem that only applies while `claim_id` holds the record's claim.
    fn update_under_claim(&self, serial: &Serial, claim_id: &str) -> UpdateItemFluentBuilder {
        self.update(serial)
            .condition_expression("#status = :claimed AND claimId = :id")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":claimed", s("claimed"))
            .expression_attribute_values(":id", s(claim_id))
    }

    /// Marks a device revoked (used by the admin CLI after the certificate is deactivated).
    pub async fn mark_revoked(
        &self,
        serial: &Serial,
        revoked_at: &str,
    ) -> Result<Written, PortError> {
        let result = self
            .update(serial)
            .update_expression("SET #status = :revoked, revokedAt = :at, version = version + :one")
            .condition_expression("attribute_exists(serial)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":revoked", s("revoked"))
            .expression_attribute_values(":at", s(revoked_at))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        written("dynamodb:UpdateItem(revoke)", result)
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn written<T, E, R>(
    operation: &'static str,
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
) -> Result<Written, PortError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(Written::Done),
        Err(e) if error_code(&e) == Some(CONDITION_FAILED) => Ok(Written::ConditionFailed),
        Err(e) => Err(port_error(operation, e)),
    }
}

fn corrupt(field: &str) -> PortError {
    PortError::new(FailureKind::Other, "dynamodb:GetItem")
        .with_code(format!("CorruptRecord({field})"))
}

fn get_s<'a>(item: &'a Item, field: &str) -> Result<&'a str, PortError> {
    match item.get(field) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(field)),
    }
}

fn opt_s<'a>(item: &'a Item, field: &str) -> Option<&'a str> {
    match item.get(field) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, field: &str) -> Result<T, PortError> {
    match item.get(field) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(field)),
        None => Err(corrupt(field)),
        _ => Err(corrupt(field)),
    }
}

fn cert_ref(item: &Item, id: &str, arn: &str) -> Result<Option<CertificateRef>, PortError> {
    match (opt_s(item, id), opt_s(item, arn)) {
        (Some(id), Some(arn)) => Ok(Some(CertificateRef {
            id: id.to_owned(),
            arn: arn.to_owned(),
        })),
        (None, None) => Ok(None),
        _ => Err(corrupt(id)),
    }
}

/// Reads an item; any attribute that is missing or malformed is an error, never a default.
pub fn record_from_item(item: &Item) -> Result<DeviceRecord, PortError> {
    let serial = Serial::parse(get_s(item, "serial")?).map_err(|_| corrupt("serial"))?;
    let token_hash =
        TokenHash::parse_hex(get_s(item, "tokenHash")?).map_err(|_| corrupt("tokenHash"))?;
    let thing_name =
        ThingName::parse(get_s(item, "thingName")?).map_err(|_| corrupt("thingName"))?;
    let policy_name = opt_s(item, "policyName")
        .map(PolicyName::parse)
        .transpose()
        .map_err(|_| corrupt("policyName"))?;
    let attributes = match item.get("attributes") {
        None => Attributes::default(),
        Some(AttributeValue::M(m)) => {
            let mut pairs = Vec::new();
            for (k, v) in m {
                match v {
                    AttributeValue::S(v) => pairs.push((k.clone(), v.clone())),
                    _ => return Err(corrupt("attributes")),
                }
            }
            Attributes::parse(pairs).map_err(|_| corrupt("attributes"))?
        }
        Some(_) => return Err(corrupt("attributes")),
    };
    let fingerprint = |field: &str| {
        get_s(item, field)
            .ok()
            .and_then(KeyFingerprint::parse)
            .ok_or_else(|| corrupt(field))
    };
    let status = match get_s(item, "status")? {
        "enrolled" => DeviceStatus::Enrolled,
        "claimed" => DeviceStatus::Claimed(Claim {
            id: get_s(item, "claimId")?.to_owned(),
            fingerprint: fingerprint("claimFingerprint")?,
            claimed_at: get_n(item, "claimedAt")?,
            pending: cert_ref(item, "pendingCertificateId", "pendingCertificateArn")?,
        }),
        "issued" => DeviceStatus::Issued(IssuedCertificate {
            certificate: cert_ref(item, "certificateId", "certificateArn")?
                .ok_or_else(|| corrupt("certificateId"))?,
            certificate_pem: get_s(item, "certificatePem")?.to_owned(),
            fingerprint: fingerprint("publicKeyFingerprint")?,
            issued_at: get_s(item, "issuedAt")?.to_owned(),
        }),
        "revoked" => DeviceStatus::Revoked {
            revoked_at: get_s(item, "revokedAt")?.to_owned(),
        },
        _ => return Err(corrupt("status")),
    };
    Ok(DeviceRecord {
        serial,
        token_hash,
        thing_name,
        policy_name,
        attributes,
        status,
        failed_attempts: get_n(item, "failedAttempts")?,
        version: get_n(item, "version")?,
        enrolled_at: get_s(item, "enrolledAt")?.to_owned(),
    })
}

/// A fresh enrollment as an item. Only enrollments are ever written whole.
fn enrollment_item(record: &DeviceRecord) -> Item {
    let mut item = Item::new();
    item.insert("serial".into(), s(record.serial.as_str()));
    item.insert("tokenHash".into(), s(&record.token_hash.to_hex()));
    item.insert("thingName".into(), s(record.thing_name.as_str()));
    if let Some(p) = &record.policy_name {
        item.insert("policyName".into(), s(p.as_str()));
    }
    if !record.attributes.is_empty() {
        let map = record
            .attributes
            .iter()
            .map(|(k, v)| (k.to_owned(), s(v)))
            .collect();
        item.insert("attributes".into(), AttributeValue::M(map));
    }
    item.insert("status".into(), s("enrolled"));
    item.insert("failedAttempts".into(), n(0));
    item.insert("version".into(), n(record.version));
    item.insert("enrolledAt".into(), s(&record.enrolled_at));
    item
}

const CLAIM_FIELDS: &str =
    "claimId, claimFingerprint, claimedAt, pendingCertificateId, pendingCertificateArn";

impl DeviceStore for DynamoStore {
    async fn get(&self, serial: &Serial) -> Result<Option<DeviceRecord>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("serial", s(serial.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| port_error("dynamodb:GetItem", e))?;
        out.item.as_ref().map(record_from_item).transpose()
    }

    async fn create(&self, record: &DeviceRecord) -> Result<Written, PortError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(enrollment_item(record)))
            .condition_expression("attribute_not_exists(serial)")
            .send()
            .await;
        written("dynamodb:PutItem", result)
    }

    async fn record_failed_attempt(&self, serial: &Serial) -> Result<u32, PortError> {
        let out = self
            .update(serial)
            .update_expression("ADD failedAttempts :one")
            .condition_expression("attribute_exists(serial)")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| port_error("dynamodb:UpdateItem(failedAttempts)", e))?;
        out.attributes
            .as_ref()
            .ok_or_else(|| corrupt("failedAttempts"))
            .and_then(|a| get_n(a, "failedAttempts"))
    }

    async fn claim(
        &self,
        serial: &Serial,
        expected_version: u64,
        claim: &Claim,
    ) -> Result<Written, PortError> {
        let mut update = self
            .update(serial)
            .condition_expression("version = :expected")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":expected", n(expected_version))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":claimed", s("claimed"))
            .expression_attribute_values(":id", s(&claim.id))
            .expression_attribute_values(":fp", s(claim.fingerprint.as_str()))
            .expression_attribute_values(":at", n(claim.claimed_at));
        let set = "SET #status = :claimed, claimId = :id, claimFingerprint = :fp, claimedAt = :at, version = version + :one";
        update = match &claim.pending {
            Some(p) => update
                .update_expression(format!(
                    "{set}, pendingCertificateId = :pid, pendingCertificateArn = :parn"
                ))
                .expression_attribute_values(":pid", s(&p.id))
                .expression_attribute_values(":parn", s(&p.arn)),
            None => update.update_expression(format!(
                "{set} REMOVE pendingCertificateId, pendingCertificateArn"
            )),
        };
        written("dynamodb:UpdateItem(claim)", update.send().await)
    }

    async fn record_pending(
        &self,
        serial: &Serial,
        claim_id: &str,
        certificate: &CertificateRef,
    ) -> Result<Written, PortError> {
        let result = self
            .update_under_claim(serial, claim_id)
            .update_expression("SET pendingCertificateId = :pid, pendingCertificateArn = :parn")
            .expression_attribute_values(":pid", s(&certificate.id))
            .expression_attribute_values(":parn", s(&certificate.arn))
            .send()
            .await;
        written("dynamodb:UpdateItem(pending)", result)
    }

    async fn complete(
        &self,
        serial: &Serial,
        claim_id: &str,
        issued: &IssuedCertificate,
    ) -> Result<Written, PortError> {
        let result = self
            .update_under_claim(serial, claim_id)
            .update_expression(format!(
                "SET #status = :issued, certificateId = :cid, certificateArn = :carn, \
                 certificatePem = :pem, publicKeyFingerprint = :fp, issuedAt = :at, \
                 version = version + :one REMOVE {CLAIM_FIELDS}"
            ))
            .expression_attribute_values(":issued", s("issued"))
            .expression_attribute_values(":cid", s(&issued.certificate.id))
            .expression_attribute_values(":carn", s(&issued.certificate.arn))
            .expression_attribute_values(":pem", s(&issued.certificate_pem))
            .expression_attribute_values(":fp", s(issued.fingerprint.as_str()))
            .expression_attribute_values(":at", s(&issued.issued_at))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        written("dynamodb:UpdateItem(complete)", result)
    }

    async fn release(&self, serial: &Serial, claim_id: &str) -> Result<Written, PortError> {
        let result = self
            .update_under_claim(serial, claim_id)
            .update_expression(format!(
                "SET #status = :enrolled, version = version + :one REMOVE {CLAIM_FIELDS}"
            ))
            .expression_attribute_values(":enrolled", s("enrolled"))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        written("dynamodb:UpdateItem(release)", result)
    }
}

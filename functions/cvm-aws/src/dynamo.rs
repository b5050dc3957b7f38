//! Device records in DynamoDB, one item per serial. Every change is one conditional
//! `UpdateItem` that touches only the attributes of its [`Change`], so independent changes
//! (a wrong token counted while a vend is in progress) never overwrite each other. The first
//! write of a vend ([`DeviceStore::admit`]) checks the credentials inside its condition and
//! returns the item either way (`ALL_NEW` when applied, `ALL_OLD` when refused): a vend needs
//! no read before it.
//!
//! Item attributes (all optional ones absent when unset):
//! `serial` (key), `tokenHash`, `registeredKey`, `thingName`, `policyName`, `attributes` (map),
//! `status` (`enrolled` | `claimed` | `issued` | `revoked`), `version`, `enrolledAt`,
//! `failedAttempts`, `lastFailureAt`, `lockedUntil`,
//! `claimId`, `claimFingerprint`, `claimedAt`, `pendingCertificateId`, `pendingCertificateArn`,
//! `certificateId`, `certificateArn`, `certificatePem`, `publicKeyFingerprint`, `issuedAt`,
//! `door`, `renewalState` (`in-progress` | `proposed`), `renewalClaimId`,
//! `renewalFingerprint`, `renewalClaimedAt`, `renewalPendingId`, `renewalPendingArn`,
//! `renewalCertificateId`, `renewalCertificateArn`, `renewalCertificatePem`,
//! `renewalPublicKeyFingerprint`, `renewalIssuedAt`, `revokedAt`, `revokedCertificateId`,
//! `revokedCertificateArn`, `history` (list of `{at, kind, actor, detail}`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use cvm_core::audit::{AuditEvent, AuditKind};
use cvm_core::ports::{Admission, Admitted, DeviceStore, FailureKind, PortError, Written};
use cvm_core::record::{
    CertificateRef, Change, Claim, Credentials, DeviceRecord, DeviceStatus, Door, Guard,
    IssuedCertificate, Renewal,
};
use cvm_core::{Attributes, KeyFingerprint, Lockout, PolicyName, Serial, ThingName, TokenHash};

use crate::error::{error_code, port_error};

pub type Item = HashMap<String, AttributeValue>;

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

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Init's warm-up call (see [`crate::warm_up`]): an eventually consistent read of a key no
    /// serial can have, on the table the function already reads (half a read unit).
    pub async fn warm_up(&self) -> Result<(), PortError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("serial", s(WARM_UP_KEY))
            .projection_expression("serial")
            .send()
            .await
            .map(drop)
            .map_err(|e| port_error("dynamodb:GetItem(warm-up)", e))
    }
}

/// Not a serial: `#` is outside the serial alphabet, so no record can ever have this key.
const WARM_UP_KEY: &str = "#warm-up";

pub(crate) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
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
        _ => Err(corrupt(field)),
    }
}

fn opt_n<T: std::str::FromStr + Default>(item: &Item, field: &str) -> Result<T, PortError> {
    match item.get(field) {
        None => Ok(T::default()),
        Some(_) => get_n(item, field),
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

fn fingerprint(item: &Item, field: &str) -> Result<KeyFingerprint, PortError> {
    get_s(item, field)
        .ok()
        .and_then(KeyFingerprint::parse)
        .ok_or_else(|| corrupt(field))
}

/// The attribute names of one of the two certificate slots (current, renewal).
struct CertificateFields {
    id: &'static str,
    arn: &'static str,
    pem: &'static str,
    fingerprint: &'static str,
    issued_at: &'static str,
}

const CURRENT: CertificateFields = CertificateFields {
    id: "certificateId",
    arn: "certificateArn",
    pem: "certificatePem",
    fingerprint: "publicKeyFingerprint",
    issued_at: "issuedAt",
};

const RENEWAL: CertificateFields = CertificateFields {
    id: "renewalCertificateId",
    arn: "renewalCertificateArn",
    pem: "renewalCertificatePem",
    fingerprint: "renewalPublicKeyFingerprint",
    issued_at: "renewalIssuedAt",
};

/// The attribute names of one of the two claim slots (vend, renewal).
struct ClaimFields {
    id: &'static str,
    fingerprint: &'static str,
    claimed_at: &'static str,
    pending_id: &'static str,
    pending_arn: &'static str,
}

const VEND_CLAIM: ClaimFields = ClaimFields {
    id: "claimId",
    fingerprint: "claimFingerprint",
    claimed_at: "claimedAt",
    pending_id: "pendingCertificateId",
    pending_arn: "pendingCertificateArn",
};

const RENEWAL_CLAIM: ClaimFields = ClaimFields {
    id: "renewalClaimId",
    fingerprint: "renewalFingerprint",
    claimed_at: "renewalClaimedAt",
    pending_id: "renewalPendingId",
    pending_arn: "renewalPendingArn",
};

fn issued_from(
    item: &Item,
    f: &CertificateFields,
    door: Door,
) -> Result<IssuedCertificate, PortError> {
    Ok(IssuedCertificate {
        certificate: cert_ref(item, f.id, f.arn)?.ok_or_else(|| corrupt(f.id))?,
        certificate_pem: get_s(item, f.pem)?.to_owned(),
        fingerprint: fingerprint(item, f.fingerprint)?,
        issued_at: get_s(item, f.issued_at)?.to_owned(),
        door,
    })
}

fn claim_from(item: &Item, f: &ClaimFields) -> Result<Claim, PortError> {
    Ok(Claim {
        id: get_s(item, f.id)?.to_owned(),
        fingerprint: fingerprint(item, f.fingerprint)?,
        claimed_at: get_n(item, f.claimed_at)?,
        pending: cert_ref(item, f.pending_id, f.pending_arn)?,
    })
}

fn event_from(value: &AttributeValue) -> Result<AuditEvent, PortError> {
    let AttributeValue::M(m) = value else {
        return Err(corrupt("history"));
    };
    Ok(AuditEvent {
        at: get_s(m, "at")?.to_owned(),
        kind: AuditKind::parse(get_s(m, "kind")?).ok_or_else(|| corrupt("history.kind"))?,
        actor: get_s(m, "actor")?.to_owned(),
        detail: opt_s(m, "detail").unwrap_or_default().to_owned(),
    })
}

fn event_value(event: &AuditEvent) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("at".to_owned(), s(&event.at)),
        ("kind".to_owned(), s(event.kind.as_str())),
        ("actor".to_owned(), s(&event.actor)),
        ("detail".to_owned(), s(&event.detail)),
    ]))
}

fn history_value(history: &[AuditEvent]) -> AttributeValue {
    AttributeValue::L(history.iter().map(event_value).collect())
}

/// Reads an item; any attribute that is missing or malformed is an error, never a default
/// (the lockout and history attributes, absent from records written before they existed,
/// read as none).
pub fn record_from_item(item: &Item) -> Result<DeviceRecord, PortError> {
    let serial = Serial::parse(get_s(item, "serial")?).map_err(|_| corrupt("serial"))?;
    let token_hash = opt_s(item, "tokenHash")
        .map(TokenHash::parse_hex)
        .transpose()
        .map_err(|_| corrupt("tokenHash"))?;
    let registered_key = opt_s(item, "registeredKey")
        .map(|k| KeyFingerprint::parse(k).ok_or_else(|| corrupt("registeredKey")))
        .transpose()?;
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
    let status = match get_s(item, "status")? {
        "enrolled" => DeviceStatus::Enrolled,
        "claimed" => DeviceStatus::Claimed(claim_from(item, &VEND_CLAIM)?),
        "issued" => {
            let door = match opt_s(item, "door") {
                None => Door::Vend,
                Some(d) => Door::parse(d).ok_or_else(|| corrupt("door"))?,
            };
            let renewal = match opt_s(item, "renewalState") {
                None => None,
                Some("in-progress") => Some(Renewal::InProgress(claim_from(item, &RENEWAL_CLAIM)?)),
                Some("proposed") => Some(Renewal::Proposed(issued_from(
                    item,
                    &RENEWAL,
                    Door::Renewal,
                )?)),
                Some(_) => return Err(corrupt("renewalState")),
            };
            DeviceStatus::Issued {
                current: issued_from(item, &CURRENT, door)?,
                renewal,
            }
        }
        "revoked" => DeviceStatus::Revoked {
            revoked_at: get_s(item, "revokedAt")?.to_owned(),
            certificate: cert_ref(item, "revokedCertificateId", "revokedCertificateArn")?,
        },
        _ => return Err(corrupt("status")),
    };
    let history = match item.get("history") {
        None => Vec::new(),
        Some(AttributeValue::L(l)) => l.iter().map(event_from).collect::<Result<_, _>>()?,
        Some(_) => return Err(corrupt("history")),
    };
    Ok(DeviceRecord {
        serial,
        credentials: Credentials {
            token_hash,
            registered_key,
        },
        thing_name,
        policy_name,
        attributes,
        status,
        lockout: Lockout {
            failures: opt_n(item, "failedAttempts")?,
            last_failure_at: opt_n(item, "lastFailureAt")?,
            locked_until: opt_n(item, "lockedUntil")?,
        },
        version: get_n(item, "version")?,
        enrolled_at: get_s(item, "enrolledAt")?.to_owned(),
        history,
    })
}

/// A fresh enrollment as an item. Only enrollments are ever written whole.
pub fn enrollment_item(record: &DeviceRecord) -> Item {
    let mut item = Item::new();
    item.insert("serial".into(), s(record.serial.as_str()));
    if let Some(h) = &record.credentials.token_hash {
        item.insert("tokenHash".into(), s(&h.to_hex()));
    }
    if let Some(k) = &record.credentials.registered_key {
        item.insert("registeredKey".into(), s(k.as_str()));
    }
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
    item.insert("version".into(), n(record.version));
    item.insert("enrolledAt".into(), s(&record.enrolled_at));
    item.insert("history".into(), history_value(&record.history));
    item
}

/// An update expression under construction: `SET` and `REMOVE` clauses and a condition, with
/// every attribute name behind a placeholder (`status` is a reserved word; others may become
/// one).
#[derive(Default)]
struct Update {
    sets: Vec<String>,
    removes: Vec<String>,
    conditions: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn set(&mut self, attribute: &str, value: AttributeValue) -> &mut Self {
        let (name, value) = (self.name(attribute), self.value(value));
        self.sets.push(format!("{name} = {value}"));
        self
    }

    fn remove(&mut self, attribute: &str) -> &mut Self {
        let name = self.name(attribute);
        self.removes.push(name);
        self
    }

    fn bump_version(&mut self) {
        let (name, one) = (self.name("version"), self.value(n(1)));
        self.sets.push(format!("{name} = {name} + {one}"));
    }

    fn append_event(&mut self, event: &AuditEvent) {
        let name = self.name("history");
        let event = self.value(AttributeValue::L(vec![event_value(event)]));
        let empty = self.value(AttributeValue::L(Vec::new()));
        self.sets.push(format!(
            "{name} = list_append(if_not_exists({name}, {empty}), {event})"
        ));
    }

    /// `attribute = value`.
    fn require(&mut self, attribute: &str, value: AttributeValue) {
        let (name, value) = (self.name(attribute), self.value(value));
        self.conditions.push(format!("{name} = {value}"));
    }

    /// `attribute = value`, an absent attribute counting as `absent_as`.
    fn require_or_absent(&mut self, attribute: &str, value: AttributeValue, absent: bool) {
        let (name, value) = (self.name(attribute), self.value(value));
        if absent {
            self.conditions.push(format!(
                "(attribute_not_exists({name}) OR {name} = {value})"
            ));
        } else {
            self.conditions.push(format!("{name} = {value}"));
        }
    }

    fn condition(&mut self, text: String) {
        self.conditions.push(text);
    }

    fn expression(&self) -> String {
        let mut e = String::new();
        if !self.sets.is_empty() {
            e.push_str("SET ");
            e.push_str(&self.sets.join(", "));
        }
        if !self.removes.is_empty() {
            if !e.is_empty() {
                e.push(' ');
            }
            e.push_str("REMOVE ");
            e.push_str(&self.removes.join(", "));
        }
        e
    }
}

fn set_certificate(u: &mut Update, f: &CertificateFields, issued: &IssuedCertificate) {
    u.set(f.id, s(&issued.certificate.id))
        .set(f.arn, s(&issued.certificate.arn))
        .set(f.pem, s(&issued.certificate_pem))
        .set(f.fingerprint, s(issued.fingerprint.as_str()))
        .set(f.issued_at, s(&issued.issued_at));
}

fn remove_certificate(u: &mut Update, f: &CertificateFields) {
    u.remove(f.id)
        .remove(f.arn)
        .remove(f.pem)
        .remove(f.fingerprint)
        .remove(f.issued_at);
}

fn set_claim(u: &mut Update, f: &ClaimFields, claim: &Claim) {
    u.set(f.id, s(&claim.id))
        .set(f.fingerprint, s(claim.fingerprint.as_str()))
        .set(f.claimed_at, n(claim.claimed_at));
    match &claim.pending {
        Some(p) => {
            u.set(f.pending_id, s(&p.id)).set(f.pending_arn, s(&p.arn));
        }
        None => {
            u.remove(f.pending_id).remove(f.pending_arn);
        }
    }
}

fn remove_claim(u: &mut Update, f: &ClaimFields) {
    u.remove(f.id)
        .remove(f.fingerprint)
        .remove(f.claimed_at)
        .remove(f.pending_id)
        .remove(f.pending_arn);
}

fn set_lockout(u: &mut Update, lockout: &Lockout) {
    u.set("failedAttempts", n(lockout.failures))
        .set("lastFailureAt", n(lockout.last_failure_at))
        .set("lockedUntil", n(lockout.locked_until));
}

fn clear_lockout(u: &mut Update) {
    u.remove("failedAttempts")
        .remove("lastFailureAt")
        .remove("lockedUntil");
}

/// The update expression of a change ([`Change::apply`] is the reference).
fn change_update(u: &mut Update, change: &Change) {
    match change {
        Change::Claim(claim) => {
            u.set("status", s("claimed"));
            set_claim(u, &VEND_CLAIM, claim);
        }
        Change::Pending(c) => {
            u.set(VEND_CLAIM.pending_id, s(&c.id))
                .set(VEND_CLAIM.pending_arn, s(&c.arn));
        }
        Change::Complete(issued, event) | Change::ProvisionedByClaim(issued, event) => {
            u.set("status", s("issued"))
                .set("door", s(issued.door.as_str()));
            set_certificate(u, &CURRENT, issued);
            remove_claim(u, &VEND_CLAIM);
            clear_lockout(u);
            u.append_event(event);
        }
        Change::Release => {
            u.set("status", s("enrolled"));
            remove_claim(u, &VEND_CLAIM);
        }
        Change::FailedAttempt(lockout, history) => {
            set_lockout(u, lockout);
            if let Some(h) = history {
                u.set("history", history_value(h));
            }
        }
        Change::Replayed(history) => {
            u.set("history", history_value(history));
        }
        Change::RenewalClaim(claim) => {
            u.set("renewalState", s("in-progress"));
            set_claim(u, &RENEWAL_CLAIM, claim);
            remove_certificate(u, &RENEWAL);
        }
        Change::RenewalPending(c) => {
            u.set(RENEWAL_CLAIM.pending_id, s(&c.id))
                .set(RENEWAL_CLAIM.pending_arn, s(&c.arn));
        }
        Change::RenewalProposed(issued, event) => {
            u.set("renewalState", s("proposed"));
            set_certificate(u, &RENEWAL, issued);
            remove_claim(u, &RENEWAL_CLAIM);
            u.append_event(event);
        }
        Change::RenewalConfirmed(proposed, event) => {
            u.set("door", s(Door::Renewal.as_str()));
            set_certificate(u, &CURRENT, proposed);
            u.remove("renewalState");
            remove_certificate(u, &RENEWAL);
            u.append_event(event);
        }
        Change::RenewalAbandoned(event) => {
            u.remove("renewalState");
            remove_claim(u, &RENEWAL_CLAIM);
            remove_certificate(u, &RENEWAL);
            if let Some(e) = event {
                u.append_event(e);
            }
        }
        Change::Revoked {
            at,
            certificate,
            event,
        } => {
            u.set("status", s("revoked")).set("revokedAt", s(at));
            match certificate {
                Some(c) => {
                    u.set("revokedCertificateId", s(&c.id))
                        .set("revokedCertificateArn", s(&c.arn));
                }
                None => {
                    u.remove("revokedCertificateId")
                        .remove("revokedCertificateArn");
                }
            }
            remove_claim(u, &VEND_CLAIM);
            u.remove("renewalState").remove("door");
            remove_claim(u, &RENEWAL_CLAIM);
            remove_certificate(u, &RENEWAL);
            remove_certificate(u, &CURRENT);
            u.append_event(event);
        }
        Change::Unlocked(event) => {
            clear_lockout(u);
            u.append_event(event);
        }
        Change::Reenrolled(credentials, event) => {
            u.set("status", s("enrolled"));
            match &credentials.token_hash {
                Some(h) => u.set("tokenHash", s(&h.to_hex())),
                None => u.remove("tokenHash"),
            };
            match &credentials.registered_key {
                Some(k) => u.set("registeredKey", s(k.as_str())),
                None => u.remove("registeredKey"),
            };
            u.remove("revokedAt")
                .remove("revokedCertificateId")
                .remove("revokedCertificateArn")
                .remove("renewalState")
                .remove("door");
            remove_claim(u, &VEND_CLAIM);
            remove_claim(u, &RENEWAL_CLAIM);
            remove_certificate(u, &RENEWAL);
            remove_certificate(u, &CURRENT);
            clear_lockout(u);
            u.append_event(event);
        }
    }
    if change.moves_version() {
        u.bump_version();
    }
}

fn guard_condition(u: &mut Update, guard: &Guard) {
    let serial = u.name("serial");
    u.condition(format!("attribute_exists({serial})"));
    match guard {
        Guard::Version(v) => u.require("version", n(v)),
        Guard::Claim(id) => {
            u.require("status", s("claimed"));
            u.require(VEND_CLAIM.id, s(id));
        }
        Guard::RenewalClaim(id) => {
            u.require("status", s("issued"));
            u.require("renewalState", s("in-progress"));
            u.require(RENEWAL_CLAIM.id, s(id));
        }
        Guard::Lockout(l) => lockout_condition(u, l),
        Guard::VersionAndLockout(v, l) => {
            u.require("version", n(v));
            lockout_condition(u, l);
        }
    }
}

/// The lockout attributes as read; absent ones read as zero.
fn lockout_condition(u: &mut Update, l: &Lockout) {
    u.require_or_absent("failedAttempts", n(l.failures), l.failures == 0);
    u.require_or_absent(
        "lastFailureAt",
        n(l.last_failure_at),
        l.last_failure_at == 0,
    );
    u.require_or_absent("lockedUntil", n(l.locked_until), l.locked_until == 0);
}

/// [`Admission::admits`] as a condition expression.
fn admission_condition(u: &mut Update, serial: &Serial, a: &Admission) {
    let name = u.name("serial");
    u.condition(format!("attribute_exists({name})"));
    u.require("status", s("enrolled"));
    let (locked, now) = (u.name("lockedUntil"), u.value(n(a.now)));
    u.condition(format!(
        "(attribute_not_exists({locked}) OR {locked} <= {now})"
    ));
    match &a.token_hash {
        Some(h) => {
            u.require("tokenHash", s(&h.to_hex()));
            u.require_or_absent("registeredKey", s(a.fingerprint.as_str()), true);
        }
        None => u.require("registeredKey", s(a.fingerprint.as_str())),
    }
    if a.common_name != serial.as_str() {
        u.require("thingName", s(&a.common_name));
    }
}

impl DynamoStore {
    fn update_item(
        &self,
        serial: &Serial,
        u: &Update,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("serial", s(serial.as_str()))
            .update_expression(u.expression())
            .condition_expression(u.conditions.join(" AND "))
            .set_expression_attribute_names(Some(u.names.clone()))
            .set_expression_attribute_values(Some(u.values.clone()))
    }
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

/// The operation name of a change, for errors and logs.
fn operation(change: &Change) -> &'static str {
    match change {
        Change::Claim(_) => "dynamodb:UpdateItem(claim)",
        Change::Pending(_) => "dynamodb:UpdateItem(pending)",
        Change::Complete(..) => "dynamodb:UpdateItem(complete)",
        Change::Release => "dynamodb:UpdateItem(release)",
        Change::FailedAttempt(..) => "dynamodb:UpdateItem(failed_attempt)",
        Change::Replayed(_) => "dynamodb:UpdateItem(replayed)",
        Change::ProvisionedByClaim(..) => "dynamodb:UpdateItem(provisioned)",
        Change::RenewalClaim(_) => "dynamodb:UpdateItem(renewal_claim)",
        Change::RenewalPending(_) => "dynamodb:UpdateItem(renewal_pending)",
        Change::RenewalProposed(..) => "dynamodb:UpdateItem(renewal_proposed)",
        Change::RenewalConfirmed(..) => "dynamodb:UpdateItem(renewal_confirmed)",
        Change::RenewalAbandoned(_) => "dynamodb:UpdateItem(renewal_abandoned)",
        Change::Revoked { .. } => "dynamodb:UpdateItem(revoked)",
        Change::Unlocked(_) => "dynamodb:UpdateItem(unlocked)",
        Change::Reenrolled(..) => "dynamodb:UpdateItem(reenrolled)",
    }
}

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

    async fn admit(
        &self,
        serial: &Serial,
        admission: &Admission,
        change: &Change,
    ) -> Result<Admitted, PortError> {
        let op = operation(change);
        let mut u = Update::default();
        change_update(&mut u, change);
        admission_condition(&mut u, serial, admission);
        let result = self
            .update_item(serial, &u)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out
                    .attributes
                    .ok_or_else(|| PortError::new(FailureKind::Other, op).with_code("NoItem"))?;
                Ok(Admitted::Applied(record_from_item(&item)?))
            }
            Err(e) if error_code(&e) == Some(CONDITION_FAILED) => {
                let old = match e.as_service_error() {
                    Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                    _ => None,
                };
                Ok(Admitted::Refused(
                    old.as_ref().map(record_from_item).transpose()?,
                ))
            }
            Err(e) => Err(port_error(op, e)),
        }
    }

    async fn apply(
        &self,
        serial: &Serial,
        guard: &Guard,
        change: &Change,
    ) -> Result<Written, PortError> {
        let mut u = Update::default();
        change_update(&mut u, change);
        guard_condition(&mut u, guard);
        written(operation(change), self.update_item(serial, &u).send().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_name_every_attribute_and_value() {
        let mut u = Update::default();
        change_update(&mut u, &Change::Release);
        guard_condition(&mut u, &Guard::Claim("c1".into()));
        let e = u.expression();
        assert!(e.starts_with("SET #status = :v0"), "{e}");
        assert!(e.contains("REMOVE #claimId"), "{e}");
        assert!(
            e.ends_with("#version = #version + :v1") || e.contains("#version + "),
            "{e}"
        );
        for placeholder in u.names.keys() {
            assert!(
                e.contains(placeholder.as_str())
                    || u.conditions.join(" ").contains(placeholder.as_str()),
                "{placeholder} unused"
            );
        }
        let c = u.conditions.join(" AND ");
        assert!(c.contains("attribute_exists(#serial)"), "{c}");
        assert!(c.contains("#claimId = "), "{c}");
    }
}

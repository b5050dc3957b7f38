//! `report`: the fleet at a glance, from one strongly consistent scan of the table and one
//! listing of AWS IoT's certificates: records by state, certificates expiring soon, locked
//! serials, renewals waiting for the device's proof (and those past the grace), and
//! certificates in AWS IoT that no record names.
//!
//! A certificate no record names is the leftover of a vend that died half-way or of a lost
//! answer, or belongs to something else in the account. Claim certificates (attached to a
//! claim policy, `--claim-policy`) are not leftovers and are left out; CA certificates are
//! never among them (AWS IoT lists those apart, `ListCACertificates`), and one that shows up
//! anyway is never removed (its basic constraints say CA).
//! AWS IoT's certificates are listed before the table is read, so a certificate recorded
//! while the report runs is seen as named.
//!
//! `--sweep` tidies up, and is safe to repeat:
//! - a renewal past the grace is abandoned (its certificate revoked, the current one kept);
//! - an unnamed certificate is removed (detached, deleted; revoked at the Private CA in
//!   `acm-pca` mode) only when it is INACTIVE (a vend activates only what the table knows),
//!   older than the claim lease (no vend still working on it) and its subject's common name
//!   is a serial or thing name of the table (it was made for one of our devices: a vend only
//!   issues for a CSR whose CN is one). Anything else, ACTIVE ones above all, is reported and
//!   left alone: it may belong to something else in the account.
//!
//! When a record cannot be read, the certificates it names are unknown, so nothing unnamed is
//! removed.

use crate::output::{say, say_raw};
use std::collections::{HashMap, HashSet};

use aws_sdk_iot::types::CertificateStatus;
use cvm_aws::config::{process_env, renewal_policy};
use cvm_aws::error::{error_code, port_error};
use cvm_aws::fleet_table::{RecordScan, ScanFilter};
use cvm_core::lifecycle;
use cvm_core::ports::{CertificateIssuer, ThingRegistry};
use cvm_core::record::CertificateRef;
use cvm_core::{DeviceRecord, DeviceStatus, Renewal};
use serde_json::{json, Value};

use crate::context::{now, rfc3339, Context};
use crate::error::{chain, AdminError};
use crate::view;

#[derive(clap::Args)]
pub struct Args {
    /// List certificates that expire within this many days.
    #[arg(long, value_name = "N", default_value_t = 30)]
    expiring_days: u32,
    /// Certificates attached to this policy are claim certificates, not leftovers
    /// (repeatable, or comma-separated).
    #[arg(
        long = "claim-policy",
        value_name = "POLICY",
        env = "CVM_CLAIM_POLICY",
        value_delimiter = ','
    )]
    claim_policies: Vec<String>,
    /// Abandon renewals past the grace, and remove unnamed INACTIVE certificates older than
    /// the claim lease (--claim-lease-seconds) that were made for a device of the table.
    #[arg(long)]
    sweep: bool,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// A certificate as AWS IoT lists it.
struct Listed {
    id: String,
    arn: String,
    status: Option<CertificateStatus>,
    created_at: Option<i64>,
}

#[derive(Default)]
struct Fleet {
    counts: HashMap<&'static str, usize>,
    locked: usize,
    unreadable: Vec<String>,
    warnings: Vec<String>,
    named: HashSet<String>,
    /// Serials and thing names: the common names a vend issues for.
    names: HashSet<String>,
    expiring: Vec<Value>,
    locked_serials: Vec<Value>,
    waiting: Vec<Value>,
    past_grace: Vec<DeviceRecord>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    let now = now();
    ctx.table()?;
    let grace = renewal_policy(&process_env())?.grace;
    let lease = i64::try_from(ctx.claim_lease.as_secs()).unwrap_or(i64::MAX);
    let horizon = now.saturating_add(i64::from(args.expiring_days) * 86_400);
    let mut warnings = Vec::new();

    // AWS IoT first (see the module's documentation), then the table.
    let certificates = list_certificates(ctx).await?;
    let mut claim_arns = HashSet::new();
    if args.claim_policies.is_empty() {
        warnings.push(
            "no --claim-policy (or CVM_CLAIM_POLICY): claim certificates are listed as unnamed"
                .to_owned(),
        );
    }
    for policy in args.claim_policies.iter().filter(|p| !p.trim().is_empty()) {
        match super::claim::targets(ctx.iot(), policy.trim()).await {
            Ok(arns) => claim_arns.extend(arns),
            Err(e) if e.kind == cvm_core::ports::FailureKind::NotFound => {
                warnings.push(format!("claim policy {policy} does not exist"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut fleet = read_fleet(ctx, now, horizon, grace).await?;
    warnings.append(&mut fleet.warnings);

    let mut unnamed: Vec<&Listed> = certificates
        .iter()
        .filter(|c| !fleet.named.contains(&c.id) && !claim_arns.contains(&c.arn))
        .collect();
    unnamed.sort_by_key(|c| c.created_at);

    let sweep = if args.sweep {
        let operator = ctx.operator().await?;
        let issuer = ctx.issuer().await?;
        Some((operator, issuer))
    } else {
        None
    };
    let mut failures = 0usize;

    // Renewals past the grace.
    let mut abandoned = Vec::new();
    if let Some((operator, issuer)) = &sweep {
        let store = ctx.store()?;
        let registry = ctx.registry();
        for record in &fleet.past_grace {
            match lifecycle::abandon_expired_renewal(
                &store,
                issuer,
                &registry,
                record,
                grace,
                operator.as_str(),
                now,
            )
            .await
            {
                Ok(Some(_)) => {
                    abandoned.push(json!({"serial": record.serial, "result": "abandoned"}))
                }
                Ok(None) => {}
                Err(e) => {
                    failures += 1;
                    abandoned.push(json!({"serial": record.serial, "result": format!("failed: {}", chain(&e))}));
                }
            }
        }
    }

    // Unnamed certificates.
    let mut unnamed_out = Vec::new();
    for c in unnamed {
        let status = c.status.as_ref().map(|s| s.as_str().to_owned());
        let mut entry = json!({
            "certificateId": c.id,
            "certificateArn": c.arn,
            "status": status,
            "createdAt": c.created_at.map(rfc3339),
        });
        let old_enough = c.created_at.is_some_and(|t| now.saturating_sub(t) > lease);
        let action = if c.status != Some(CertificateStatus::Inactive) {
            "left alone: not INACTIVE (it may belong to something else in the account)".to_owned()
        } else if !old_enough {
            "left alone: younger than the claim lease (a vend may still record it)".to_owned()
        } else if !fleet.unreadable.is_empty() {
            "left alone: some records cannot be read, so the names they hold are unknown".to_owned()
        } else {
            match describe(ctx, &c.id).await {
                Err(e) => {
                    failures += 1;
                    format!("left alone: cannot read it: {}", chain(&e))
                }
                Ok(None) => "left alone: it is gone".to_owned(),
                Ok(Some(d)) => {
                    entry["commonName"] = json!(d.common_name);
                    if d.is_ca {
                        "left alone: a CA certificate (or unreadable)".to_owned()
                    } else if !fleet.names.contains(&d.common_name) {
                        "left alone: its subject names no device of the table".to_owned()
                    } else if !d.inactive {
                        "left alone: it is no longer INACTIVE".to_owned()
                    } else if let Some((_, issuer)) = &sweep {
                        match remove(ctx, issuer, c).await {
                            Ok(()) => "removed".to_owned(),
                            Err(e) => {
                                failures += 1;
                                format!("removal failed: {}", chain(&e))
                            }
                        }
                    } else {
                        "leftover: --sweep removes it".to_owned()
                    }
                }
            }
        };
        entry["action"] = json!(action);
        unnamed_out.push(entry);
    }

    let mut counts = json!({});
    for state in ["enrolled", "claimed", "issued", "revoked"] {
        counts[state] = json!(fleet.counts.get(state).copied().unwrap_or(0));
    }
    counts["locked"] = json!(fleet.locked);
    counts["unreadable"] = json!(fleet.unreadable.len());
    let report = json!({
        "generatedAt": rfc3339(now),
        "counts": counts,
        "expiringWithinDays": args.expiring_days,
        "expiring": fleet.expiring,
        "locked": fleet.locked_serials,
        "renewalsWaiting": fleet.waiting,
        "renewalGraceHours": grace.as_secs() / 3600,
        "unnamedCertificates": unnamed_out,
        "abandonedRenewals": abandoned,
        "unreadableRecords": fleet.unreadable,
        "warnings": warnings,
    });
    if args.json {
        super::print_json(&report)?;
    } else {
        print_report(&report);
    }
    if failures > 0 {
        return Err(AdminError::Incomplete(format!(
            "{failures} step(s) of the sweep failed (see the report); run it again"
        )));
    }
    Ok(())
}

/// One pass over the table.
async fn read_fleet(
    ctx: &Context,
    now: i64,
    horizon: i64,
    grace: std::time::Duration,
) -> Result<Fleet, AdminError> {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let mut fleet = Fleet::default();
    let mut scan = RecordScan::new(ctx.dynamodb().clone(), ctx.table()?, ScanFilter::All);
    while let Some(page) = scan.next_page().await? {
        for entry in page.records {
            let record = match entry {
                Ok(r) => r,
                Err(bad) => {
                    fleet.unreadable.push(format!(
                        "{}: {}",
                        bad.serial.as_deref().unwrap_or("(no serial)"),
                        chain(&bad.error)
                    ));
                    continue;
                }
            };
            *fleet.counts.entry(view::state(&record)).or_default() += 1;
            fleet
                .named
                .extend(record.certificate_ids().into_iter().map(str::to_owned));
            fleet.names.insert(record.serial.as_str().to_owned());
            fleet.names.insert(record.thing_name.as_str().to_owned());
            if view::is_locked(&record, now) {
                fleet.locked += 1;
                fleet.locked_serials.push(json!({
                    "serial": record.serial,
                    "lockedUntil": rfc3339(record.lockout.locked_until),
                    "failedAttempts": record.lockout.failures,
                }));
            }
            if let DeviceStatus::Issued { current, renewal } = &record.status {
                match view::not_after(current) {
                    Some(t) if t <= horizon => fleet.expiring.push(json!({
                        "serial": record.serial,
                        "certificateId": current.certificate.id,
                        "notAfter": rfc3339(t),
                        "expired": t <= now,
                    })),
                    Some(_) => {}
                    None => fleet.warnings.push(format!(
                        "{}: the current certificate's PEM cannot be read (expiry unknown)",
                        record.serial
                    )),
                }
                if let Some(Renewal::Proposed(p)) = renewal {
                    let issued = time::OffsetDateTime::parse(
                        &p.issued_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map(|t| t.unix_timestamp())
                    .unwrap_or(0);
                    let past = now > issued.saturating_add(grace);
                    fleet.waiting.push(json!({
                        "serial": record.serial,
                        "certificateId": p.certificate.id,
                        "issuedAt": p.issued_at,
                        "pastGrace": past,
                    }));
                    if past {
                        fleet.past_grace.push(record.clone());
                    }
                }
            }
        }
    }
    Ok(fleet)
}

/// Every certificate in AWS IoT (`ListCertificates`, all pages).
async fn list_certificates(ctx: &Context) -> Result<Vec<Listed>, AdminError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = ctx
            .iot()
            .list_certificates()
            .page_size(250)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| port_error("iot:ListCertificates", e))?;
        for c in page.certificates() {
            if let (Some(id), Some(arn)) = (c.certificate_id(), c.certificate_arn()) {
                out.push(Listed {
                    id: id.to_owned(),
                    arn: arn.to_owned(),
                    status: c.status().cloned(),
                    created_at: c.creation_date().map(|d| d.secs()),
                });
            }
        }
        match page.next_marker() {
            Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
            _ => break,
        }
    }
    Ok(out)
}

/// What the sweep needs to know of a certificate before removing it.
struct Described {
    common_name: String,
    inactive: bool,
    is_ca: bool,
}

/// The certificate's subject CN, whether it is still INACTIVE and whether it is a CA
/// certificate (`None`: it is gone).
async fn describe(ctx: &Context, id: &str) -> Result<Option<Described>, AdminError> {
    const OP: &str = "iot:DescribeCertificate";
    let described = match ctx
        .iot()
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
    {
        Ok(d) => d,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(None),
        Err(e) => return Err(port_error(OP, e).into()),
    };
    let Some(d) = described.certificate_description() else {
        return Ok(None);
    };
    let pem = d.certificate_pem().unwrap_or_default();
    Ok(Some(Described {
        common_name: cvm_core::csr::certificate_common_name(pem).unwrap_or_default(),
        inactive: d.status() == Some(&CertificateStatus::Inactive),
        is_ca: is_ca_certificate(pem),
    }))
}

/// Whether a certificate's basic constraints say CA (unreadable counts as CA: never removed).
fn is_ca_certificate(pem: &str) -> bool {
    use x509_cert::der::DecodePem;
    let Ok(cert) = x509_cert::Certificate::from_pem(pem.trim().as_bytes()) else {
        return true;
    };
    match cert
        .tbs_certificate()
        .get_extension::<x509_cert::ext::pkix::BasicConstraints>()
    {
        Ok(Some((_, constraints))) => constraints.ca,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Detach from every thing and policy, then discard (deactivate, delete; revoked at the
/// Private CA first in `acm-pca` mode). Each step accepts "already done".
async fn remove(
    ctx: &Context,
    issuer: &impl CertificateIssuer,
    c: &Listed,
) -> Result<(), AdminError> {
    let certificate = CertificateRef {
        id: c.id.clone(),
        arn: c.arn.clone(),
    };
    let registry = ctx.registry();
    for thing in super::claim::principal_things(ctx.iot(), &c.arn).await? {
        let thing = cvm_core::ThingName::parse(&thing).map_err(|e| {
            AdminError::Usage(format!(
                "AWS IoT answered a thing name that is not one: {e}"
            ))
        })?;
        registry
            .detach_thing_principal(&thing, &certificate)
            .await?;
    }
    registry.detach_all_policies(&certificate).await?;
    issuer.discard(&certificate).await?;
    Ok(())
}

fn print_report(r: &Value) {
    let c = &r["counts"];
    say!(
        "records: {} enrolled, {} claimed, {} issued, {} revoked ({} locked, {} unreadable)",
        c["enrolled"],
        c["claimed"],
        c["issued"],
        c["revoked"],
        c["locked"],
        c["unreadable"]
    );
    let section = |title: String, items: &Value, header: &[&str], fields: &[&str]| {
        let items = items.as_array().cloned().unwrap_or_default();
        say!("\n{title}: {}", items.len());
        if items.is_empty() {
            return;
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| {
                fields
                    .iter()
                    .map(|f| match &i[*f] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .collect();
        say_raw!("{}", view::table(header, &rows));
    };
    section(
        format!(
            "certificates expiring within {} days",
            r["expiringWithinDays"]
        ),
        &r["expiring"],
        &["SERIAL", "NOT AFTER", "EXPIRED", "CERTIFICATE"],
        &["serial", "notAfter", "expired", "certificateId"],
    );
    section(
        "locked serials".into(),
        &r["locked"],
        &["SERIAL", "LOCKED UNTIL", "FAILED ATTEMPTS"],
        &["serial", "lockedUntil", "failedAttempts"],
    );
    section(
        format!(
            "renewals waiting for the device's proof (grace {} h)",
            r["renewalGraceHours"]
        ),
        &r["renewalsWaiting"],
        &["SERIAL", "ISSUED AT", "PAST GRACE", "CERTIFICATE"],
        &["serial", "issuedAt", "pastGrace", "certificateId"],
    );
    section(
        "certificates in AWS IoT that no record names".into(),
        &r["unnamedCertificates"],
        &["CERTIFICATE", "STATUS", "CREATED", "ACTION"],
        &["certificateId", "status", "createdAt", "action"],
    );
    if r["abandonedRenewals"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        section(
            "renewals abandoned".into(),
            &r["abandonedRenewals"],
            &["SERIAL", "RESULT"],
            &["serial", "result"],
        );
    }
    for u in r["unreadableRecords"].as_array().into_iter().flatten() {
        say!("unreadable record: {}", u.as_str().unwrap_or_default());
    }
    for w in r["warnings"].as_array().into_iter().flatten() {
        say!("note: {}", w.as_str().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn certificate(ca: bool) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn only_readable_end_entity_certificates_may_be_swept() {
        assert!(is_ca_certificate(&certificate(true)));
        assert!(!is_ca_certificate(&certificate(false)));
        assert!(is_ca_certificate("not a certificate"));
    }
}

use cvm_core::ports::DeviceStore;
use cvm_core::{
    AuditEvent, AuditKind, CertificateRef, Change, Claim, Door, Guard, IssuedCertificate, Serial,
};

use crate::helpers::*;

fn entry<'a>(report: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    report["unnamedCertificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["certificateId"] == id)
}

#[tokio::test]
async fn unnamed_certificates_are_found_and_only_our_inactive_leftovers_swept() {
    let table = private_table().await;
    let iot = iot().await;
    let serial = unique("LEFTOVER");
    enroll(&table, &serial);
    let (leftover, _, _) = loose_certificate(&iot, &serial, false).await;
    let (stranger, _, _) = loose_certificate(&iot, &unique("NOT-OURS"), false).await;
    let (active, _, _) = loose_certificate(&iot, &serial, true).await;

    let report = json(&admin_ok(&["--table", &table, "report", "--json"]));
    assert_eq!(report["counts"]["enrolled"], 1, "{}", report["counts"]);
    for id in [&leftover, &stranger, &active] {
        assert!(entry(&report, id).is_some(), "{id} not reported");
    }
    assert!(entry(&report, &leftover).unwrap()["action"]
        .as_str()
        .unwrap()
        .contains("younger than the claim lease"));
    assert!(entry(&report, &active).unwrap()["action"]
        .as_str()
        .unwrap()
        .contains("not INACTIVE"));

    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = admin(&[
        "--table",
        &table,
        "--claim-lease-seconds",
        "1",
        "report",
        "--sweep",
        "--json",
    ]);
    let report = json(&stdout(&out));
    assert_eq!(
        entry(&report, &leftover).unwrap()["action"],
        "removed",
        "{}",
        stderr(&out)
    );
    assert!(entry(&report, &stranger).unwrap()["action"]
        .as_str()
        .unwrap()
        .contains("names no device"));
    assert_eq!(certificate_status(&iot, &leftover).await, None);
    assert_eq!(
        certificate_status(&iot, &stranger).await.as_deref(),
        Some("INACTIVE")
    );
    assert_eq!(
        certificate_status(&iot, &active).await.as_deref(),
        Some("ACTIVE")
    );

    // Idempotent: the removed one is simply gone.
    let report = json(&admin_ok(&[
        "--table",
        &table,
        "--claim-lease-seconds",
        "1",
        "report",
        "--sweep",
        "--json",
    ]));
    assert!(entry(&report, &leftover).is_none());
    assert!(entry(&report, &stranger).is_some());
    drop_table(&table).await;
}

#[tokio::test]
async fn renewals_past_the_grace_are_reported_and_abandoned_by_the_sweep() {
    let table = private_table().await;
    let iot = iot().await;
    let store = store(&table).await;
    let name = unique("RENEW");
    enroll(&table, &name);
    let serial = Serial::parse(&name).unwrap();
    let (_, csr) = key_and_csr(&name);
    let fingerprint = cvm_core::Csr::parse_pem(&csr)
        .unwrap()
        .fingerprint()
        .clone();
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| cvm_core::vend::rfc3339(t);
    let issued = |id: String, arn: String, pem: String, at: String, door: Door| IssuedCertificate {
        certificate: CertificateRef { id, arn },
        certificate_pem: pem,
        fingerprint: fingerprint.clone(),
        issued_at: at,
        door,
    };
    let (current_id, current_arn, current_pem) = loose_certificate(&iot, &name, true).await;
    let (proposed_id, proposed_arn, proposed_pem) = loose_certificate(&iot, &name, true).await;
    let claim = |id: &str| Claim {
        id: id.into(),
        fingerprint: fingerprint.clone(),
        claimed_at: now.unix_timestamp(),
        pending: None,
    };
    let event = |kind| AuditEvent::new(rfc(now), kind, "device", "");
    for (guard, change) in [
        (Guard::Version(0), Change::Claim(claim("v"))),
        (
            Guard::Claim("v".into()),
            Change::Complete(
                issued(
                    current_id.clone(),
                    current_arn,
                    current_pem,
                    rfc(now),
                    Door::Vend,
                ),
                event(AuditKind::Issued),
            ),
        ),
        (Guard::Version(2), Change::RenewalClaim(claim("r"))),
        (
            Guard::RenewalClaim("r".into()),
            Change::RenewalProposed(
                issued(
                    proposed_id.clone(),
                    proposed_arn,
                    proposed_pem,
                    rfc(now - time::Duration::hours(2)),
                    Door::Renewal,
                ),
                event(AuditKind::RenewalIssued),
            ),
        ),
    ] {
        assert_eq!(
            store.apply(&serial, &guard, &change).await.unwrap(),
            cvm_core::ports::Written::Done
        );
    }
    let grace = [("CVM_RENEWAL_GRACE_HOURS", "1")];

    let out = admin_with(
        &[
            "--table",
            &table,
            "report",
            "--json",
            "--expiring-days",
            "36500",
        ],
        &grace,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&stdout(&out));
    assert_eq!(report["counts"]["issued"], 1);
    assert_eq!(report["renewalsWaiting"][0]["serial"], name.as_str());
    assert_eq!(report["renewalsWaiting"][0]["pastGrace"], true);
    assert_eq!(report["expiring"][0]["certificateId"], current_id.as_str());
    // Both certificates are named: neither is a leftover.
    assert!(entry(&report, &current_id).is_none() && entry(&report, &proposed_id).is_none());
    let quiet = json(&admin_ok(&[
        "--table",
        &table,
        "report",
        "--json",
        "--expiring-days",
        "0",
    ]));
    assert!(quiet["expiring"].as_array().unwrap().is_empty());

    let out = admin_with(&["--table", &table, "report", "--sweep", "--json"], &grace);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&stdout(&out));
    assert_eq!(
        report["abandonedRenewals"][0]["result"], "abandoned",
        "{report}"
    );
    assert_eq!(
        certificate_status(&iot, &proposed_id).await.as_deref(),
        Some("REVOKED")
    );
    assert_eq!(
        certificate_status(&iot, &current_id).await.as_deref(),
        Some("ACTIVE")
    );
    let r = record(&table, &name).await;
    assert!(
        matches!(
            r.status,
            cvm_core::DeviceStatus::Issued { renewal: None, .. }
        ),
        "{:?}",
        r.status
    );
    let last = r.history.last().unwrap();
    assert_eq!(last.kind, AuditKind::RenewalAbandoned);
    assert!(last.actor.starts_with("arn:aws:sts::"));

    // Nothing left to do.
    let report = json(&stdout(&admin_with(
        &["--table", &table, "report", "--sweep", "--json"],
        &grace,
    )));
    assert!(report["abandonedRenewals"].as_array().unwrap().is_empty());
    assert!(report["renewalsWaiting"].as_array().unwrap().is_empty());
    drop_table(&table).await;
}

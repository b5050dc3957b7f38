use crate::helpers::*;

async fn claim_policy(iot: &aws_sdk_iot::Client) -> String {
    let name = unique("cvm-test-claim");
    iot.create_policy()
        .policy_name(&name)
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    name
}

async fn attached(iot: &aws_sdk_iot::Client, arn: &str) -> Vec<String> {
    iot.list_attached_policies()
        .target(arn)
        .send()
        .await
        .unwrap()
        .policies()
        .iter()
        .map(|p| p.policy_name().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn claim_certificates_from_a_generated_key_or_a_csr_listed_and_revoked() {
    let iot = iot().await;
    let policy = claim_policy(&iot).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("claim.key"), dir.path().join("claim.pem"));

    let made = json(&admin_ok(&[
        "claim",
        "create",
        "--policy",
        &policy,
        "--out-key",
        key.to_str().unwrap(),
        "--out-cert",
        cert.to_str().unwrap(),
        "--json",
    ]));
    let id = made["certificateId"].as_str().unwrap().to_owned();
    let arn = made["certificateArn"].as_str().unwrap().to_owned();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        certificate_status(&iot, &id).await.as_deref(),
        Some("ACTIVE")
    );
    assert_eq!(attached(&iot, &arn).await, vec![policy.to_owned()]);
    // The certificate is for the key written here.
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let pair = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(
        cvm_core::csr::certified_key(&cert_pem).unwrap().key_bytes,
        pair.public_key_raw()
    );

    // From a CSR: the key never leaves its owner.
    let (_, csr) = key_and_csr("factory-claim");
    let csr_file = dir.path().join("claim.csr");
    std::fs::write(&csr_file, csr).unwrap();
    let cert2 = dir.path().join("claim2.pem");
    let made2 = json(&admin_ok(&[
        "claim",
        "create",
        "--policy",
        &policy,
        "--csr",
        csr_file.to_str().unwrap(),
        "--out-cert",
        cert2.to_str().unwrap(),
        "--json",
    ]));
    assert!(made2["keyFile"].is_null());
    let id2 = made2["certificateId"].as_str().unwrap().to_owned();

    let listed = json_lines(&admin_ok(&["claim", "list", "--policy", &policy, "--json"]));
    let mut ids: Vec<&str> = listed
        .iter()
        .map(|l| l["certificateId"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![id.as_str(), id2.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(listed.iter().all(|l| l["status"] == "ACTIVE"));

    admin_ok(&["claim", "revoke", "--certificate-id", &id]);
    assert_eq!(
        certificate_status(&iot, &id).await.as_deref(),
        Some("REVOKED")
    );
    assert!(attached(&iot, &arn).await.is_empty());
    assert_eq!(
        certificate_status(&iot, &id2).await.as_deref(),
        Some("ACTIVE")
    );
}

#[tokio::test]
async fn claim_refusals_leave_nothing_behind() {
    let iot = iot().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = claim_policy(&iot).await;
    let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));

    // A policy that does not exist: no certificate, no files.
    let out = admin(&[
        "claim",
        "create",
        "--policy",
        &unique("no-such-policy"),
        "--out-key",
        key.to_str().unwrap(),
        "--out-cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!key.exists() && !cert.exists());

    // An existing key file is never overwritten, and nothing is created.
    std::fs::write(&key, "keep me").unwrap();
    let out = admin(&[
        "claim",
        "create",
        "--policy",
        &policy,
        "--out-key",
        key.to_str().unwrap(),
        "--out-cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "keep me");
    assert!(json_lines(&admin_ok(&["claim", "list", "--policy", &policy, "--json"])).is_empty());

    // Both or neither of --csr/--out-key: usage.
    assert_eq!(
        admin(&["claim", "create", "--policy", &policy, "--out-cert", "x"])
            .status
            .code(),
        Some(2)
    );

    // A device's certificate (attached to its thing) is not revoked as a claim certificate.
    let serial = unique("DEVICE");
    let token = enroll(&shared_table(), &serial);
    let (_, csr) = key_and_csr(&serial);
    let (status, body) = vend(&env("CVM_API_URL"), &serial, &token, &csr).await;
    assert_eq!(status, 201, "{body}");
    let id = body["certificateId"].as_str().unwrap();
    let out = admin(&["claim", "revoke", "--certificate-id", id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("revoke --serial"), "{}", stderr(&out));
    assert_eq!(
        certificate_status(&iot, id).await.as_deref(),
        Some("ACTIVE")
    );
}

use crate::helpers::*;

#[tokio::test]
async fn list_show_and_history_never_show_a_secret() {
    let table = private_table().await;
    let a = unique("LIST-A");
    let b = unique("LIST-B");
    let token_a = enroll(&table, &a);
    let token_b = enroll(&table, &b);
    let hash_a = cvm_core::Token::parse(&token_a).unwrap().hash().to_hex();

    let lines = json_lines(&admin_ok(&["--table", &table, "list", "--json"]));
    let serials: Vec<&str> = lines
        .iter()
        .map(|l| l["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), 2);
    assert!(serials.contains(&a.as_str()) && serials.contains(&b.as_str()));
    assert!(lines
        .iter()
        .all(|l| l["state"] == "enrolled" && l["credentials"] == "token"));
    assert_eq!(
        json_lines(&admin_ok(&[
            "--table", &table, "list", "--json", "--limit", "1"
        ]))
        .len(),
        1
    );
    assert!(json_lines(&admin_ok(&[
        "--table", &table, "list", "--json", "--state", "issued"
    ]))
    .is_empty());
    assert!(json_lines(&admin_ok(&[
        "--table", &table, "list", "--json", "--state", "locked"
    ]))
    .is_empty());
    let people = admin_ok(&["--table", &table, "list"]);
    assert!(
        people.starts_with("SERIAL") && people.contains(&a),
        "{people}"
    );

    let shown = json(&admin_ok(&["--table", &table, "show", "--serial", &a]));
    assert_eq!(shown["serial"], a.as_str());
    assert_eq!(shown["state"], "enrolled");
    assert_eq!(shown["credentials"]["token"], true);
    assert_eq!(shown["lockout"]["locked"], false);

    let history = json_lines(&admin_ok(&[
        "--table", &table, "history", "--serial", &a, "--json",
    ]));
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["kind"], "enrolled");
    assert!(
        history[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:sts::"),
        "{}",
        history[0]
    );

    for output in [
        admin_ok(&["--table", &table, "list", "--json"]),
        admin_ok(&["--table", &table, "list"]),
        admin_ok(&["--table", &table, "show", "--serial", &a]),
        admin_ok(&["--table", &table, "history", "--serial", &a]),
    ] {
        for secret in [&token_a, &token_b, &hash_a] {
            assert!(!output.contains(secret.as_str()), "{output}");
        }
    }
    let out = admin(&["--table", &table, "show", "--serial", &unique("NOBODY")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not enrolled"));
    drop_table(&table).await;
}

#[tokio::test]
async fn unlock_lifts_a_lockout_made_by_wrong_tokens() {
    let table = shared_table();
    let api = env("CVM_API_URL");
    let serial = unique("UNLOCK");
    let token = enroll(&table, &serial);
    let (_, csr) = key_and_csr(&serial);
    let mut last = 0;
    for _ in 0..5 {
        last = vend(&api, &serial, "wrong-token-wrong-token", &csr).await.0;
    }
    assert_ne!(last, 201);
    let shown = json(&admin_ok(&["show", "--serial", &serial]));
    assert_eq!(shown["lockout"]["locked"], true, "{shown}");
    let locked = json_lines(&admin_ok(&["list", "--json", "--state", "locked"]));
    assert!(locked.iter().any(|l| l["serial"] == serial.as_str()));
    // The right token is refused while the window is open.
    assert_ne!(vend(&api, &serial, &token, &csr).await.0, 201);

    assert!(admin_ok(&["unlock", "--serial", &serial]).contains("unlocked"));
    let shown = json(&admin_ok(&["show", "--serial", &serial]));
    assert_eq!(shown["lockout"]["locked"], false);
    assert_eq!(shown["lockout"]["failedAttempts"], 0);
    let (status, body) = vend(&api, &serial, &token, &csr).await;
    assert_eq!(status, 201, "{body}");
    let history = json_lines(&admin_ok(&["history", "--serial", &serial, "--json"]));
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enrolled", "locked-out", "unlocked", "issued"]);
    assert!(history[2]["actor"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:sts::"));
    // Nothing to unlock now.
    assert!(admin_ok(&["unlock", "--serial", &serial]).contains("nothing to do"));
}

#[tokio::test]
async fn reenroll_revokes_the_certificate_and_the_new_token_works() {
    let table = shared_table();
    let api = env("CVM_API_URL");
    let iot = iot().await;
    let serial = unique("REENROLL");
    let token = enroll(&table, &serial);
    let (_, csr) = key_and_csr(&serial);
    let (status, first) = vend(&api, &serial, &token, &csr).await;
    assert_eq!(status, 201, "{first}");
    let first_id = first["certificateId"].as_str().unwrap();

    let out = json(&admin_ok(&["reenroll", "--serial", &serial, "--json"]));
    let new_token = out["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert!(out["detail"].as_str().unwrap().contains(first_id), "{out}");
    assert_eq!(
        certificate_status(&iot, first_id).await.as_deref(),
        Some("REVOKED")
    );
    let shown = json(&admin_ok(&["show", "--serial", &serial]));
    assert_eq!(shown["state"], "enrolled");
    assert!(shown.get("certificate").is_none());

    // The old token is dead; the new one, with a new key, gets a new certificate.
    let (_, new_csr) = key_and_csr(&serial);
    assert_eq!(vend(&api, &serial, &token, &new_csr).await.0, 403);
    let (status, second) = vend(&api, &serial, &new_token, &new_csr).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["certificateId"], first["certificateId"]);
    let shown = json(&admin_ok(&["show", "--serial", &serial]));
    assert_eq!(shown["state"], "issued");
    assert_eq!(
        shown["certificate"]["certificateId"],
        second["certificateId"]
    );
    assert_eq!(shown["certificate"]["iotStatus"], "ACTIVE");
    assert!(shown["certificate"]["notAfter"].is_string(), "{shown}");
    let kinds: Vec<String> = json_lines(&admin_ok(&["history", "--serial", &serial, "--json"]))
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["enrolled", "issued", "reenrolled", "issued"]);
}

/// A certificate serial as hex digits without colons, leading zeros or case, however written.
fn normalized_serial(hex: &str) -> String {
    hex.replace(':', "")
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_owned()
}

fn serial_hex(certificate_pem: &str) -> String {
    normalized_serial(&cvm_core::provider::certificate_serial_hex(certificate_pem).unwrap())
}

/// The serials the binary revoked at the Private CA, as the CA accepted them (moto's
/// GetCertificate does not show a revocation made with a lowercase serial, so the requests are
/// checked at the wire instead).
fn revoked_at_ca(proxy: &RecordingProxy) -> Vec<String> {
    proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.target.ends_with(".RevokeCertificate") && r.status == 200)
        .filter(|r| r.body["CertificateAuthorityArn"] == env("CVM_PCA_ARN").as_str())
        .map(|r| normalized_serial(r.body["CertificateSerial"].as_str().unwrap()))
        .collect()
}

// Multi-threaded: the recording proxy runs while the test waits for the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_in_iot_mode_and_at_the_private_ca_in_acm_pca_mode() {
    let iot = iot().await;
    let proxy = recording_proxy(env("AWS_ENDPOINT_URL")).await;
    for (mode, api, extra_env) in [
        (
            "iot",
            env("CVM_API_URL"),
            vec![("AWS_ENDPOINT_URL_ACM_PCA", proxy.url.clone())],
        ),
        (
            "acm-pca",
            env("CVM_PCA_API_URL"),
            vec![
                ("CVM_ISSUER", "acm-pca".to_owned()),
                ("CVM_PCA_ARN", env("CVM_PCA_ARN")),
                ("AWS_ENDPOINT_URL_ACM_PCA", proxy.url.clone()),
            ],
        ),
    ] {
        let serial = unique("REVOKE");
        let token = enroll(&shared_table(), &serial);
        let (_, csr) = key_and_csr(&serial);
        let (status, body) = vend(&api, &serial, &token, &csr).await;
        assert_eq!(status, 201, "{mode}: {body}");
        let id = body["certificateId"].as_str().unwrap();
        let pem_serial = serial_hex(body["certificatePem"].as_str().unwrap());

        let env_pairs: Vec<(&str, &str)> =
            extra_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = admin_with(&["revoke", "--serial", &serial], &env_pairs);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("certificate {id} is REVOKED")),
            "{}",
            stdout(&out)
        );
        assert_eq!(
            certificate_status(&iot, id).await.as_deref(),
            Some("REVOKED"),
            "{mode}"
        );
        let at_ca = revoked_at_ca(&proxy).contains(&pem_serial);
        assert_eq!(
            at_ca,
            mode == "acm-pca",
            "{mode}: revoked at the Private CA: {at_ca}"
        );
        let shown = json(&admin_ok(&["show", "--serial", &serial]));
        assert_eq!(shown["state"], "revoked");
        assert_eq!(shown["revoked"]["certificateId"], id);
        assert_eq!(shown["revoked"]["iotStatus"], "REVOKED");
        let history = json_lines(&admin_ok(&["history", "--serial", &serial, "--json"]));
        assert_eq!(history.last().unwrap()["kind"], "revoked");
        // Again: harmless.
        let again = admin_with(&["revoke", "--serial", &serial], &env_pairs);
        assert!(
            stdout(&again).contains("already revoked"),
            "{}",
            stderr(&again)
        );
    }
}

#[tokio::test]
async fn revoke_removes_the_pending_certificate_of_a_claim_that_expired() {
    use cvm_core::ports::DeviceStore;
    let table = private_table().await;
    let iot = iot().await;
    let serial = unique("EXPIRED-CLAIM");
    enroll(&table, &serial);
    let (id, arn, _) = loose_certificate(&iot, &serial, false).await;
    let store = store(&table).await;
    let (_, csr) = key_and_csr(&serial);
    let claim = cvm_core::Claim {
        id: "dead-vend".into(),
        fingerprint: cvm_core::Csr::parse_pem(&csr)
            .unwrap()
            .fingerprint()
            .clone(),
        claimed_at: time::OffsetDateTime::now_utc().unix_timestamp() - 3600,
        pending: Some(cvm_core::CertificateRef {
            id: id.clone(),
            arn,
        }),
    };
    let s = cvm_core::Serial::parse(&serial).unwrap();
    let written = store
        .apply(
            &s,
            &cvm_core::Guard::Version(0),
            &cvm_core::Change::Claim(claim),
        )
        .await
        .unwrap();
    assert_eq!(written, cvm_core::ports::Written::Done);

    // With a lease longer than the claim's age, the work is still protected.
    let out = admin(&[
        "--table",
        &table,
        "--claim-lease-seconds",
        "7200",
        "revoke",
        "--serial",
        &serial,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in progress"), "{}", stderr(&out));
    assert_eq!(
        certificate_status(&iot, &id).await.as_deref(),
        Some("INACTIVE")
    );

    let out = admin_ok(&["--table", &table, "revoke", "--serial", &serial]);
    assert!(out.contains("no certificate had been issued"), "{out}");
    assert_eq!(
        certificate_status(&iot, &id).await,
        None,
        "the pending certificate is deleted"
    );
    assert_eq!(record(&table, &serial).await.status.name(), "revoked");
    drop_table(&table).await;
}

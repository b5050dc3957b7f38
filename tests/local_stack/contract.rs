//! The API contract, for every issuer mode the stack runs.

use crate::helpers::*;

fn pubkey_of_cert(pem: &str, dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("cert.pem");
    std::fs::write(&path, pem).unwrap();
    openssl(&["x509", "-in", path.to_str().unwrap(), "-pubkey", "-noout"])
}

fn pubkey_of_key(key: &std::path::Path) -> Vec<u8> {
    openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"])
}

#[tokio::test]
async fn openssl_csrs_are_certified_with_their_own_key_and_wired_in_iot() {
    let client = http();
    let iot = iot().await;
    for api in apis() {
        for (kind, key_type) in [("p256", KeyType::P256), ("rsa2048", KeyType::Rsa(2048))] {
            let dir = tempfile::tempdir().unwrap();
            let serial = unique_serial(&format!("OK-{kind}"));
            let token = enroll(&serial, &["--attr", "site=lab-7"]);
            let (key, csr) = openssl_csr(dir.path(), &serial, key_type);
            let (status, body) = post(
                &client,
                &api,
                &serde_json::json!({"serial": serial, "token": token, "csr": csr}),
            )
            .await;
            let v = json(&body);
            assert_eq!(status, 201, "{} {kind}: {v}", api.mode);
            let pem = v["certificatePem"].as_str().unwrap();
            assert_eq!(
                pubkey_of_cert(pem, dir.path()),
                pubkey_of_key(&key),
                "{} {kind}: not the CSR's key",
                api.mode
            );

            // Chains to the CA the API returns, which is the stack's CA for this mode.
            let ca_path = dir.path().join("returned-ca.pem");
            std::fs::write(
                &ca_path,
                v["caCertificates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
            .unwrap();
            let cert_path = dir.path().join("cert.pem");
            openssl(&[
                "verify",
                "-CAfile",
                ca_path.to_str().unwrap(),
                cert_path.to_str().unwrap(),
            ]);
            openssl(&[
                "verify",
                "-CAfile",
                api.device_ca.to_str().unwrap(),
                cert_path.to_str().unwrap(),
            ]);

            // IoT: active, attached to the thing (with the record's attributes) and the policy.
            let id = v["certificateId"].as_str().unwrap();
            let arn = v["certificateArn"].as_str().unwrap();
            let d = iot
                .describe_certificate()
                .certificate_id(id)
                .send()
                .await
                .unwrap();
            assert_eq!(
                d.certificate_description()
                    .unwrap()
                    .status()
                    .unwrap()
                    .as_str(),
                "ACTIVE"
            );
            let thing = iot
                .describe_thing()
                .thing_name(&serial)
                .send()
                .await
                .unwrap();
            assert_eq!(
                thing.attributes().unwrap().get("site").map(String::as_str),
                Some("lab-7")
            );
            let principals = iot
                .list_thing_principals()
                .thing_name(&serial)
                .send()
                .await
                .unwrap();
            assert_eq!(principals.principals(), [arn.to_owned()]);
            let policies = iot
                .list_attached_policies()
                .target(arn)
                .send()
                .await
                .unwrap();
            let names: Vec<_> = policies
                .policies()
                .iter()
                .filter_map(|p| p.policy_name())
                .collect();
            assert_eq!(names, [env("CVM_DEFAULT_POLICY_NAME")]);
            assert!(v["endpoints"]["data"]
                .as_str()
                .is_some_and(|s| !s.is_empty()));
            assert!(v["endpoints"]["credentials"]
                .as_str()
                .is_some_and(|s| !s.is_empty()));
        }
    }
}

#[tokio::test]
async fn same_key_gets_the_same_certificate_another_key_conflicts() {
    let client = http();
    for api in apis() {
        let dir = tempfile::tempdir().unwrap();
        let serial = unique_serial("REPLAY");
        let token = enroll(&serial, &[]);
        let (_, csr) = openssl_csr(dir.path(), &serial, KeyType::P256);
        let body = serde_json::json!({"serial": serial, "token": token, "csr": csr});
        let (s1, b1) = post(&client, &api, &body).await;
        assert_eq!(s1, 201, "{}", api.mode);
        // The device lost the answer and asks again with the same key (a new CSR for it).
        let (s2, b2) = post(&client, &api, &body).await;
        assert_eq!(s2, 200, "{}", api.mode);
        assert_eq!(json(&b1)["certificateId"], json(&b2)["certificateId"]);
        let (_, other) = openssl_csr(dir.path(), &serial, KeyType::P256);
        let (s3, b3) = post(
            &client,
            &api,
            &serde_json::json!({"serial": serial, "token": token, "csr": other}),
        )
        .await;
        assert_eq!(
            (s3, json(&b3)["code"].as_str().unwrap()),
            (409, "already_issued"),
            "{}",
            api.mode
        );
    }
}

#[tokio::test]
async fn wrong_token_and_unknown_serial_are_indistinguishable() {
    let client = http();
    for api in apis() {
        let serial = unique_serial("WRONG");
        let _token = enroll(&serial, &[]);
        let unknown = unique_serial("NEVER-ENROLLED");
        let fake_token = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let (s1, b1) = post(
            &client,
            &api,
            &serde_json::json!({"serial": serial, "token": fake_token, "csr": rcgen_csr(&serial)}),
        )
        .await;
        let (s2, b2) = post(&client, &api, &serde_json::json!({"serial": unknown, "token": fake_token, "csr": rcgen_csr(&unknown)})).await;
        assert_eq!(s1, 403);
        assert_eq!(s1, s2, "{}", api.mode);
        assert_eq!(b1, b2, "{}: bodies differ", api.mode);
        assert_eq!(json(&b1)["code"], "invalid_credentials");
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../functions/cvm-core/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn each_bad_csr_gets_its_own_4xx_code_and_nothing_is_issued() {
    let client = http();
    let iot = iot().await;
    for api in apis() {
        // The fixtures' CN is DEVICE-0001; enroll a unique serial with that thing name so
        // the CSRs would otherwise be acceptable.
        let serial = unique_serial("BAD");
        let thing = unique_serial("DEVICE-0001-thing");
        let token = enroll(&serial, &["--thing-name", &thing]);
        let huge = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            "A".repeat(17 * 1024)
        );
        let cases = [
            (
                "malformed",
                "this is not a CSR".to_owned(),
                400,
                "csr_malformed",
            ),
            (
                "tampered",
                fixture("tampered.csr.pem"),
                400,
                "csr_signature_invalid",
            ),
            ("oversized", huge, 413, "request_too_large"),
            (
                "rsa1024",
                fixture("rsa1024.csr.pem"),
                400,
                "csr_key_unsupported",
            ),
        ];
        let mut codes = Vec::new();
        for (what, csr, status, code) in cases {
            let (s, b) = post(
                &client,
                &api,
                &serde_json::json!({"serial": serial, "token": token, "csr": csr}),
            )
            .await;
            let v = json(&b);
            assert_eq!(
                (s, v["code"].as_str().unwrap()),
                (status, code),
                "{} {what}: {v}",
                api.mode
            );
            codes.push(code);
        }
        codes.dedup();
        assert_eq!(codes.len(), 4);
        assert!(
            certificates_for(&iot, "DEVICE-0001").await.is_empty(),
            "a refused CSR was certified"
        );
        // The token was not spent: a good CSR still works.
        let (s, b) = post(
            &client,
            &api,
            &serde_json::json!({"serial": serial, "token": token, "csr": rcgen_csr(&serial)}),
        )
        .await;
        assert_eq!(s, 201, "{}: {}", api.mode, String::from_utf8_lossy(&b));
    }
}

#[tokio::test]
async fn twenty_concurrent_requests_leave_exactly_one_certificate() {
    let client = http();
    let iot = iot().await;
    for api in apis() {
        let serial = unique_serial("RACE");
        let token = enroll(&serial, &[]);
        let requests = (0..20).map(|_| {
            let body =
                serde_json::json!({"serial": serial, "token": token, "csr": rcgen_csr(&serial)});
            let client = client.clone();
            let api = &api;
            async move { post(&client, api, &body).await }
        });
        let results = futures::future::join_all(requests).await;
        let created: Vec<_> = results.iter().filter(|(s, _)| *s == 201).collect();
        assert_eq!(
            created.len(),
            1,
            "{}: {:?}",
            api.mode,
            results.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        for (s, b) in &results {
            if *s != 201 {
                let code = json(b)["code"].as_str().unwrap().to_owned();
                assert!(
                    *s == 409 && (code == "enrollment_in_progress" || code == "already_issued"),
                    "{s} {code}"
                );
            }
        }
        let certs = certificates_for(&iot, &serial).await;
        assert_eq!(certs.len(), 1, "{}: {certs:?}", api.mode);
        assert_eq!(certs[0].1, "ACTIVE");
    }
}

#[tokio::test]
async fn a_revoked_device_is_detached_and_refused() {
    let client = http();
    let iot = iot().await;
    for api in apis() {
        let serial = unique_serial("REVOKE");
        let token = enroll(&serial, &[]);
        let csr = rcgen_csr(&serial);
        let body = serde_json::json!({"serial": serial, "token": token, "csr": csr});
        let (status, bytes) = post(&client, &api, &body).await;
        assert_eq!(status, 201, "{}", api.mode);
        let v = json(&bytes);
        let (id, arn) = (
            v["certificateId"].as_str().unwrap(),
            v["certificateArn"].as_str().unwrap(),
        );

        let out = std::process::Command::new(env("CVM_ADMIN"))
            .args(["revoke", "--serial", &serial])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "revoke: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let d = iot
            .describe_certificate()
            .certificate_id(id)
            .send()
            .await
            .unwrap();
        assert_eq!(
            d.certificate_description()
                .unwrap()
                .status()
                .unwrap()
                .as_str(),
            "REVOKED"
        );
        let principals = iot
            .list_thing_principals()
            .thing_name(&serial)
            .send()
            .await
            .unwrap();
        assert!(
            principals.principals().is_empty(),
            "{}: still attached",
            api.mode
        );
        let policies = iot
            .list_attached_policies()
            .target(arn)
            .send()
            .await
            .unwrap();
        assert!(
            policies.policies().is_empty(),
            "{}: policy still attached",
            api.mode
        );

        // Neither a replay with the same key nor a new key gets anything now.
        let (status, bytes) = post(&client, &api, &body).await;
        assert_eq!(
            (status, json(&bytes)["code"].as_str().unwrap()),
            (403, "device_revoked")
        );
        // And revoking again is harmless.
        let again = std::process::Command::new(env("CVM_ADMIN"))
            .args(["revoke", "--serial", &serial])
            .output()
            .unwrap();
        assert!(again.status.success());
    }
}

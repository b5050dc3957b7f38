use crate::helpers::*;

#[tokio::test]
async fn a_pre_registered_key_enrolls_without_a_token() {
    let table = private_table().await;
    let dir = tempfile::tempdir().unwrap();
    let serial = unique("KEYONLY");
    let (key, csr) = key_and_csr(&serial);
    let public = dir.path().join("device.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();

    let out = json(&admin_ok(&[
        "--table",
        &table,
        "enroll",
        "--serial",
        &serial,
        "--public-key",
        public.to_str().unwrap(),
        "--no-token",
        "--json",
    ]));
    assert!(out["token"].is_null(), "{out}");
    let expected = cvm_core::Csr::parse_pem(&csr)
        .unwrap()
        .fingerprint()
        .clone();
    assert_eq!(out["registeredKey"], expected.as_str());
    let r = record(&table, &serial).await;
    assert!(r.credentials.token_hash.is_none());
    assert_eq!(r.credentials.registered_key, Some(expected.clone()));
    assert!(r.history[0].detail.contains("no token"), "{:?}", r.history);

    // A CSR (or a certificate) for the key gives the same registered key; with a token too.
    let csr_file = dir.path().join("device.csr");
    std::fs::write(&csr_file, &csr).unwrap();
    let both = unique("KEYTOKEN");
    let out = json(&admin_ok(&[
        "--table",
        &table,
        "enroll",
        "--serial",
        &both,
        "--public-key",
        csr_file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(out["registeredKey"], expected.as_str());
    assert_eq!(out["token"].as_str().unwrap().len(), 32);
    let r = record(&table, &both).await;
    assert!(r.credentials.token_hash.is_some() && r.credentials.registered_key.is_some());
    drop_table(&table).await;
}

#[tokio::test]
async fn refusals_leave_no_record() {
    let table = private_table().await;
    let dir = tempfile::tempdir().unwrap();
    let serial = unique("REFUSED");
    let key = rcgen::KeyPair::generate().unwrap();
    let private = dir.path().join("device.key");
    std::fs::write(&private, key.serialize_pem()).unwrap();

    // --no-token needs a key: clap refuses it (usage, exit 2).
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--serial",
        &serial,
        "--no-token",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A private key is refused and never echoed.
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--serial",
        &serial,
        "--public-key",
        private.to_str().unwrap(),
        "--no-token",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this is a private key"),
        "{}",
        stderr(&out)
    );
    let secret_line = key.serialize_pem().lines().nth(1).unwrap().to_owned();
    assert!(!stderr(&out).contains(&secret_line) && !stdout(&out).contains(&secret_line));
    // A bad serial, a bad attribute.
    let out = admin(&["--table", &table, "enroll", "--serial", "no spaces"]);
    assert_eq!(out.status.code(), Some(1));
    let out = admin(&[
        "--table", &table, "enroll", "--serial", &serial, "--attr", "novalue",
    ]);
    assert!(stderr(&out).contains("NAME=VALUE"), "{}", stderr(&out));
    let store = store(&table).await;
    assert!(
        cvm_core::ports::DeviceStore::get(&store, &cvm_core::Serial::parse(&serial).unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Enrolling twice: the second is refused and the first token still stands.
    let token = enroll(&table, &serial);
    let out = admin(&["--table", &table, "enroll", "--serial", &serial]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already enrolled"),
        "{}",
        stderr(&out)
    );
    let r = record(&table, &serial).await;
    assert!(r
        .credentials
        .token_hash
        .unwrap()
        .matches(&cvm_core::Token::parse(&token).unwrap()));
    drop_table(&table).await;
}

#[tokio::test]
async fn without_the_operators_principal_nothing_is_changed() {
    let table = private_table().await;
    let serial = unique("NOPRINCIPAL");
    // STS unreachable (nothing listens there); DynamoDB as usual.
    let out = admin_with(
        &["--table", &table, "enroll", "--serial", &serial],
        &[("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("could not determine the operator's AWS principal"),
        "{}",
        stderr(&out)
    );
    assert!(cvm_core::ports::DeviceStore::get(
        &store(&table).await,
        &cvm_core::Serial::parse(&serial).unwrap()
    )
    .await
    .unwrap()
    .is_none());
    // The same command with STS reachable works, so the refusal was about the principal.
    enroll(&table, &serial);
    drop_table(&table).await;
}
